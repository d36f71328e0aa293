-- Usage records, their allocation to budgets, the period window, and the status cache that a trigger
-- keeps current on usage insert.

-- The one definition of a budget's period window: the window that contains `at`, or no row when the
-- budget is not active then (before its start, after a non-recurring budget's only window, after
-- its end date). Windows are computed from the anchor (start_date) each time, in UTC:
-- monthly from Jan 31 gives Feb 29 (or 28), then Mar 31, because PostgreSQL adds months to the
-- anchor and clamps to the month's end. Windows are half-open: [period_start, period_end).
create function budget_period_window(
  p_period text, p_start timestamptz, p_end timestamptz, p_recurring boolean, p_at timestamptz,
  out period_start timestamptz, out period_end timestamptz
) returns setof record language plpgsql immutable parallel safe as $$
declare
  anchor  timestamp := p_start at time zone 'UTC';
  instant timestamp := p_at at time zone 'UTC';
  step    interval;
  months  integer;
  n       bigint;
begin
  if p_at < p_start then return; end if;
  if p_period = 'custom' then
    step := p_end - p_start;
    n := floor(extract(epoch from p_at - p_start) / extract(epoch from step));
    period_start := p_start + step * n;
    period_end := p_start + step * (n + 1);
  elsif p_period in ('daily', 'weekly') then
    step := case p_period when 'daily' then interval '1 day' else interval '7 days' end;
    n := floor(extract(epoch from instant - anchor) / extract(epoch from step));
    period_start := (anchor + step * n) at time zone 'UTC';
    period_end := (anchor + step * (n + 1)) at time zone 'UTC';
  else
    months := case p_period when 'monthly' then 1 when 'quarterly' then 3 when 'annual' then 12 end;
    -- Whole calendar months from the anchor to the instant, less one if the anchor's day and time
    -- have not come round yet in the instant's month.
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

create table budget_usage_records (
  id              uuid primary key default gen_random_uuid(),
  budget_id       uuid not null references budget_definitions (id),
  amount          numeric(28, 10) not null check (amount > 0),
  currency        text not null check (currency ~ '^[A-Z]{3}$'),
  source          text,
  description     text,
  metadata        jsonb not null default '{}'::jsonb check (jsonb_typeof(metadata) = 'object'),
  -- metadata.requestId or the Idempotency-Key header: one record per key and budget, however often retried.
  idempotency_key text,
  -- Other budgets the usage applies to besides budget_id's line (a gated call's other scopes).
  also_counts_toward uuid[] not null default '{}',
  model_id        text generated always as (metadata ->> 'modelId') stored,
  user_id         text generated always as (metadata ->> 'userId') stored,
  occurred_at     timestamptz not null default now(),
  recorded_at     timestamptz not null default now(),
  unique (budget_id, idempotency_key)
);

-- Which budgets each usage counts toward: its budget and every ancestor, and the same for each budget
-- in also_counts_toward, each budget once. Fixed when the usage is recorded, so a call that applies
-- to a user budget and a project budget under one organization counts once toward the organization,
-- and history stays what it was when a budget later moves in the tree.
create table budget_usage_allocations (
  budget_id   uuid not null references budget_definitions (id),
  usage_id    uuid not null references budget_usage_records (id),
  amount      numeric(28, 10) not null,
  occurred_at timestamptz not null,
  primary key (budget_id, usage_id)
);
-- Range sums and keyset pages per budget; amount is included so sums need not visit the heap.
create index budget_usage_allocations_window on budget_usage_allocations (budget_id, occurred_at, usage_id) include (amount);

-- One row per budget and period window: the spend counted toward the budget in that window (its own
-- usage and its descendants'), kept current by the usage trigger, so reading status never sums rows.
create table budget_status_cache (
  budget_id       uuid not null references budget_definitions (id),
  period_start    timestamptz not null,
  period_end      timestamptz not null,
  current_amount  numeric(28, 10) not null default 0,
  reserved_amount numeric(28, 10) not null default 0 check (reserved_amount >= 0),
  usage_count     bigint not null default 0,
  last_usage_at   timestamptz,
  refreshed_at    timestamptz not null default now(),
  updated_at      timestamptz not null default now(),
  primary key (budget_id, period_start)
);

-- The budget and every ancestor (nearest first), with what their period windows need.
create function budget_lineage(p_budget_id uuid)
returns table (id uuid, depth integer, period text, start_date timestamptz, end_date timestamptz, recurring boolean)
language sql stable rows 5 as $$
  with recursive lineage as (
    select b.id, b.parent_id, 1 as depth from budget_definitions b where b.id = p_budget_id
    union all
    select p.id, p.parent_id, l.depth + 1 from lineage l join budget_definitions p on p.id = l.parent_id where l.depth < 64
  )
  select b.id, l.depth, b.period, b.start_date, b.end_date, b.recurring
  from lineage l join budget_definitions b on b.id = l.id
  order by l.depth
$$;

-- Spend counted toward a budget in a window, summed from the allocations themselves.
create function calculate_budget_status(p_budget_id uuid, p_period_start timestamptz, p_period_end timestamptz)
returns table (current_amount numeric, usage_count bigint, last_usage_at timestamptz)
language sql stable as $$
  select coalesce(sum(a.amount), 0), count(*), max(a.occurred_at)
  from budget_usage_allocations a
  where a.budget_id = p_budget_id and a.occurred_at >= p_period_start and a.occurred_at < p_period_end
$$;

-- Recomputes one cache row from the usage rows. The row lock is taken before the sum, and the sum
-- runs in a statement of its own (a fresh snapshot under READ COMMITTED): a recorder that already
-- incremented the row has committed and is in the sum; one still to come waits for this lock and
-- increments the recomputed value. Either way nothing is lost or counted twice.
create function refresh_budget_status_cache(p_budget_id uuid, p_period_start timestamptz, p_period_end timestamptz)
returns setof budget_status_cache language plpgsql as $$
declare
  fresh record;
begin
  insert into budget_status_cache (budget_id, period_start, period_end)
  values (p_budget_id, p_period_start, p_period_end)
  on conflict (budget_id, period_start) do nothing;
  perform 1 from budget_status_cache c
  where c.budget_id = p_budget_id and c.period_start = p_period_start for update;
  select * into fresh from calculate_budget_status(p_budget_id, p_period_start, p_period_end);
  return query
    update budget_status_cache c
    set current_amount = fresh.current_amount, usage_count = fresh.usage_count, last_usage_at = fresh.last_usage_at,
        period_end = p_period_end, refreshed_at = now(), updated_at = now()
    where c.budget_id = p_budget_id and c.period_start = p_period_start
    returning c.*;
end $$;

-- On every usage insert: allocate it to each budget it counts toward, and add the amount to each
-- one's window row. Rows are visited in budget id order, the same order the gate locks them in, so
-- concurrent recorders and reservations queue instead of deadlocking. A window row that does not
-- exist yet is created by a full recompute (which already includes the new allocation).
create function budget_usage_after_insert() returns trigger language plpgsql as $$
declare
  budget record;
  created boolean;
begin
  insert into budget_usage_allocations (budget_id, usage_id, amount, occurred_at)
  select distinct l.id, new.id, new.amount, new.occurred_at
  from unnest(array[new.budget_id] || new.also_counts_toward) as counted(id)
  cross join lateral budget_lineage(counted.id) l;

  for budget in
    select b.id, w.period_start, w.period_end
    from budget_usage_allocations a
    join budget_definitions b on b.id = a.budget_id
    cross join lateral budget_period_window(b.period, b.start_date, b.end_date, b.recurring, new.occurred_at) w
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

create trigger budget_usage_records_status after insert on budget_usage_records
for each row execute function budget_usage_after_insert();
