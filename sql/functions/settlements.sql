-- Settlements: a gated call's hold (or a lease's slice) becomes recorded spend, in batches.
--
-- THE LOCK ORDER. Every statement that locks several reservation or window rows takes them in this
-- order, and each function relies on it:
--   1. reservation rows (budget_reservations), by (id, budget_id);
--   2. window rows (budget_status_cache), by (budget_id, period_start).
-- An unordered `for update` locks rows in whatever order its plan reads them (an index scan by key, a
-- sequential scan by where the row's latest version lies), so two statements on the same lease could
-- take its rows in opposite orders and deadlock: PostgreSQL then killed a lease's give-back, and its
-- unused slice stayed held until it was swept as spend. The settlements below, the leases
-- (leases.sql), the sweeper (sweeper.sql) and a window change (window-changes.sql) take both kinds;
-- budget_hold_batch (holds.sql), the usage trigger and the batch collector (usage-recording.sql) and
-- budget_alerts_follow_definition (alerts.sql) lock window rows only, by (budget_id, period_start); the
-- rate-limit functions (rate-limits.sql) lock bucket rows only, by budget id.
--
-- Both settlements commit asynchronously, and wait for their locks no longer than 5 s (lock_timeout):
-- the settlement queue (lib/gate/settlements.ts) retries a batch that timed out.

-- Ends reservations in one transaction (group commit: the settlement queue sends what gathered while the
-- previous batch committed, and the sweeper sends what expired). A charged call is recorded once, on the
-- most specific budget that held it (a scope's own budget, else the nearest ancestor that held it), and
-- allocated to exactly the budgets that held it: a budget moved under another parent mid-call cannot
-- charge the new parent what the old one held. Each budget is charged in its currency at its hold's
-- rate, rounded up. Each allocation is dated at the reservation's instant, inside the window whose row
-- it is charged to (a window change may have carried the reservation to the window of now,
-- window-changes.sql). Each window row's money moves from reserved to settled. Returns each reservation
-- found with its usage record (null: nothing recorded); a reservation already ended (settled, or swept
-- after expiry) is absent.
create or replace function budget_settle_batch(p_ids uuid[], p_actuals numeric[], p_sources text[], p_descriptions text[], p_metadata jsonb[])
returns table (reservation_id uuid, usage_id uuid, definitions_version bigint) language sql set lock_timeout = '5s' as $$
  -- Asynchronous commit: the batch's locks go at commit, not once the WAL is on disk. A PostgreSQL
  -- crash can lose the last batches whole; their reservations come back and are swept at their
  -- estimate, so nothing goes uncounted. (set_config with is_local lasts to the end of the transaction.)
  select set_config('synchronous_commit', 'off', true);
  -- the lock order: reservation rows by (id, budget_id) first, then the window rows by (budget_id,
  -- period_start); each a statement of its own, run to the end before the next (the charges below are
  -- bounded by the spend the window rows hold, so it is read once they are locked)
  select 1 from budget_reservations r where r.id = any (p_ids) order by r.id, r.budget_id for update;
  select 1 from budget_status_cache c join budget_reservations r on r.budget_id = c.budget_id and r.period_start = c.period_start
  where r.id = any (p_ids) order by c.budget_id, c.period_start for update of c;
  with input as (
    select * from unnest(p_ids, p_actuals, p_sources, p_descriptions, p_metadata) as i(reservation_id, actual, source, description, metadata)
  ),
  ended as (
    delete from budget_reservations r using input i where r.id = i.reservation_id
    returning r.id, r.budget_id, r.period_start, r.amount, r.scope_matched, r.scope_rank, r.currency, r.request_id, r.created_at, r.exchange_rate
  ),
  -- each row's window as its cache row has it: the allocation is dated inside it
  windowed as (
    select e.*, c.period_end,
           greatest(e.period_start, least(e.created_at, c.period_end - interval '1 microsecond')) as dated_at
    from ended e join budget_status_cache c on c.budget_id = e.budget_id and c.period_start = e.period_start
  ),
  -- What each budget is charged: the cost in its currency, at the rate its hold was taken at, rounded up
  -- (as budget_convert does), and no more than its window can still store (money is below 10^18): a soft
  -- budget near 10^18, or a call billed far past its estimate, must not fail the statement, which
  -- settles (or sweeps) other calls too. What a budget could not take is kept on the usage record
  -- (metadata.unrecordedPastLimit, by budget). Calls of one window take what is left in id order.
  priced as (
    select x.id as call_id, x.budget_id, x.cost,
           greatest(least(x.cost, 999999999999999999.9999999999 - x.current_amount
                                  - coalesce(sum(x.cost) over (partition by x.budget_id, x.period_start order by x.id
                                                               rows between unbounded preceding and 1 preceding), 0)), 0) as charged
    from (select w.id, w.budget_id, w.period_start, c.current_amount,
                 ceil(least(i.actual, 999999999999999999.9999999999) * w.exchange_rate * 10000000000) / 10000000000 as cost
          from windowed w join input i on i.reservation_id = w.id
          join budget_status_cache c on c.budget_id = w.budget_id and c.period_start = w.period_start
          where i.actual > 0) x
  ),
  unrecorded as (
    select p.call_id, jsonb_object_agg(p.budget_id::text, round(p.cost - p.charged, 10)::text) as by_budget
    from priced p where p.cost > p.charged group by p.call_id
  ),
  calls as (
    select e.id as reservation_id, gen_random_uuid() as usage_id, min(e.currency) as currency, min(e.request_id) as request_id,
           coalesce((array_agg(e.dated_at order by e.scope_rank, e.budget_id) filter (where e.scope_matched))[1],
                    (array_agg(e.dated_at order by e.scope_rank, e.budget_id))[1]) as reserved_at,
           coalesce(array_agg(e.budget_id order by e.scope_rank, e.budget_id) filter (where e.scope_matched),
                    array_agg(e.budget_id order by e.scope_rank, e.budget_id)) as held_by
    from windowed e group by e.id
  ),
  recorded as (
    insert into budget_usage_records as u (id, budget_id, amount, currency, source, description, metadata, idempotency_key,
                                           also_counts_toward, occurred_at, allocated_by_settlement)
    select c.usage_id, c.held_by[1], least(i.actual, 999999999999999999.9999999999), c.currency, i.source, i.description,
           coalesce(i.metadata, '{}'::jsonb) || jsonb_build_object('requestId', c.request_id)
             || case when u.by_budget is not null then jsonb_build_object('unrecordedPastLimit', u.by_budget) else '{}'::jsonb end,
           c.request_id, c.held_by[2:], c.reserved_at, true
    from calls c join input i on i.reservation_id = c.reservation_id
    left join unrecorded u on u.call_id = c.reservation_id
    where i.actual > 0
    on conflict (budget_id, idempotency_key) do nothing
    returning u.id, u.amount
  ),
  charged as (
    select c.reservation_id, r.id as usage_id, r.amount from calls c join recorded r on r.id = c.usage_id
  ),
  converted as (
    select e.budget_id, e.period_start, e.amount as held, ch.usage_id, e.dated_at as occurred_at, e.exchange_rate,
           p.charged as amount
    from windowed e left join charged ch on ch.reservation_id = e.id
    left join priced p on ch.usage_id is not null and p.call_id = e.id and p.budget_id = e.budget_id
  ),
  allocated as (
    insert into budget_usage_allocations (budget_id, usage_id, amount, occurred_at, exchange_rate)
    select v.budget_id, v.usage_id, v.amount, v.occurred_at, v.exchange_rate from converted v where v.usage_id is not null
  ),
  deltas as (
    select v.budget_id, v.period_start, sum(v.held) as released, coalesce(sum(v.amount), 0) as spent,
           count(v.usage_id) as calls, max(v.occurred_at) filter (where v.usage_id is not null) as last_usage_at
    from converted v
    group by v.budget_id, v.period_start
  ),
  moved as (
    update budget_status_cache c
    set reserved_amount = greatest(c.reserved_amount - d.released, 0), current_amount = c.current_amount + d.spent,
        usage_count = c.usage_count + d.calls, last_usage_at = greatest(c.last_usage_at, d.last_usage_at),
        updated_at = case when d.calls > 0 then now() else c.updated_at end
    from deltas d
    where c.budget_id = d.budget_id and c.period_start = d.period_start
  )
  select c.reservation_id, ch.usage_id, budget_definitions_version() from calls c left join charged ch on ch.reservation_id = c.reservation_id;
$$;

-- Settles calls admitted from leases, in one transaction: every call whose lease is there is recorded
-- once, whatever it cost, at its admission clamped into each budget's window as the lease's window row
-- has it, on the most specific budget of the lease and allocated to every budget of the lease; its money
-- moves from the lease (down to 0 at most) to the window's settled spend. The lease's rows stay
-- (leases.sql). Returns each call: its usage record (null: nothing recorded), and whether its lease was
-- found (false: the lease expired and was swept, counting the call at its estimate, before this
-- settlement). Leases are taken only on lines in the gate's currency, so no call here is converted.
create or replace function budget_settle_leased(
  p_lease_ids uuid[], p_request_ids text[], p_actuals numeric[], p_sources text[], p_descriptions text[],
  p_metadata jsonb[], p_occurred_at timestamptz[], p_ttl interval
) returns table (request_id text, usage_id uuid, lease_found boolean, definitions_version bigint)
language sql set lock_timeout = '5s' as $$
  select set_config('synchronous_commit', 'off', true);
  -- the lock order: the leases' rows by (id, budget_id), then their window rows by (budget_id, period_start);
  -- each a statement of its own, run to the end before the next
  select 1 from budget_reservations r where r.id = any (p_lease_ids) order by r.id, r.budget_id for update;
  select 1 from budget_status_cache c join budget_reservations r on r.budget_id = c.budget_id and r.period_start = c.period_start
  where r.id = any (p_lease_ids) order by c.budget_id, c.period_start for update of c;
  with input as (
    select * from unnest(p_lease_ids, p_request_ids, p_actuals, p_sources, p_descriptions, p_metadata, p_occurred_at)
      as i(lease_id, request_id, actual, source, description, metadata, occurred_at)
    where i.actual > 0
  ),
  leases as (
    select r.id, r.budget_id, r.period_start, r.amount, r.scope_matched, r.scope_rank, r.currency, c.period_end, c.current_amount
    from budget_reservations r join budget_status_cache c on c.budget_id = r.budget_id and c.period_start = r.period_start
    where r.id in (select lease_id from input)
  ),
  calls as (
    select i.lease_id, i.request_id, i.actual, i.source, i.description, i.metadata, gen_random_uuid() as usage_id, min(l.currency) as currency,
           coalesce(array_agg(l.budget_id order by l.scope_rank, l.budget_id) filter (where l.scope_matched),
                    array_agg(l.budget_id order by l.scope_rank, l.budget_id)) as scope_budgets,
           coalesce((array_agg(greatest(l.period_start, least(i.occurred_at, l.period_end - interval '1 microsecond')) order by l.scope_rank, l.budget_id)
                       filter (where l.scope_matched))[1],
                    (array_agg(greatest(l.period_start, least(i.occurred_at, l.period_end - interval '1 microsecond')) order by l.scope_rank, l.budget_id))[1])
             as occurred_at,
           i.occurred_at as admitted_at
    from input i join leases l on l.id = i.lease_id
    group by i.lease_id, i.request_id, i.actual, i.source, i.description, i.metadata, i.occurred_at
  ),
  -- What each budget is charged: no more than its window can still store, as budget_settle_batch does
  -- (an over-billed call on a soft budget near 10^18 must not fail the others' settlements); calls of
  -- one window take what is left in the order they were admitted.
  priced as (
    select x.usage_id, x.budget_id, x.cost,
           greatest(least(x.cost, 999999999999999999.9999999999 - x.current_amount
                                  - coalesce(sum(x.cost) over (partition by x.budget_id, x.period_start order by x.admitted_at, x.request_id, x.usage_id
                                                               rows between unbounded preceding and 1 preceding), 0)), 0) as charged
    from (select c.usage_id, c.admitted_at, c.request_id, l.budget_id, l.period_start, l.current_amount,
                 least(c.actual, 999999999999999999.9999999999) as cost
          from calls c join leases l on l.id = c.lease_id) x
  ),
  unrecorded as (
    select p.usage_id, jsonb_object_agg(p.budget_id::text, round(p.cost - p.charged, 10)::text) as by_budget
    from priced p where p.cost > p.charged group by p.usage_id
  ),
  recorded as (
    insert into budget_usage_records as u (id, budget_id, amount, currency, source, description, metadata, idempotency_key,
                                           also_counts_toward, occurred_at, allocated_by_settlement)
    select c.usage_id, c.scope_budgets[1], least(c.actual, 999999999999999999.9999999999), c.currency, c.source, c.description,
           c.metadata || jsonb_build_object('requestId', c.request_id)
             || case when x.by_budget is not null then jsonb_build_object('unrecordedPastLimit', x.by_budget) else '{}'::jsonb end,
           c.request_id, c.scope_budgets[2:], c.occurred_at, true
    from calls c left join unrecorded x on x.usage_id = c.usage_id
    on conflict (budget_id, idempotency_key) do nothing
    returning u.id, u.amount
  ),
  charged as (
    select c.lease_id, c.admitted_at, r.id as usage_id, r.amount from calls c join recorded r on r.id = c.usage_id
  ),
  -- each budget's allocation dated inside the window its lease row is charged to
  allocations as (
    select l.budget_id, l.period_start, l.amount as held, ch.lease_id, ch.usage_id, p.charged as amount,
           greatest(l.period_start, least(ch.admitted_at, l.period_end - interval '1 microsecond')) as occurred_at
    from charged ch join leases l on l.id = ch.lease_id
    join priced p on p.usage_id = ch.usage_id and p.budget_id = l.budget_id
  ),
  allocated as (
    insert into budget_usage_allocations (budget_id, usage_id, amount, occurred_at)
    select a.budget_id, a.usage_id, a.amount, a.occurred_at from allocations a
  ),
  -- per lease row: what its calls cost; the row gives up what it holds, at most
  spent as (
    select a.lease_id, a.budget_id, a.period_start, min(a.held) as held, sum(a.amount) as total, count(*) as calls,
           max(a.occurred_at) as last_usage_at
    from allocations a group by a.lease_id, a.budget_id, a.period_start
  ),
  deltas as (
    select s.budget_id, s.period_start, sum(s.total) as spent, sum(least(s.total, s.held)) as released,
           sum(s.calls) as calls, max(s.last_usage_at) as last_usage_at
    from spent s group by s.budget_id, s.period_start
  ),
  moved as (
    update budget_status_cache c
    set current_amount = c.current_amount + d.spent, reserved_amount = greatest(c.reserved_amount - d.released, 0),
        usage_count = c.usage_count + d.calls, last_usage_at = greatest(c.last_usage_at, d.last_usage_at), updated_at = now()
    from deltas d
    where c.budget_id = d.budget_id and c.period_start = d.period_start
  ),
  -- No condition on the amount here: such a condition is read from the statement's snapshot, so a lease
  -- that a concurrent return drew down while this statement waited for its lock would not be drawn (while
  -- its window row was). The update re-reads the locked row.
  drawn as (
    update budget_reservations r set amount = greatest(r.amount - s.total, 0), expires_at = now() + p_ttl
    from spent s where r.id = s.lease_id and r.budget_id = s.budget_id
  )
  select i.request_id, ch.usage_id, c.lease_id is not null, budget_definitions_version()
  from unnest(p_lease_ids, p_request_ids) as i(lease_id, request_id)
  left join calls c on c.lease_id = i.lease_id and c.request_id = i.request_id
  left join charged ch on ch.lease_id = c.lease_id and ch.usage_id = c.usage_id;
$$;
