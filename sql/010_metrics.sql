-- Prometheus gauges for chosen budgets (lib/metrics/metrics.ts): a budget marked `metrics` always has
-- them; the others only while among the top spenders. A scrape finds the current windows' cache rows
-- through their end, without scanning every window a budget ever had.
alter table budget_definitions add column metrics boolean not null default false;
create index budget_status_cache_current on budget_status_cache (period_end, period_start);
