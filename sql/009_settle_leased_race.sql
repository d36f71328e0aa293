-- A fix to budget_settle_leased (006), found by review: when a lease's return and the settlement of
-- one of its calls met, the settlement could release the call's money from the window row without
-- drawing it from the lease row (the lease's conditional update and delete read the amount from the
-- statement's snapshot, from before the return). The window row then said less was held than the
-- lease did. Now the lease row is drawn unconditionally and emptied leases go in a statement of their own.
create or replace function budget_settle_leased(
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
  -- No condition on the amount here: such a condition is read from the statement's snapshot, so a lease
  -- that a concurrent return drew down while this statement waited for its lock would be neither drawn
  -- nor emptied (while its window row was). The update re-reads the locked row.
  drawn as (
    update budget_reservations r set amount = greatest(r.amount - s.total, 0), expires_at = now() + p_ttl
    from spent s where r.id = s.lease_id
  )
  select 1;
  -- A lease drawn down to nothing is gone (its process takes a new one when it needs to): a statement
  -- of its own, which sees the update above.
  delete from budget_reservations r where r.id = any (p_lease_ids) and r.amount = 0;
  select budget_definitions_version();
$$;
