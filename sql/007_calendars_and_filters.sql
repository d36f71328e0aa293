-- Budgets as operators define them.
-- 1. Their own calendars: a time zone (IANA, from PostgreSQL's own time zone database), a fiscal year,
--    and windows aligned either to the budget's startDate (the seed's rule) or to the calendar (local
--    midnight, Monday, the 1st, fiscal quarters and years).
-- 2. Model and tag budgets (below).
alter table budget_definitions
  add column timezone text not null default 'UTC',
  add column fiscal_year_start_month smallint not null default 1 check (fiscal_year_start_month between 1 and 12),
  add column period_alignment text not null default 'start' check (period_alignment in ('start', 'calendar')),
  add check (period <> 'custom' or period_alignment = 'start');

-- The start, as a wall-clock time, of the calendar window that holds p_local: the day, the ISO week
-- (from Monday), the month, the fiscal quarter or the fiscal year that begins in p_fiscal_month.
create function budget_calendar_start(p_period text, p_local timestamp, p_fiscal_month integer)
returns timestamp language sql immutable parallel safe as $$
  select case p_period
    when 'daily' then date_trunc('day', p_local)
    when 'weekly' then date_trunc('week', p_local)
    when 'monthly' then date_trunc('month', p_local)
    when 'quarterly' then date_trunc('month', p_local)
      - make_interval(months => ((extract(month from p_local)::integer - p_fiscal_month + 12) % 3))
    when 'annual' then date_trunc('month', p_local)
      - make_interval(months => ((extract(month from p_local)::integer - p_fiscal_month + 12) % 12))
  end
$$;

-- The wall-clock start of window n after p_anchor, computed from the anchor each time (so monthly
-- from Jan 31 gives Feb 29, then Mar 31).
create function budget_window_step(p_period text, p_anchor timestamp, p_n bigint)
returns timestamp language sql immutable parallel safe as $$
  select case p_period
    when 'daily' then p_anchor + make_interval(days => p_n::integer)
    when 'weekly' then p_anchor + make_interval(days => 7 * p_n::integer)
    when 'monthly' then p_anchor + make_interval(months => p_n::integer)
    when 'quarterly' then p_anchor + make_interval(months => 3 * p_n::integer)
    when 'annual' then p_anchor + make_interval(months => 12 * p_n::integer)
  end
$$;

-- The period window at p_at: the one implementation of periods (the gate, status, history, alerts
-- and the usage trigger all call it, through budget_window below).
--
-- Calendar periods step on the wall clock of the budget's zone and are turned into instants with
-- AT TIME ZONE, so a daily window across a daylight-saving change lasts 23 or 25 hours. A wall-clock
-- boundary that a change skips (a gap) or repeats (an overlap) is the instant PostgreSQL gives it:
-- in a gap, read with the offset before the change; in an overlap, the later instant. Where that
-- moves a boundary across p_at, the neighbouring window is the one that holds it. The first window
-- never starts after startDate. Custom periods are exact lengths of time, in no zone.
--
-- With alignment 'start' the windows step from startDate's wall-clock time; with 'calendar' from the
-- start of the calendar window that holds startDate (the budget applies from startDate on).
-- A non-recurring budget has only its first window; an end date cuts the last one.
create function budget_period_window(
  p_period text, p_start timestamptz, p_end timestamptz, p_recurring boolean, p_at timestamptz,
  p_timezone text, p_fiscal_month integer, p_alignment text,
  out period_start timestamptz, out period_end timestamptz
) returns setof record language plpgsql immutable parallel safe as $$
declare
  anchor  timestamp;
  instant timestamp;
  step_us bigint;
  months  integer;
  n       bigint;
begin
  if p_at is null or p_start is null or p_at < p_start then return; end if;
  if p_period = 'custom' then
    -- A custom period is exactly as long as its dates say, in microseconds.
    anchor := p_start at time zone 'UTC';
    step_us := (extract(epoch from (p_end - p_start)) * 1000000)::bigint;
    n := floor((extract(epoch from (p_at - p_start)) * 1000000) / step_us);
    period_start := (anchor + (step_us * n)::double precision * interval '1 microsecond') at time zone 'UTC';
    period_end := (anchor + (step_us * (n + 1))::double precision * interval '1 microsecond') at time zone 'UTC';
  else
    anchor := p_start at time zone p_timezone;
    instant := p_at at time zone p_timezone;
    if p_alignment = 'calendar' then anchor := budget_calendar_start(p_period, anchor, p_fiscal_month); end if;
    -- n from the wall clock; a gap or overlap can put it one off, the loop below corrects that
    if p_period in ('daily', 'weekly') then
      n := floor(extract(epoch from instant - anchor) / (case p_period when 'daily' then 86400 else 604800 end));
    else
      months := case p_period when 'monthly' then 1 when 'quarterly' then 3 when 'annual' then 12 end;
      n := (extract(year from instant) - extract(year from anchor)) * 12 + extract(month from instant) - extract(month from anchor);
      if anchor + make_interval(months => n::integer) > instant then n := n - 1; end if;
      n := floor(n::numeric / months);
    end if;
    n := greatest(n, 0);
    for attempt in 1..3 loop
      period_start := budget_window_step(p_period, anchor, n) at time zone p_timezone;
      if n = 0 then period_start := least(period_start, p_start); end if;
      period_end := budget_window_step(p_period, anchor, n + 1) at time zone p_timezone;
      exit when period_start <= p_at and p_at < period_end;
      n := case when p_at < period_start then n - 1 else n + 1 end;
    end loop;
    if not (period_start <= p_at and p_at < period_end) then
      raise exception 'no % window of % holds % in %', p_period, p_start, p_at, p_timezone;
    end if;
  end if;
  if n > 0 and not p_recurring then return; end if;
  if p_end is not null and p_period <> 'custom' then
    if p_at >= p_end then return; end if;
    period_end := least(period_end, p_end);
  end if;
  return next;
end $$;

-- A budget's window at p_at, from its row: what every caller uses, so no caller can forget a setting.
create function budget_window(b budget_definitions, p_at timestamptz, out period_start timestamptz, out period_end timestamptz)
returns setof record language sql immutable parallel safe as $$
  select * from budget_period_window(b.period, b.start_date, b.end_date, b.recurring, p_at,
                                     b.timezone, b.fiscal_year_start_month, b.period_alignment)
$$;

drop function budget_period_window(text, timestamptz, timestamptz, boolean, timestamptz);

-- 2. Model and tag budgets: a budget with filters counts, and gates, only the calls that match them all.
-- A model pattern is an exact name or a prefix ending in '*'; tags are key/value pairs the call must
-- carry (usage records carry them as metadata.tags). A budget without filters matches every call.
alter table budget_definitions
  add column filter_models text[] check (filter_models is null or cardinality(filter_models) between 1 and 50),
  add column filter_tags jsonb check (filter_tags is null or jsonb_typeof(filter_tags) = 'object');

-- Does a call to p_model carrying p_tags count toward the budget? The one place the filters are read.
create function budget_matches(b budget_definitions, p_model text, p_tags jsonb) returns boolean
language sql immutable parallel safe as $$
  select (b.filter_models is null or exists (
            select 1 from unnest(b.filter_models) pattern
            where pattern = p_model or (right(pattern, 1) = '*' and starts_with(p_model, left(pattern, -1)))))
     and (b.filter_tags is null or coalesce(p_tags, '{}'::jsonb) @> b.filter_tags)
$$;

-- The budgets that apply to a call (003), now through budget_window, and only those whose filters the call matches. A
-- filtered budget that does not match is left out, its ancestors still apply (each on its own filters).
drop function budget_applicable(text[], text[], text, timestamptz);
create function budget_applicable(p_scope_types text[], p_scope_ids text[], p_currency text, p_at timestamptz, p_model text, p_tags jsonb)
returns table (budget_id uuid, scope_matched boolean, scope_rank integer, period_start timestamptz, period_end timestamptz)
language sql stable as $$
  select l.id, bool_or(l.depth = 1), min(s.rank * 100 + l.depth)::integer, w.period_start, w.period_end
  from unnest(p_scope_types, p_scope_ids) with ordinality as s(scope_type, scope_id, rank)
  join budget_definitions m on m.scope_type = s.scope_type and m.scope_id = s.scope_id
    and m.deleted_at is null and m.currency = p_currency
  cross join lateral budget_lineage(m.id) l
  join budget_definitions b on b.id = l.id and b.deleted_at is null
  cross join lateral budget_window(b, p_at) w
  where budget_matches(b, p_model, p_tags)
  group by l.id, w.period_start, w.period_end
$$;

-- A call's line (006), for its model and tags.
drop function budget_line(text[], text[], text);
create function budget_line(p_scope_types text[], p_scope_ids text[], p_currency text, p_model text, p_tags jsonb)
returns table (budget_id uuid, name text, alerts jsonb, scope_matched boolean, scope_rank integer,
               period_start timestamptz, period_end timestamptz, definitions_version bigint)
language plpgsql as $$
declare
  window_row record;
begin
  for window_row in
    select a.budget_id, a.period_start, a.period_end from budget_applicable(p_scope_types, p_scope_ids, p_currency, now(), p_model, p_tags) a
    -- a window seen for the first time, or one whose row was made for another window that began at the
    -- same instant (the budget's period changed since): recompute it from the allocations
    where not exists (select 1 from budget_status_cache c where c.budget_id = a.budget_id and c.period_start = a.period_start
                      and c.period_end = a.period_end)
    order by a.budget_id
  loop
    perform refresh_budget_status_cache(window_row.budget_id, window_row.period_start, window_row.period_end);
  end loop;
  return query
    select a.budget_id, b.name, b.alerts, a.scope_matched, a.scope_rank, a.period_start, a.period_end, budget_definitions_version()
    from budget_applicable(p_scope_types, p_scope_ids, p_currency, now(), p_model, p_tags) a
    join budget_definitions b on b.id = a.budget_id
    order by a.scope_matched desc, a.scope_rank, a.budget_id;
end $$;

-- Usage recorded outside the gate (002's trigger, now through budget_window) counts toward the budgets of its line that its model
-- (metadata.modelId) and tags (metadata.tags) match. (The recorder refuses a record that the budget it
-- is recorded on does not match, lib/usage/tracker.ts; settlements allocate to the budgets that held.)
create or replace function budget_usage_after_insert() returns trigger language plpgsql as $$
declare
  budget record;
  created boolean;
begin
  insert into budget_usage_allocations (budget_id, usage_id, amount, occurred_at)
  select distinct l.id, new.id, new.amount, new.occurred_at
  from unnest(array[new.budget_id] || new.also_counts_toward) as counted(id)
  cross join lateral budget_lineage(counted.id) l
  join budget_definitions b on b.id = l.id
  where budget_matches(b, new.metadata ->> 'modelId', new.metadata -> 'tags');

  for budget in
    select b.id, w.period_start, w.period_end
    from budget_usage_allocations a
    join budget_definitions b on b.id = a.budget_id
    cross join lateral budget_window(b, new.occurred_at) w
    where a.usage_id = new.id
    order by b.id
  loop
    created := null;
    insert into budget_status_cache (budget_id, period_start, period_end)
    values (budget.id, budget.period_start, budget.period_end)
    on conflict (budget_id, period_start) do nothing
    returning true into created;
    if created then
      perform refresh_budget_status_cache(budget.id, budget.period_start, budget.period_end);
    else
      update budget_status_cache c
      set current_amount = c.current_amount + new.amount, usage_count = c.usage_count + 1,
          last_usage_at = greatest(c.last_usage_at, new.occurred_at), updated_at = now()
      where c.budget_id = budget.id and c.period_start = budget.period_start;
    end if;
  end loop;
  return null;
end $$;
