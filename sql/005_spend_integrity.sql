-- Spend integrity: periods that no session setting can move, and one bounded walk of the tree in each
-- direction. (Settlements charged to the period their reservation was made in, allocated to the budgets
-- that held them, are budget_settle_batch in 006, which replaces the per-call reserve and settle of 003.)

-- The deepest a budget tree may be, counted in budgets from a root to a leaf. The registry refuses a
-- create or a move past it (lib/budgets/registry.ts), so every walk below reaches every budget.
create function budget_max_depth() returns integer language sql immutable parallel safe as $$ select 16 $$;

-- The period window, as in 002, now computed on UTC wall-clock timestamps only. `timestamptz +
-- interval` counts days and months in the session's TimeZone, so a custom period of '31 days' moved
-- by an hour across a daylight-saving change in a session set to America/New_York; timestamp
-- arithmetic has no zone, which also makes the function as immutable as it is declared.
create or replace function budget_period_window(
  p_period text, p_start timestamptz, p_end timestamptz, p_recurring boolean, p_at timestamptz,
  out period_start timestamptz, out period_end timestamptz
) returns setof record language plpgsql immutable parallel safe as $$
declare
  anchor  timestamp := p_start at time zone 'UTC';
  instant timestamp := p_at at time zone 'UTC';
  step    interval;
  step_us bigint;
  months  integer;
  n       bigint;
begin
  if p_at is null or p_start is null or p_at < p_start then return; end if;
  if p_period = 'custom' then
    -- A custom period is exactly as long as its dates say, in microseconds.
    step_us := (extract(epoch from (p_end - p_start)) * 1000000)::bigint;
    n := floor((extract(epoch from (p_at - p_start)) * 1000000) / step_us);
    period_start := (anchor + (step_us * n)::double precision * interval '1 microsecond') at time zone 'UTC';
    period_end := (anchor + (step_us * (n + 1))::double precision * interval '1 microsecond') at time zone 'UTC';
  elsif p_period in ('daily', 'weekly') then
    step := case p_period when 'daily' then interval '1 day' else interval '7 days' end;
    n := floor(extract(epoch from instant - anchor) / extract(epoch from step));
    period_start := (anchor + step * n) at time zone 'UTC';
    period_end := (anchor + step * (n + 1)) at time zone 'UTC';
  else
    months := case p_period when 'monthly' then 1 when 'quarterly' then 3 when 'annual' then 12 end;
    n := (extract(year from instant) - extract(year from anchor)) * 12 + extract(month from instant) - extract(month from anchor);
    if anchor + make_interval(months => n::integer) > instant then n := n - 1; end if;
    n := floor(n::numeric / months);
    period_start := (anchor + make_interval(months => (n * months)::integer)) at time zone 'UTC';
    period_end := (anchor + make_interval(months => ((n + 1) * months)::integer)) at time zone 'UTC';
  end if;
  if n > 0 and not p_recurring then return; end if;
  if p_end is not null and p_period <> 'custom' then
    if p_at >= p_end then return; end if;
    period_end := least(period_end, p_end);
  end if;
  return next;
end $$;

-- Upward: the budget and every ancestor, nearest first (depth 1 is the budget itself). The one walk
-- toward the root: the gate, the usage trigger, the registry's ancestors and its cycle check use it.
create or replace function budget_lineage(p_budget_id uuid)
returns table (id uuid, depth integer, period text, start_date timestamptz, end_date timestamptz, recurring boolean)
language sql stable rows 5 as $$
  with recursive lineage as (
    select b.id, b.parent_id, 1 as depth from budget_definitions b where b.id = p_budget_id
    union all
    select p.id, p.parent_id, l.depth + 1 from lineage l join budget_definitions p on p.id = l.parent_id
    where l.depth < budget_max_depth()
  )
  select b.id, l.depth, b.period, b.start_date, b.end_date, b.recurring
  from lineage l join budget_definitions b on b.id = l.id
  order by l.depth
$$;

-- Downward: every live descendant of the given budgets, with its distance (1: a child). The one walk
-- toward the leaves: the hierarchy view, cascading deletes and the depth check use it.
create function budget_subtree(p_budget_ids uuid[])
returns table (id uuid, depth integer)
language sql stable as $$
  with recursive subtree as (
    select b.id, 1 as depth from budget_definitions b where b.parent_id = any (p_budget_ids) and b.deleted_at is null
    union all
    select b.id, s.depth + 1 from subtree s join budget_definitions b on b.parent_id = s.id
    where b.deleted_at is null and s.depth < budget_max_depth()
  )
  select s.id, min(s.depth) from subtree s group by s.id
$$;

