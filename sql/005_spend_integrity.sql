-- Spend integrity: periods that no session setting can move, one bounded walk of the tree in each
-- direction, and settlements charged to the period their reservation was made in.

-- The deepest a budget tree may be, counted in budgets from a root to a leaf. The registry refuses a
-- create or a move past it (lib/services/registry.ts), so every walk below reaches every budget.
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

-- As in 003, with one change: the usage is recorded at the instant of the reservation, so a call
-- reserved just before a period boundary and settled after it is charged to the window whose
-- reservations counted it, never to a new window that had no room set aside for it.
create or replace function budget_settle(
  p_reservation_id uuid, p_actual numeric, p_source text, p_description text, p_metadata jsonb
) returns uuid language plpgsql as $$
declare
  ids uuid[];
  starts timestamptz[];
  amounts numeric[];
  scope_budgets uuid[];
  currency text;
  request_id text;
  reserved_at timestamptz;
  usage_id uuid;
begin
  with ended as (delete from budget_reservations r where r.id = p_reservation_id returning r.*)
  select array_agg(e.budget_id order by e.budget_id), array_agg(e.period_start order by e.budget_id),
         array_agg(e.amount order by e.budget_id),
         array_agg(e.budget_id order by e.scope_rank, e.budget_id) filter (where e.scope_matched),
         min(e.currency), min(e.request_id), min(e.created_at)
  into ids, starts, amounts, scope_budgets, currency, request_id, reserved_at
  from ended e;
  if ids is null then return null; end if;

  if p_actual is not null and p_actual > 0 and scope_budgets is not null then
    insert into budget_usage_records (budget_id, amount, currency, source, description, metadata, idempotency_key, also_counts_toward, occurred_at)
    values (scope_budgets[1], p_actual, currency, p_source, p_description,
            coalesce(p_metadata, '{}'::jsonb) || jsonb_build_object('requestId', request_id), request_id, scope_budgets[2:], reserved_at)
    on conflict (budget_id, idempotency_key) do nothing
    returning id into usage_id;
  end if;

  for i in 1 .. array_length(ids, 1) loop
    update budget_status_cache c set reserved_amount = greatest(c.reserved_amount - amounts[i], 0)
    where c.budget_id = ids[i] and c.period_start = starts[i];
  end loop;
  return usage_id;
end $$;

alter function budget_settle(uuid, numeric, text, text, jsonb) set lock_timeout = '5s';

-- Holds come and go without touching a cache row's updated_at: it says when the settled spend last
-- changed (what a status refresh recomputes), and a call refused after its hold was taken (an alert
-- action, a restricted model) then leaves the row exactly as it found it. budget_reserve as in 003
-- otherwise; budget_settle above releases the same way.
create or replace function budget_reserve(
  p_reservation_id uuid, p_scope_types text[], p_scope_ids text[], p_currency text,
  p_amount numeric, p_ttl interval, p_request_id text
) returns table (
  budget_id uuid, name text, amount numeric, enforcement text, alerts jsonb, scope_matched boolean,
  period_start timestamptz, period_end timestamptz, current_amount numeric, reserved_amount numeric,
  approved_through numeric, reserved boolean
) language plpgsql as $$
declare
  ids uuid[];
  starts timestamptz[];
  ends timestamptz[];
  matched boolean[];
  ranks integer[];
  fits_all boolean;
begin
  -- The applicable budgets and their windows now, in budget id order (arrays, not a temporary table:
  -- this runs on every model call).
  select array_agg(x.id order by x.id), array_agg(x.period_start order by x.id), array_agg(x.period_end order by x.id),
         array_agg(x.matched order by x.id), array_agg(x.rank order by x.id)
  into ids, starts, ends, matched, ranks
  from (
    select a.budget_id as id, a.scope_matched as matched, a.scope_rank as rank, a.period_start, a.period_end
    from budget_applicable(p_scope_types, p_scope_ids, p_currency, now()) a
  ) x;
  if ids is null then return; end if;

  -- Lock the window rows one by one in budget id order; a window seen for the first time gets its row
  -- (locked the same way) by a full recompute, as the usage trigger does. One ordered pass: creating a
  -- row and then locking a lower one would break the order and could deadlock two reservations.
  for i in 1 .. array_length(ids, 1) loop
    perform 1 from budget_status_cache c where c.budget_id = ids[i] and c.period_start = starts[i] for update;
    if not found then
      perform refresh_budget_status_cache(ids[i], starts[i], ends[i]);
    end if;
  end loop;

  select bool_and(b.enforcement = 'soft' or c.current_amount + c.reserved_amount + p_amount <= b.amount)
  into fits_all
  from unnest(ids, starts) as a(id, period_start)
  join budget_definitions b on b.id = a.id
  join budget_status_cache c on c.budget_id = a.id and c.period_start = a.period_start;

  return query
    select b.id, b.name, b.amount, b.enforcement, b.alerts, a.matched, a.period_start, a.period_end,
           c.current_amount, c.reserved_amount, budget_approved_through(b.id, a.period_start), fits_all
    from unnest(ids, starts, ends, matched, ranks) as a(id, period_start, period_end, matched, rank)
    join budget_definitions b on b.id = a.id
    join budget_status_cache c on c.budget_id = a.id and c.period_start = a.period_start
    order by a.matched desc, a.rank, b.id;

  if fits_all then
    insert into budget_reservations (id, budget_id, period_start, amount, scope_matched, scope_rank, currency, request_id, expires_at)
    select p_reservation_id, a.id, a.period_start, p_amount, a.matched, a.rank, p_currency, p_request_id, now() + p_ttl
    from unnest(ids, starts, matched, ranks) as a(id, period_start, matched, rank);
    update budget_status_cache c set reserved_amount = c.reserved_amount + p_amount
    from unnest(ids, starts) as a(id, period_start)
    where c.budget_id = a.id and c.period_start = a.period_start;
  end if;
end $$;

alter function budget_reserve(uuid, text[], text[], text, numeric, interval, text) set lock_timeout = '2s';

