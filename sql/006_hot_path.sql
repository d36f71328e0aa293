-- The gate's hot path: budget lines resolved once per process and window, holds taken in one lean
-- statement, settlements committed in batches, and a status refresh that sums outside the row lock.

-- Settlements write their usage, allocations and window rows themselves, set-based, once per batch
-- (lib/gate/reservation-repository.ts); the per-row usage trigger is for the other ways usage arrives.
alter table budget_usage_records add column allocated_by_settlement boolean not null default false;
drop trigger budget_usage_records_status on budget_usage_records;
create trigger budget_usage_records_status after insert on budget_usage_records
for each row when (not new.allocated_by_settlement) execute function budget_usage_after_insert();

-- Every change to budget definitions bumps one version, in the change's own transaction (so no one sees
-- the new version before the change). Gateway processes keep budget lines in memory; each statement of
-- the gate reports the version it saw, and a process that sees a newer one than its lines were loaded
-- at forgets them (and the leases taken under them). Writes to definitions are serialized anyway (the
-- hierarchy's advisory lock), so the one row costs nothing.
create table budget_definitions_version (
  only_row boolean primary key default true check (only_row),
  version  bigint not null default 0
);
insert into budget_definitions_version default values;

create function budget_definitions_changed() returns trigger language plpgsql as $$
begin
  update budget_definitions_version set version = version + 1;
  return null;
end $$;
create trigger budget_definitions_changed after insert or update or delete on budget_definitions
for each statement execute function budget_definitions_changed();

create function budget_definitions_version() returns bigint language sql stable as $$
  select version from budget_definitions_version
$$;

-- Whether spending p_amount fits a budget now: the one place this rule lives (the hold, check
-- constraints and the caller summary read it; lib/gate/decision.ts reads their answer). A soft
-- budget always takes it; a hard one while settled + reserved + amount stays within its limit.
create function budget_fits(p_enforcement text, p_limit numeric, p_current numeric, p_reserved numeric, p_amount numeric)
returns boolean language sql immutable parallel safe as $$
  select p_enforcement = 'soft' or p_current + p_reserved + p_amount <= p_limit
$$;

-- A refresh that never stalls the gate. The sum runs outside any lock: in one statement, so under one
-- snapshot, it reads the window's allocations and the cache row as that snapshot sees them; their
-- difference is the row's drift. Increments committed after the snapshot are in neither side (their
-- writers add them to the row themselves), so adding the drift under a brief row lock is exact.
create or replace function refresh_budget_status_cache(p_budget_id uuid, p_period_start timestamptz, p_period_end timestamptz)
returns setof budget_status_cache language plpgsql as $$
declare
  drift record;
begin
  insert into budget_status_cache (budget_id, period_start, period_end)
  values (p_budget_id, p_period_start, p_period_end)
  on conflict (budget_id, period_start) do nothing;
  select s.current_amount - c.current_amount as amount, s.usage_count - c.usage_count as calls, s.last_usage_at
  into drift
  from budget_status_cache c cross join calculate_budget_status(p_budget_id, p_period_start, p_period_end) s
  where c.budget_id = p_budget_id and c.period_start = p_period_start;
  return query
    update budget_status_cache c
    set current_amount = c.current_amount + drift.amount, usage_count = c.usage_count + drift.calls,
        last_usage_at = greatest(c.last_usage_at, drift.last_usage_at),
        period_end = p_period_end, refreshed_at = now(), updated_at = now()
    where c.budget_id = p_budget_id and c.period_start = p_period_start
    returning c.*;
end $$;

-- The budget line of a caller, for the process's cache: every budget that applies (budget_applicable),
-- with what the gate needs to decide, each window's cache row made sure of, and until when the line
-- holds (its first window end). Runs once per caller, window and process, not per call.
create function budget_line(p_scope_types text[], p_scope_ids text[], p_currency text)
returns table (budget_id uuid, name text, alerts jsonb, scope_matched boolean, scope_rank integer,
               period_start timestamptz, period_end timestamptz, definitions_version bigint)
language plpgsql as $$
declare
  window_row record;
begin
  for window_row in
    select a.budget_id, a.period_start, a.period_end from budget_applicable(p_scope_types, p_scope_ids, p_currency, now()) a
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
    from budget_applicable(p_scope_types, p_scope_ids, p_currency, now()) a
    join budget_definitions b on b.id = a.budget_id
    order by a.scope_matched desc, a.scope_rank, a.budget_id;
end $$;

-- Holds for a batch of calls in one statement (group commit): the calls that arrived together while
-- the previous batch was in PostgreSQL. Their windows are locked once, in budget id order (the order
-- every writer uses), and the calls are admitted one after another in arrival order, each on all of
-- its budgets or none (budget_fits against what the calls before it took). Then one update per window
-- row and one insert of every admitted call's reservation rows. A call whose windows are not current
-- (a rollover, a cache row gone) holds nothing and is told so, to reload its line.
-- Rows (p_row_*) name each call's budgets by the call's position (1-based) in p_reservation_ids.
create function budget_hold_batch(
  p_reservation_ids uuid[], p_amounts numeric[], p_request_ids text[], p_currency text, p_ttl interval,
  p_row_calls integer[], p_row_budgets uuid[], p_row_starts timestamptz[], p_row_ends timestamptz[],
  p_row_matched boolean[], p_row_ranks integer[], p_need_approvals boolean, p_need_projected boolean
) returns table (call_index integer, budget_id uuid, amount numeric, enforcement text, current_amount numeric,
                 reserved_amount numeric, fits boolean, is_current boolean, is_reserved boolean,
                 approved_through numeric, projected_actions text[], definitions_version bigint)
language plpgsql as $$
#variable_conflict use_column
declare
  keys uuid[]; starts timestamptz[]; limits numeric[]; enforcements text[]; currents numeric[]; reserveds numeric[]; added numeric[];
  row_window integer[];
  call_current boolean[]; call_reserved boolean[]; call_fits boolean;
  row_reserved_before numeric[]; row_fits boolean[];
  calls integer := coalesce(array_length(p_reservation_ids, 1), 0);
  rows_count integer := coalesce(array_length(p_row_calls, 1), 0);
  w integer;
begin
  perform 1 from budget_status_cache c
  join (select distinct r.b, r.s, r.e from unnest(p_row_budgets, p_row_starts, p_row_ends) as r(b, s, e) where r.s <= now() and now() < r.e) x
    on c.budget_id = x.b and c.period_start = x.s and c.period_end = x.e
  order by c.budget_id, c.period_start
  for update of c;

  select array_agg(c.budget_id order by c.budget_id, c.period_start), array_agg(c.period_start order by c.budget_id, c.period_start),
         array_agg(d.amount order by c.budget_id, c.period_start), array_agg(d.enforcement order by c.budget_id, c.period_start),
         array_agg(c.current_amount order by c.budget_id, c.period_start), array_agg(c.reserved_amount order by c.budget_id, c.period_start)
  into keys, starts, limits, enforcements, currents, reserveds
  from budget_status_cache c
  join budget_definitions d on d.id = c.budget_id
  join (select distinct r.b, r.s, r.e from unnest(p_row_budgets, p_row_starts, p_row_ends) as r(b, s, e) where r.s <= now() and now() < r.e) x
    on c.budget_id = x.b and c.period_start = x.s and c.period_end = x.e;
  keys := coalesce(keys, '{}'); added := array_fill(0::numeric, array[coalesce(array_length(keys, 1), 0)]);

  -- Which locked window each row names (null: its window is not current or has no row).
  row_window := array_fill(null::integer, array[rows_count]);
  for ri in 1 .. rows_count loop
    for ki in 1 .. coalesce(array_length(keys, 1), 0) loop
      if keys[ki] = p_row_budgets[ri] and starts[ki] = p_row_starts[ri] then row_window[ri] := ki; end if;
    end loop;
  end loop;

  call_current := array_fill(true, array[calls]);
  call_reserved := array_fill(false, array[calls]);
  row_reserved_before := array_fill(null::numeric, array[rows_count]);
  row_fits := array_fill(false, array[rows_count]);
  for ci in 1 .. calls loop
    call_fits := true;
    for ri in 1 .. rows_count loop
      continue when p_row_calls[ri] <> ci;
      w := row_window[ri];
      if w is null then call_current[ci] := false; continue; end if;
      row_reserved_before[ri] := reserveds[w] + added[w];
      row_fits[ri] := budget_fits(enforcements[w], limits[w], currents[w], reserveds[w] + added[w], p_amounts[ci]);
      call_fits := call_fits and row_fits[ri];
    end loop;
    if call_fits and call_current[ci] then
      call_reserved[ci] := true;
      for ri in 1 .. rows_count loop
        if p_row_calls[ri] = ci then added[row_window[ri]] := added[row_window[ri]] + p_amounts[ci]; end if;
      end loop;
    end if;
  end loop;

  update budget_status_cache c set reserved_amount = c.reserved_amount + a.added
  from unnest(keys, starts, added) as a(b, s, added)
  where a.added > 0 and c.budget_id = a.b and c.period_start = a.s;

  insert into budget_reservations (id, budget_id, period_start, amount, scope_matched, scope_rank, currency, request_id, expires_at)
  select p_reservation_ids[r.call], r.b, r.s, p_amounts[r.call], r.matched, r.rank, p_currency, p_request_ids[r.call], now() + p_ttl
  from unnest(p_row_calls, p_row_budgets, p_row_starts, p_row_matched, p_row_ranks) as r(call, b, s, matched, rank)
  where call_reserved[r.call];

  return query
    select r.call, r.b, limits[r.w], enforcements[r.w], currents[r.w], r.before, r.fits, call_current[r.call], call_reserved[r.call],
           case when p_need_approvals then budget_approved_through(r.b, r.s) end,
           case when p_need_projected then array(select distinct action from budget_alert_history h, unnest(h.actions) as action
                                                 where h.budget_id = r.b and h.period_start = r.s and h.basis = 'projected') else '{}'::text[] end,
           budget_definitions_version()
    from unnest(p_row_calls, p_row_budgets, p_row_starts, row_window, row_reserved_before, row_fits) as r(call, b, s, w, before, fits)
    where r.w is not null;
end $$;

-- A hot budget's queue must not hold a pooled connection for long (as budget_reserve in 003).
alter function budget_hold_batch(uuid[], numeric[], text[], text, interval, integer[], uuid[], timestamptz[], timestamptz[], boolean[], integer[], boolean, boolean)
  set lock_timeout = '2s';

-- Leases: a process that calls on a hot line holds a slice of the line's room as one reservation (a row
-- per budget, like any call's) and admits calls from it in memory; their settlements move money from
-- the lease to settled spend in batches. The escrow rule holds because the slice counts as reserved
-- until it is spent or returned. A slice is at most an eighth of the room left on the line's tightest
-- budget, so slices shrink as budgets fill and the last part is held call by call; and never reaches a
-- threshold whose alert does more than notify, so no such action can come into force inside a lease.
-- A lease whose process dies expires like any reservation and is counted as spent, unused part and
-- all: a crash over-counts by at most a slice, never under-counts.
alter table budget_reservations drop constraint budget_reservations_amount_check;
alter table budget_reservations add constraint budget_reservations_amount_check check (amount >= 0);
alter table budget_reservations add column lease boolean not null default false;

create function budget_lease_take(
  p_lease_id uuid, p_currency text, p_ttl interval, p_wanted numeric, p_least numeric,
  p_budgets uuid[], p_starts timestamptz[], p_ends timestamptz[], p_matched boolean[], p_ranks integer[]
) returns table (granted numeric, budget_id uuid, amount numeric, enforcement text, current_amount numeric, reserved_amount numeric,
                 definitions_version bigint)
language plpgsql as $$
#variable_conflict use_column
declare
  windows integer;
  room numeric;
  slice numeric;
begin
  -- The lease's own rows first, then the window rows in budget id order: the order every settlement takes.
  perform 1 from budget_reservations r where r.id = p_lease_id for update;
  perform 1 from budget_status_cache c
  join unnest(p_budgets, p_starts, p_ends) as x(b, s, e) on c.budget_id = x.b and c.period_start = x.s and c.period_end = x.e
    and x.s <= now() and now() < x.e
  order by c.budget_id for update of c;
  get diagnostics windows = row_count;
  if windows < coalesce(array_length(p_budgets, 1), 0) then return; end if; -- the line is out of date

  select min(least(
           case when d.enforcement = 'hard' then d.amount - c.current_amount - c.reserved_amount end,
           (select min(case when coalesce(t.basis, 'current') = 'projected' then 0
                            else t.threshold * d.amount / 100 - c.current_amount - c.reserved_amount end)
            from jsonb_to_recordset(d.alerts) as t(threshold numeric, actions jsonb, basis text)
            where exists (select 1 from jsonb_array_elements_text(t.actions) as action where action <> 'notify'))))
  into room
  from budget_status_cache c
  join budget_definitions d on d.id = c.budget_id
  join unnest(p_budgets, p_starts) as x(b, s) on c.budget_id = x.b and c.period_start = x.s;

  slice := case when room is null then p_wanted else least(p_wanted, trunc(room / 8, 10)) end;
  if slice < p_least then return; end if;

  update budget_status_cache c set reserved_amount = c.reserved_amount + slice
  from unnest(p_budgets, p_starts) as x(b, s) where c.budget_id = x.b and c.period_start = x.s;
  insert into budget_reservations (id, budget_id, period_start, amount, scope_matched, scope_rank, currency, request_id, expires_at, lease)
  select p_lease_id, x.b, x.s, slice, x.m, x.r, p_currency, 'lease:' || p_lease_id, now() + p_ttl, true
  from unnest(p_budgets, p_starts, p_matched, p_ranks) as x(b, s, m, r)
  on conflict (id, budget_id) do update set amount = budget_reservations.amount + excluded.amount, expires_at = excluded.expires_at;

  return query
    select slice, c.budget_id, d.amount, d.enforcement, c.current_amount, c.reserved_amount - slice, budget_definitions_version()
    from budget_status_cache c
    join budget_definitions d on d.id = c.budget_id
    join unnest(p_budgets, p_starts) as x(b, s) on c.budget_id = x.b and c.period_start = x.s;
end $$;

-- Gives back part of a lease that no admitted call can still use; a lease given back whole is gone.
create function budget_lease_return(p_lease_id uuid, p_amount numeric) returns void language plpgsql as $$
begin
  perform 1 from budget_reservations r where r.id = p_lease_id for update;
  perform 1 from budget_status_cache c join budget_reservations r on r.budget_id = c.budget_id and r.period_start = c.period_start
  where r.id = p_lease_id order by c.budget_id for update of c;
  update budget_status_cache c set reserved_amount = greatest(c.reserved_amount - least(p_amount, r.amount), 0)
  from budget_reservations r where r.id = p_lease_id and r.budget_id = c.budget_id and r.period_start = c.period_start;
  update budget_reservations r set amount = greatest(r.amount - p_amount, 0) where r.id = p_lease_id;
  delete from budget_reservations r where r.id = p_lease_id and r.amount = 0;
end $$;

alter function budget_lease_take(uuid, text, interval, numeric, numeric, uuid[], timestamptz[], timestamptz[], boolean[], integer[]) set lock_timeout = '2s';

-- Ends reservations in one transaction (group commit; the settlement queue sends what gathered while
-- the previous batch committed, and the sweeper sends what expired). A charged call is recorded once,
-- at its reservation's instant, on the most specific budget that held it (a scope's own budget, else
-- the nearest ancestor that held it), and allocated to exactly the budgets that held it: a budget
-- moved under another parent mid-call cannot charge the new parent what the old one held. Each window
-- row's money moves from reserved to settled, rows locked in budget id order. A reservation already
-- ended is simply absent. Returns each ended reservation with its usage record (null: none).
create function budget_settle_batch(p_ids uuid[], p_actuals numeric[], p_sources text[], p_descriptions text[], p_metadata jsonb[])
returns table (reservation_id uuid, usage_id uuid, definitions_version bigint) language sql as $$
  -- Asynchronous commit: the batch's locks go at commit, not once the WAL is on disk. A PostgreSQL
  -- crash can lose the last batches whole; their reservations come back and are swept at their
  -- estimate, so nothing goes uncounted. (set_config with is_local lasts to the end of the transaction.)
  select set_config('synchronous_commit', 'off', true);
  with input as (
    select * from unnest(p_ids, p_actuals, p_sources, p_descriptions, p_metadata) as i(reservation_id, actual, source, description, metadata)
  ),
  ended as (
    delete from budget_reservations r using input i where r.id = i.reservation_id
    returning r.id, r.budget_id, r.period_start, r.amount, r.scope_matched, r.scope_rank, r.currency, r.request_id, r.created_at
  ),
  calls as (
    select e.id as reservation_id, gen_random_uuid() as usage_id, min(e.currency) as currency, min(e.request_id) as request_id,
           min(e.created_at) as reserved_at,
           coalesce(array_agg(e.budget_id order by e.scope_rank, e.budget_id) filter (where e.scope_matched),
                    array_agg(e.budget_id order by e.scope_rank, e.budget_id)) as held_by
    from ended e group by e.id
  ),
  recorded as (
    insert into budget_usage_records as u (id, budget_id, amount, currency, source, description, metadata, idempotency_key,
                                           also_counts_toward, occurred_at, allocated_by_settlement)
    select c.usage_id, c.held_by[1], i.actual, c.currency, i.source, i.description,
           coalesce(i.metadata, '{}'::jsonb) || jsonb_build_object('requestId', c.request_id), c.request_id, c.held_by[2:], c.reserved_at, true
    from calls c join input i on i.reservation_id = c.reservation_id
    where i.actual > 0
    on conflict (budget_id, idempotency_key) do nothing
    returning u.id, u.amount, u.occurred_at
  ),
  charged as (
    select c.reservation_id, r.id as usage_id, r.amount, r.occurred_at from calls c join recorded r on r.id = c.usage_id
  ),
  allocated as (
    insert into budget_usage_allocations (budget_id, usage_id, amount, occurred_at)
    select e.budget_id, ch.usage_id, ch.amount, ch.occurred_at from charged ch join ended e on e.id = ch.reservation_id
  ),
  deltas as (
    select e.budget_id, e.period_start, sum(e.amount) as released, coalesce(sum(ch.amount), 0) as spent,
           count(ch.usage_id) as calls, max(ch.occurred_at) as last_usage_at
    from ended e left join charged ch on ch.reservation_id = e.id
    group by e.budget_id, e.period_start
  ),
  locked as (
    select c.budget_id from budget_status_cache c join deltas d on d.budget_id = c.budget_id and d.period_start = c.period_start
    order by c.budget_id for update of c
  ),
  moved as (
    update budget_status_cache c
    set reserved_amount = greatest(c.reserved_amount - d.released, 0), current_amount = c.current_amount + d.spent,
        usage_count = c.usage_count + d.calls, last_usage_at = greatest(c.last_usage_at, d.last_usage_at),
        updated_at = case when d.calls > 0 then now() else c.updated_at end
    from deltas d
    -- the scalar subquery runs first, once: every row is locked, in order, before any is written
    where (select count(*) from locked) >= 0 and c.budget_id = d.budget_id and c.period_start = d.period_start
  )
  select c.reservation_id, ch.usage_id, budget_definitions_version() from calls c left join charged ch on ch.reservation_id = c.reservation_id;
$$;
alter function budget_settle_batch(uuid[], numeric[], text[], text[], jsonb[]) set lock_timeout = '5s';

-- The sweeper, as in 003, settling through the one batch settlement: every expired hold is counted as
-- spent at its full amount (a call's estimate; a lease's unused slice and all), never released.
create or replace function budget_sweep_expired(p_limit integer) returns integer language plpgsql as $$
declare
  ids uuid[];
  amounts numeric[];
begin
  select array_agg(x.id), array_agg(x.amount) into ids, amounts
  from (
    select r.id, max(r.amount) as amount
    from (select r.id, r.amount from budget_reservations r where r.expires_at < now() order by r.id limit p_limit for update skip locked) r
    group by r.id
  ) x;
  if ids is null then return 0; end if;
  perform budget_settle_batch(ids, amounts, array_fill('expired-reservation'::text, array[array_length(ids, 1)]),
    array_fill('The gateway did not settle this call before its reservation expired; counted at its estimate'::text, array[array_length(ids, 1)]),
    array_fill(jsonb_build_object('outcome', 'unknown'), array[array_length(ids, 1)]));
  return array_length(ids, 1);
end $$;

-- Settles calls admitted from leases, in one transaction: records each charged call once (at its
-- admission, inside the lease's windows, on the most specific budget of the lease, allocated to every
-- budget of the lease), and moves the money from each lease to the window rows' settled spend. A
-- lease drawn down to nothing is gone; its process takes a new one when it needs to. Commits
-- asynchronously, as budget_settle_batch does.
create function budget_settle_leased(
  p_lease_ids uuid[], p_request_ids text[], p_actuals numeric[], p_sources text[], p_descriptions text[],
  p_metadata jsonb[], p_occurred_at timestamptz[], p_ttl interval
) returns bigint language sql as $$
  select set_config('synchronous_commit', 'off', true);
  with input as (
    select * from unnest(p_lease_ids, p_request_ids, p_actuals, p_sources, p_descriptions, p_metadata, p_occurred_at)
      as i(lease_id, request_id, actual, source, description, metadata, occurred_at)
    where i.actual > 0
  ),
  leases as (
    select r.id, r.budget_id, r.period_start, r.amount, r.scope_matched, r.scope_rank, r.currency
    from budget_reservations r where r.id in (select lease_id from input)
    for update
  ),
  calls as (
    select i.*, gen_random_uuid() as usage_id, min(l.currency) as currency,
           coalesce(array_agg(l.budget_id order by l.scope_rank, l.budget_id) filter (where l.scope_matched),
                    array_agg(l.budget_id order by l.scope_rank, l.budget_id)) as scope_budgets
    from input i join leases l on l.id = i.lease_id
    group by i.lease_id, i.request_id, i.actual, i.source, i.description, i.metadata, i.occurred_at
  ),
  recorded as (
    insert into budget_usage_records as u (id, budget_id, amount, currency, source, description, metadata, idempotency_key,
                                           also_counts_toward, occurred_at, allocated_by_settlement)
    select c.usage_id, c.scope_budgets[1], c.actual, c.currency, c.source, c.description,
           c.metadata || jsonb_build_object('requestId', c.request_id), c.request_id, c.scope_budgets[2:], c.occurred_at, true
    from calls c where c.scope_budgets is not null
    on conflict (budget_id, idempotency_key) do nothing
    returning u.id, u.amount, u.occurred_at
  ),
  charged as (
    select c.lease_id, r.id as usage_id, r.amount, r.occurred_at from calls c join recorded r on r.id = c.usage_id
  ),
  allocated as (
    insert into budget_usage_allocations (budget_id, usage_id, amount, occurred_at)
    select l.budget_id, ch.usage_id, ch.amount, ch.occurred_at from charged ch join leases l on l.id = ch.lease_id
  ),
  spent as (
    select ch.lease_id, sum(ch.amount) as total, count(*) as calls, max(ch.occurred_at) as last_usage_at from charged ch group by ch.lease_id
  ),
  deltas as (
    select l.budget_id, l.period_start, sum(s.total) as spent, sum(least(s.total, l.amount)) as released,
           sum(s.calls) as calls, max(s.last_usage_at) as last_usage_at
    from spent s join leases l on l.id = s.lease_id group by l.budget_id, l.period_start
  ),
  locked as (
    select c.budget_id from budget_status_cache c join deltas d on d.budget_id = c.budget_id and d.period_start = c.period_start
    order by c.budget_id for update of c
  ),
  moved as (
    update budget_status_cache c
    set current_amount = c.current_amount + d.spent, reserved_amount = greatest(c.reserved_amount - d.released, 0),
        usage_count = c.usage_count + d.calls, last_usage_at = greatest(c.last_usage_at, d.last_usage_at), updated_at = now()
    from deltas d
    where (select count(*) from locked) >= 0 and c.budget_id = d.budget_id and c.period_start = d.period_start
  ),
  -- A lease drawn down to nothing is gone (its process takes a new one when it needs to).
  drawn as (
    update budget_reservations r set amount = r.amount - s.total, expires_at = now() + p_ttl
    from spent s where r.id = s.lease_id and r.amount > s.total
  ),
  emptied as (
    delete from budget_reservations r using spent s where r.id = s.lease_id and r.amount <= s.total
  )
  select budget_definitions_version();
$$;
alter function budget_settle_leased(uuid[], text[], numeric[], text[], text[], jsonb[], timestamptz[], interval) set lock_timeout = '5s';

-- The per-call reserve and settle of 003 are replaced by the batches above.
drop function budget_reserve(uuid, text[], text[], text, numeric, interval, text);
drop function budget_settle(uuid, numeric, text, text, jsonb);
