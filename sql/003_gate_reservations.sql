-- The gate: hard or soft budgets, and reservations that hold a call's estimated cost until it settles.

alter table budget_definitions
  add column enforcement text not null default 'hard' check (enforcement in ('hard', 'soft'));

-- One row per gated call and budget it applies to. The sum of a window's live rows is the cache
-- row's reserved_amount; both change together in budget_reserve and budget_settle.
create table budget_reservations (
  id            uuid not null,
  budget_id     uuid not null references budget_definitions (id),
  period_start  timestamptz not null,
  amount        numeric(28, 10) not null check (amount > 0),
  -- The budget matched one of the caller's scopes (the rest are their ancestors): usage is recorded on these.
  scope_matched boolean not null,
  scope_rank    integer not null,
  currency      text not null,
  request_id    text not null,
  created_at    timestamptz not null default now(),
  expires_at    timestamptz not null,
  primary key (id, budget_id)
);
create index budget_reservations_expiry on budget_reservations (expires_at);

-- An admin's approval lifts a budget's require-approval for a stated amount and time: calls go
-- through while the budget's settled + reserved spend stays within spent_at_approval + amount.
create table budget_approvals (
  id                uuid primary key default gen_random_uuid(),
  budget_id         uuid not null references budget_definitions (id),
  period_start      timestamptz not null,
  amount            numeric(28, 10) not null check (amount > 0),
  spent_at_approval numeric(28, 10) not null,
  approved_by       text not null,
  reason            text,
  created_at        timestamptz not null default now(),
  expires_at        timestamptz not null
);
create index budget_approvals_budget on budget_approvals (budget_id, period_start);

-- How far approvals let a budget's spend go in a window now (null: no approval in force).
create function budget_approved_through(p_budget_id uuid, p_period_start timestamptz)
returns numeric language sql stable as $$
  select max(a.spent_at_approval + a.amount) from budget_approvals a
  where a.budget_id = p_budget_id and a.period_start = p_period_start and a.expires_at > now()
$$;

-- The budgets that apply to a caller: the live budgets in p_currency of each (scope type, scope id),
-- and all their ancestors, each once, that have a period window at p_at. scope_rank orders them:
-- by the position of the scope they came from (callers list the most specific scope first), then by
-- distance from it, so a budget matched directly comes before the same budget reached as an ancestor.
create function budget_applicable(p_scope_types text[], p_scope_ids text[], p_currency text, p_at timestamptz)
returns table (budget_id uuid, scope_matched boolean, scope_rank integer, period_start timestamptz, period_end timestamptz)
language sql stable as $$
  select l.id, bool_or(l.depth = 1), min(s.rank * 100 + l.depth)::integer, w.period_start, w.period_end
  from unnest(p_scope_types, p_scope_ids) with ordinality as s(scope_type, scope_id, rank)
  join budget_definitions m on m.scope_type = s.scope_type and m.scope_id = s.scope_id
    and m.deleted_at is null and m.currency = p_currency
  cross join lateral budget_lineage(m.id) l
  join budget_definitions b on b.id = l.id and b.deleted_at is null
  cross join lateral budget_period_window(b.period, b.start_date, b.end_date, b.recurring, p_at) w
  group by l.id, w.period_start, w.period_end
$$;

-- Reserves p_amount on every budget that applies to the caller's scopes (budget_applicable), or on
-- none. Their cache rows are locked in budget id order (the order
-- the usage trigger uses), so concurrent reservations and recorders queue and never deadlock. A hard
-- budget takes the amount only if settled + reserved + amount stays within its limit; a soft one
-- always takes it. One call, one round trip; returns each budget's numbers before the reservation.
create function budget_reserve(
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
    update budget_status_cache c set reserved_amount = c.reserved_amount + p_amount, updated_at = now()
    from unnest(ids, starts) as a(id, period_start)
    where c.budget_id = a.id and c.period_start = a.period_start;
  end if;
end $$;

-- Ends a reservation in one transaction: gives back the reserved amounts, and when p_actual is given
-- (the call was charged) records it once, on the reservation's most specific scope budget, counting
-- toward the other scope budgets too (the allocations then reach every applicable budget once).
-- Returns the usage record's id, or null when nothing was recorded. A reservation already ended
-- (settled, released, or swept after expiry) changes nothing.
create function budget_settle(
  p_reservation_id uuid, p_actual numeric, p_source text, p_description text, p_metadata jsonb
) returns uuid language plpgsql as $$
declare
  ids uuid[];
  starts timestamptz[];
  amounts numeric[];
  scope_budgets uuid[];
  currency text;
  request_id text;
  usage_id uuid;
begin
  with ended as (delete from budget_reservations r where r.id = p_reservation_id returning r.*)
  select array_agg(e.budget_id order by e.budget_id), array_agg(e.period_start order by e.budget_id),
         array_agg(e.amount order by e.budget_id),
         array_agg(e.budget_id order by e.scope_rank, e.budget_id) filter (where e.scope_matched),
         min(e.currency), min(e.request_id)
  into ids, starts, amounts, scope_budgets, currency, request_id
  from ended e;
  if ids is null then return null; end if;

  -- Record first, release second: the usage trigger takes the window rows' locks (in budget id order)
  -- as late as it can, and the release then updates rows this transaction already holds.
  if p_actual is not null and p_actual > 0 and scope_budgets is not null then
    insert into budget_usage_records (budget_id, amount, currency, source, description, metadata, idempotency_key, also_counts_toward)
    values (scope_budgets[1], p_actual, currency, p_source, p_description,
            coalesce(p_metadata, '{}'::jsonb) || jsonb_build_object('requestId', request_id), request_id, scope_budgets[2:])
    on conflict (budget_id, idempotency_key) do nothing
    returning id into usage_id;
  end if;

  for i in 1 .. array_length(ids, 1) loop
    update budget_status_cache c set reserved_amount = greatest(c.reserved_amount - amounts[i], 0), updated_at = now()
    where c.budget_id = ids[i] and c.period_start = starts[i];
  end loop;
  return usage_id;
end $$;

-- Settles reservations left by a process that died mid-call. Their outcome is unknown: the request
-- may well have reached the provider and been charged, so each is counted as spent at its estimate
-- (the most the call could cost), never silently released: a budget may end up over-counted by a
-- crash, never overspent. SKIP LOCKED lets every gateway process sweep without waiting on another.
create function budget_sweep_expired(p_limit integer) returns integer language plpgsql as $$
declare
  expired record;
  swept integer := 0;
begin
  for expired in
    with locked as (
      select r.id, r.amount from budget_reservations r
      where r.expires_at < now()
      order by r.id
      limit p_limit
      for update skip locked
    )
    select distinct id, amount from locked
  loop
    perform budget_settle(expired.id, expired.amount, 'expired-reservation',
      'The gateway did not settle this call before its reservation expired; counted at its estimate',
      jsonb_build_object('outcome', 'unknown'));
    swept := swept + 1;
  end loop;
  return swept;
end $$;

-- A queue on one hot budget row must not hold a pooled connection for long: a reservation that cannot
-- get its locks within 2 s fails (SQLSTATE 55P03) and the gate answers by its failure mode.
alter function budget_reserve(uuid, text[], text[], text, numeric, interval, text) set lock_timeout = '2s';
alter function budget_settle(uuid, numeric, text, text, jsonb) set lock_timeout = '5s';
