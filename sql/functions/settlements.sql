-- Settlements: a gated call's hold (or a lease's slice) becomes recorded spend, in batches.
--
-- The lock order (locks.sql): a settlement locks its reservation rows, then budget_record_spend (spend.sql)
-- their window rows.
--
-- Both settlements commit asynchronously, and wait for their locks no longer than 5 s (lock_timeout):
-- the settlement queue (lib/gate/settlements.ts) retries a batch that timed out.

-- Ends reservations in one transaction (group commit: the settlement queue sends what gathered while the
-- previous batch committed, and the sweeper sends what expired). A charged call is recorded once, on the
-- most specific budget that held it (a scope's own budget, else the nearest ancestor that held it), and
-- allocated to exactly the budgets that held it: a budget moved under another parent mid-call cannot
-- charge the new parent what the old one held. The spend (allocations at each hold's rate, window rows,
-- crossings) is budget_record_spend's (spend.sql), charged to the window row the hold is in and dated inside
-- it (a window change may have carried the reservation to the window of now, window-changes.sql); what a
-- window could not store (money is below 10^18: a soft budget near 10^18, or a call billed far past its
-- estimate, must not fail the statement, which settles or sweeps other calls too) is kept on the usage
-- record (metadata.unrecordedPastLimit, by budget), calls of one window taking what is left in id order.
-- This function's own part: each window row gives up what its reservations held, handed to
-- budget_record_spend so the row is written once with the spend. Returns each
-- reservation found with its usage record (null: nothing recorded); a reservation already ended (settled,
-- or swept after expiry) is absent.
-- p_usage_ids: each call's usage record id, made by the process so that a settlement sent again after its
-- reply was cut can tell its own record from another's under the same request id (lib/gate/settlements.ts);
-- null (the sweeper's) or a null element: made here.
create or replace function budget_settle_batch(p_ids uuid[], p_actuals numeric[], p_sources text[], p_descriptions text[], p_metadata jsonb[],
                                               p_usage_ids uuid[] default null)
returns table (reservation_id uuid, usage_id uuid, definitions_version bigint)
language plpgsql set lock_timeout = '5s' as $$
#variable_conflict use_column
declare
  -- what to record, one element per (charged call, budget that held it)
  s_ords bigint[];
  s_usages uuid[];
  s_budgets uuid[];
  s_amounts numeric[];
  s_rates numeric[];
  s_at timestamptz[];
  s_starts timestamptz[];
  s_ends timestamptz[];
  -- what to release, one element per window row
  r_budgets uuid[];
  r_starts timestamptz[];
  r_held numeric[];
  -- every reservation found, and its usage record (null: nothing recorded)
  found_ids uuid[];
  found_usages uuid[];
  -- what a window could not store, by usage record and budget
  unrecorded jsonb;
  -- the charged rows of holds a shadow budget would have refused (as_if_excluded): usage record, budget, window
  x_usages uuid[];
  x_budgets uuid[];
  x_starts timestamptz[];
begin
  -- Asynchronous commit: the batch's locks go at commit, not once the WAL is on disk. A PostgreSQL
  -- crash can lose the last batches whole; their reservations come back and are swept at their
  -- estimate, so nothing goes uncounted. (set_config with is_local lasts to the end of the transaction.)
  perform set_config('synchronous_commit', 'off', true);
  -- the lock order (locks.sql): the reservation rows here, then the window rows in budget_record_spend,
  -- which reads what a window can still store once they are locked
  perform budget_lock_reservations(p_ids);

  with input as (
    select * from unnest(p_ids, p_actuals, p_sources, p_descriptions, p_metadata, p_usage_ids) as i(reservation_id, actual, source, description, metadata, usage_id)
  ),
  ended as (
    delete from budget_reservations r using input i where r.id = i.reservation_id
    returning r.id, r.budget_id, r.root_id, r.period_start, r.amount, r.scope_matched, r.scope_rank, r.currency, r.request_id, r.created_at,
              r.exchange_rate, r.as_if_excluded
  ),
  -- each row's window as its cache row has it: the allocation is dated inside it
  windowed as (
    select e.*, c.period_end,
           greatest(e.period_start, least(e.created_at, c.period_end - interval '1 microsecond')) as dated_at
    from ended e join budget_status_cache c on c.root_id = e.root_id and c.budget_id = e.budget_id and c.period_start = e.period_start
  ),
  calls as (
    select e.id as reservation_id,
           coalesce((select i.usage_id from input i where i.reservation_id = e.id and i.usage_id is not null limit 1), gen_random_uuid()) as usage_id,
           min(e.currency) as currency, min(e.request_id) as request_id,
           coalesce((array_agg(e.dated_at order by e.scope_rank, e.budget_id) filter (where e.scope_matched))[1],
                    (array_agg(e.dated_at order by e.scope_rank, e.budget_id))[1]) as reserved_at,
           coalesce(array_agg(e.budget_id order by e.scope_rank, e.budget_id) filter (where e.scope_matched),
                    array_agg(e.budget_id order by e.scope_rank, e.budget_id)) as held_by,
           -- the root of held_by[1], the budget the call is recorded on
           coalesce((array_agg(e.root_id order by e.scope_rank, e.budget_id) filter (where e.scope_matched))[1],
                    (array_agg(e.root_id order by e.scope_rank, e.budget_id))[1]) as held_root
    from windowed e group by e.id
  ),
  recorded as (
    insert into budget_usage_records as u (id, budget_id, root_id, amount, currency, source, description, metadata, idempotency_key,
                                           also_counts_toward, occurred_at, allocated_by_settlement)
    select c.usage_id, c.held_by[1], c.held_root, least(i.actual, budget_money_max()), c.currency, i.source, i.description,
           coalesce(i.metadata, '{}'::jsonb) || jsonb_build_object('requestId', c.request_id),
           c.request_id, c.held_by[2:], c.reserved_at, true
    from calls c join input i on i.reservation_id = c.reservation_id
    where i.actual > 0
    on conflict (budget_id, idempotency_key, root_id) do nothing
    returning u.id, u.amount
  ),
  charged as (
    select c.reservation_id, r.id as usage_id, r.amount from calls c join recorded r on r.id = c.usage_id
  ),
  -- calls of one window take what is left in reservation id order
  spend as (
    select dense_rank() over (order by w.id) as ord, ch.usage_id, w.budget_id, ch.amount, w.exchange_rate, w.dated_at, w.period_start, w.period_end
    from windowed w join charged ch on ch.reservation_id = w.id
  ),
  released as (
    select w.budget_id, w.period_start, sum(w.amount) as held from windowed w group by w.budget_id, w.period_start
  )
  select (select array_agg(x.ord order by x.ord, x.budget_id) from spend x), (select array_agg(x.usage_id order by x.ord, x.budget_id) from spend x),
         (select array_agg(x.budget_id order by x.ord, x.budget_id) from spend x), (select array_agg(x.amount order by x.ord, x.budget_id) from spend x),
         (select array_agg(x.exchange_rate order by x.ord, x.budget_id) from spend x), (select array_agg(x.dated_at order by x.ord, x.budget_id) from spend x),
         (select array_agg(x.period_start order by x.ord, x.budget_id) from spend x), (select array_agg(x.period_end order by x.ord, x.budget_id) from spend x),
         (select array_agg(x.budget_id order by x.budget_id, x.period_start) from released x),
         (select array_agg(x.period_start order by x.budget_id, x.period_start) from released x),
         (select array_agg(x.held order by x.budget_id, x.period_start) from released x),
         (select array_agg(c.reservation_id order by c.reservation_id) from calls c),
         (select array_agg(ch.usage_id order by c.reservation_id) from calls c left join charged ch on ch.reservation_id = c.reservation_id),
         (select array_agg(ch.usage_id order by w.budget_id, w.period_start) from windowed w join charged ch on ch.reservation_id = w.id where w.as_if_excluded),
         (select array_agg(w.budget_id order by w.budget_id, w.period_start) from windowed w join charged ch on ch.reservation_id = w.id where w.as_if_excluded),
         (select array_agg(w.period_start order by w.budget_id, w.period_start) from windowed w join charged ch on ch.reservation_id = w.id where w.as_if_excluded)
  into s_ords, s_usages, s_budgets, s_amounts, s_rates, s_at, s_starts, s_ends, r_budgets, r_starts, r_held, found_ids, found_usages,
       x_usages, x_budgets, x_starts;

  -- The spend and the release of what was held, each window row written once (budget_record_spend); what a
  -- window could not store is kept on the usage record.
  select jsonb_object_agg(x.usage_id::text, x.by_budget) into unrecorded
  from (select s.usage_id, jsonb_object_agg(s.budget_id::text, round(s.cost - s.charged, 10)::text) as by_budget
        from budget_record_spend(s_ords, s_usages, s_budgets, s_amounts, s_rates, s_at, s_starts, s_ends, true, r_budgets, r_starts, r_held) s
        where s.cost > s.charged group by s.usage_id) x;
  if unrecorded is not null then
    update budget_usage_records u set metadata = u.metadata || jsonb_build_object('unrecordedPastLimit', unrecorded -> u.id::text)
    where u.id in (select k::uuid from jsonb_object_keys(unrecorded) k);
  end if;

  -- A shadow budget's as-if ledger leaves out what it would have refused: the allocations just recorded for
  -- those holds go to its excluded_amount (its window rows are locked by budget_record_spend: the lock order, 008).
  -- Only while the budget is still shadow: one switched away from it excludes nothing (its change also unmarks
  -- its live holds, budget_definitions_left_shadow in shadow.sql; this covers a switch that commits while
  -- this settlement runs, after it read its holds).
  if x_usages is not null then
    insert into budget_shadow_windows as s (budget_id, period_start, excluded_amount)
    select x.b, x.s, sum(a.amount)
    from unnest(x_usages, x_budgets, x_starts) as x(u, b, s)
    join budget_usage_allocations a on a.usage_id = x.u and a.budget_id = x.b
    join budget_definitions d on d.id = x.b and d.enforcement = 'shadow'
    group by x.b, x.s
    order by x.b, x.s
    on conflict (budget_id, period_start, root_id) do update set excluded_amount = s.excluded_amount + excluded.excluded_amount;
  end if;

  return query select f.id, f.usage_id, budget_definitions_version() from unnest(found_ids, found_usages) as f(id, usage_id);
end $$;

-- Settles calls admitted from leases, in one transaction: every call whose lease is there is recorded
-- once, whatever it cost, at its admission clamped into each budget's window as the lease's window row
-- has it, on the most specific budget of the lease and allocated to every budget of the lease, converted at
-- each lease row's rate (budget_record_spend, spend.sql, as budget_settle_batch; calls of one window take
-- what is left in the order they were admitted). This function's own part: each lease row gives up what
-- its calls cost (down to 0 at most), and its window row's reserved amount with it (handed to
-- budget_record_spend, so the row is written once with the spend). The lease's rows
-- stay (leases.sql). Returns each call: its usage record (null: nothing recorded), and whether its lease
-- was found (false: the lease expired and was swept, counting the call at its estimate, before this
-- settlement). p_usage_ids: each call's usage record id, as for budget_settle_batch.
create or replace function budget_settle_leased(
  p_lease_ids uuid[], p_request_ids text[], p_actuals numeric[], p_sources text[], p_descriptions text[],
  p_metadata jsonb[], p_occurred_at timestamptz[], p_ttl interval, p_usage_ids uuid[] default null
) returns table (request_id text, usage_id uuid, lease_found boolean, definitions_version bigint)
language plpgsql set lock_timeout = '5s' as $$
#variable_conflict use_column
declare
  s_ords bigint[];
  s_usages uuid[];
  s_budgets uuid[];
  s_amounts numeric[];
  s_rates numeric[];
  s_at timestamptz[];
  s_starts timestamptz[];
  s_ends timestamptz[];
  s_leases uuid[];
  -- what each window row releases, reckoned from the calls' costs (what is charged, unless a window is full)
  r_budgets uuid[];
  r_starts timestamptz[];
  r_released numeric[];
  -- per lease row: what it held, and what its calls cost
  k_leases uuid[];
  k_budgets uuid[];
  k_starts timestamptz[];
  k_held numeric[];
  k_cost numeric[];
  short_usages uuid[];
  short_budgets uuid[];
  short_costs numeric[];
  short_charged numeric[];
  found_leases uuid[];
  found_requests text[];
  found_usages uuid[];
begin
  perform set_config('synchronous_commit', 'off', true);
  -- the lock order (locks.sql): the leases' rows here, then their window rows in budget_record_spend
  perform budget_lock_reservations(p_lease_ids);

  with input as (
    select * from unnest(p_lease_ids, p_request_ids, p_actuals, p_sources, p_descriptions, p_metadata, p_occurred_at, p_usage_ids)
      as i(lease_id, request_id, actual, source, description, metadata, occurred_at, usage_id)
    where i.actual > 0
  ),
  leases as (
    select r.id, r.budget_id, r.root_id, r.period_start, r.amount, r.scope_matched, r.scope_rank, r.currency, r.exchange_rate, c.period_end
    from budget_reservations r join budget_status_cache c on c.root_id = r.root_id and c.budget_id = r.budget_id and c.period_start = r.period_start
    where r.id in (select lease_id from input)
  ),
  calls as (
    select i.lease_id, i.request_id, i.actual, i.source, i.description, i.metadata, coalesce(i.usage_id, gen_random_uuid()) as usage_id, min(l.currency) as currency,
           coalesce(array_agg(l.budget_id order by l.scope_rank, l.budget_id) filter (where l.scope_matched),
                    array_agg(l.budget_id order by l.scope_rank, l.budget_id)) as scope_budgets,
           -- the root of scope_budgets[1], the budget the call is recorded on
           coalesce((array_agg(l.root_id order by l.scope_rank, l.budget_id) filter (where l.scope_matched))[1],
                    (array_agg(l.root_id order by l.scope_rank, l.budget_id))[1]) as record_root,
           coalesce((array_agg(greatest(l.period_start, least(i.occurred_at, l.period_end - interval '1 microsecond')) order by l.scope_rank, l.budget_id)
                       filter (where l.scope_matched))[1],
                    (array_agg(greatest(l.period_start, least(i.occurred_at, l.period_end - interval '1 microsecond')) order by l.scope_rank, l.budget_id))[1])
             as occurred_at,
           i.occurred_at as admitted_at
    from input i join leases l on l.id = i.lease_id
    group by i.lease_id, i.request_id, i.actual, i.source, i.description, i.metadata, i.occurred_at, i.usage_id
  ),
  recorded as (
    insert into budget_usage_records as u (id, budget_id, root_id, amount, currency, source, description, metadata, idempotency_key,
                                           also_counts_toward, occurred_at, allocated_by_settlement)
    select c.usage_id, c.scope_budgets[1], c.record_root, least(c.actual, budget_money_max()), c.currency, c.source, c.description,
           c.metadata || jsonb_build_object('requestId', c.request_id),
           c.request_id, c.scope_budgets[2:], c.occurred_at, true
    from calls c
    on conflict (budget_id, idempotency_key, root_id) do nothing
    returning u.id, u.amount
  ),
  charged as (
    select c.lease_id, c.request_id, c.admitted_at, r.id as usage_id, r.amount from calls c join recorded r on r.id = c.usage_id
  ),
  -- each budget's allocation dated inside the window its lease row is charged to (budget_record_spend);
  -- calls of one window take what is left in the order they were admitted
  spend as (
    select dense_rank() over (order by ch.admitted_at, ch.request_id, ch.usage_id) as ord, ch.usage_id, l.budget_id, ch.amount, l.exchange_rate,
           ch.admitted_at, l.period_start, l.period_end, ch.lease_id
    from charged ch join leases l on l.id = ch.lease_id
  ),
  -- per lease row: what it holds and what its calls cost
  drawing as (
    select s.lease_id, s.budget_id, s.period_start, min(l.amount) as held, sum(budget_convert_unbounded(s.amount, s.exchange_rate)) as cost
    from spend s join leases l on l.id = s.lease_id and l.budget_id = s.budget_id
    group by s.lease_id, s.budget_id, s.period_start
  ),
  -- per window row: what its lease rows give up, each what its calls cost and what it holds at most
  released as (
    select x.budget_id, x.period_start, sum(least(x.cost, x.held)) as amount from drawing x group by x.budget_id, x.period_start
  )
  select (select array_agg(x.ord order by x.ord, x.budget_id) from spend x), (select array_agg(x.usage_id order by x.ord, x.budget_id) from spend x),
         (select array_agg(x.budget_id order by x.ord, x.budget_id) from spend x), (select array_agg(x.amount order by x.ord, x.budget_id) from spend x),
         (select array_agg(x.exchange_rate order by x.ord, x.budget_id) from spend x), (select array_agg(x.admitted_at order by x.ord, x.budget_id) from spend x),
         (select array_agg(x.period_start order by x.ord, x.budget_id) from spend x), (select array_agg(x.period_end order by x.ord, x.budget_id) from spend x),
         (select array_agg(x.lease_id order by x.ord, x.budget_id) from spend x),
         (select array_agg(x.budget_id) from released x), (select array_agg(x.period_start) from released x), (select array_agg(x.amount) from released x),
         (select array_agg(x.lease_id) from drawing x), (select array_agg(x.budget_id) from drawing x), (select array_agg(x.period_start) from drawing x),
         (select array_agg(x.held) from drawing x), (select array_agg(x.cost) from drawing x),
         (select array_agg(c.lease_id order by c.usage_id) from calls c), (select array_agg(c.request_id order by c.usage_id) from calls c),
         (select array_agg(ch.usage_id order by c.usage_id) from calls c left join charged ch on ch.usage_id = c.usage_id)
  into s_ords, s_usages, s_budgets, s_amounts, s_rates, s_at, s_starts, s_ends, s_leases, r_budgets, r_starts, r_released,
       k_leases, k_budgets, k_starts, k_held, k_cost, found_leases, found_requests, found_usages;

  -- The spend and the release, each window row written once (budget_record_spend); then, this function's own
  -- part, each lease row drawn down by what its calls were charged. No condition on the amount there: such
  -- a condition is read from the statement's snapshot, so a lease that a concurrent return drew down while
  -- this function waited for its lock would not be drawn (while its window row was). The update re-reads the
  -- locked row.
  with recorded as materialized (
    select s.usage_id, s.budget_id, s.cost, s.charged
    from budget_record_spend(s_ords, s_usages, s_budgets, s_amounts, s_rates, s_at, s_starts, s_ends, true, r_budgets, r_starts, r_released) s
  ),
  spent as (
    select l.lease_id, l.budget_id, sum(r.charged) as total
    from recorded r join unnest(s_usages, s_budgets, s_leases) as l(usage_id, budget_id, lease_id) on l.usage_id = r.usage_id and l.budget_id = r.budget_id
    group by l.lease_id, l.budget_id
  ),
  drawn as (
    update budget_reservations r set amount = greatest(r.amount - s.total, 0), expires_at = now() + p_ttl
    from spent s where r.id = s.lease_id and r.budget_id = s.budget_id
  )
  select array_agg(r.usage_id), array_agg(r.budget_id), array_agg(r.cost), array_agg(r.charged)
  into short_usages, short_budgets, short_costs, short_charged
  from recorded r where r.cost > r.charged;

  -- Rare: a window that could not store all of it (money is below 10^18). What it did not take is kept on the
  -- usage record, and its lease rows gave up only what was charged: the release reckoned from the costs is
  -- given back in part.
  if short_usages is not null then
    update budget_usage_records u set metadata = u.metadata || jsonb_build_object('unrecordedPastLimit', x.by_budget)
    from (select s.usage_id, jsonb_object_agg(s.budget_id::text, round(s.cost - s.charged, 10)::text) as by_budget
          from unnest(short_usages, short_budgets, short_costs, short_charged) as s(usage_id, budget_id, cost, charged)
          group by s.usage_id) x
    where u.id = x.usage_id;
    update budget_status_cache c set reserved_amount = c.reserved_amount + x.back
    from (select k.budget_id, k.period_start, sum(least(k.cost, k.held) - least(coalesce(ch.total, 0), k.held)) as back
          from unnest(k_leases, k_budgets, k_starts, k_held, k_cost) as k(lease_id, budget_id, period_start, held, cost)
          left join (select l.lease_id, l.budget_id, sum(a.amount) as total
                     from unnest(s_usages, s_budgets, s_leases) as l(usage_id, budget_id, lease_id)
                     join budget_usage_allocations a on a.usage_id = l.usage_id and a.budget_id = l.budget_id
                     group by l.lease_id, l.budget_id) ch on ch.lease_id = k.lease_id and ch.budget_id = k.budget_id
          group by k.budget_id, k.period_start) x
    where c.budget_id = x.budget_id and c.period_start = x.period_start and x.back > 0;
  end if;

  return query
    select i.request_id, f.usage_id, f.lease_id is not null, budget_definitions_version()
    from unnest(p_lease_ids, p_request_ids) as i(lease_id, request_id)
    left join unnest(found_leases, found_requests, found_usages) as f(lease_id, request_id, usage_id)
      on f.lease_id = i.lease_id and f.request_id = i.request_id;
end $$;
