-- Shadow budgets: a budget evaluated on every call as a hard one would be, which never refuses, clamps,
-- downgrades or holds room, and records instead what it would have done.
--
-- The enforcement check gains 'shadow'.
alter table budget_definitions drop constraint if exists budget_definitions_enforcement_check;
alter table budget_definitions add constraint budget_definitions_enforcement_check check (enforcement in ('hard', 'soft', 'shadow'));

-- The as-if ledger is derived from the real one, so that it cannot drift from it: a shadow window's as-if
-- spend is its real spend less excluded_amount (the real spend of calls the budget, were it hard, would have
-- refused), and its as-if held amount is its real one less its live holds marked as_if_excluded. One row per
-- shadow window that ever excluded a call or counted a verdict; its spend is written with the window's cache
-- row locked (the lock order: the cache row, then this row).
create table if not exists budget_shadow_windows (
  budget_id       uuid not null references budget_definitions (id),
  period_start    timestamptz not null,
  excluded_amount numeric(28, 10) not null default 0 check (excluded_amount >= 0),
  primary key (budget_id, period_start)
);

-- What a shadow window would have done, counted per refusal code and outcome (refused, clamped, downgraded).
create table if not exists budget_shadow_counts (
  budget_id    uuid not null references budget_definitions (id),
  period_start timestamptz not null,
  code         text not null,
  outcome      text not null check (outcome in ('refused', 'clamped', 'downgraded')),
  calls        bigint not null default 0 check (calls >= 0),
  primary key (budget_id, period_start, code, outcome)
);

-- A hold on a shadow budget that the budget, were it hard, would have refused: its amount is not part of
-- the as-if held amount, and its settled cost goes to excluded_amount.
alter table budget_reservations add column if not exists as_if_excluded boolean not null default false;
create index if not exists budget_reservations_as_if_excluded on budget_reservations (budget_id, period_start) where as_if_excluded;

-- A crossing of a shadow budget's threshold: notify only, and marked so in the history and its notifications.
alter table budget_alert_history add column if not exists shadow boolean not null default false;
