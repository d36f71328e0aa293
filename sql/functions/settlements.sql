-- Settlements: a gated call's hold (or a lease's slice) becomes recorded spend, in batches.
--
-- The lock order (locks.sql): a settlement locks its reservation rows, then budget_record_spend (spend.sql)
-- their window rows.
--
-- Both settlements commit asynchronously, and wait for their locks no longer than 5 s (lock_timeout):
-- the settlement queue (lib/gate/settlements.ts) retries a batch that timed out.
--
-- Each reads or writes one tree's rows at a time, the trees of its reservations (budget_reservation_trees,
-- locks.sql: on Citus those p_roots names, which the process's lines know). On Citus a call runs on the node
-- of p_root's tree (sql/citus/delegate.sql), so a batch of one tree's reservations runs whole there; p_root
-- chooses the node only, and defaults to the nil root, never to null (delegate.sql says why).

-- A JSON array's elements as a jsonb[], in order: how the settlements' callers send each call's metadata (one
-- JSON text for the batch; a text[] of JSON texts would escape every quote for the array literal). A function,
-- not a subquery, in the call's arguments: Citus delegates no call whose arguments hold a subquery.
create or replace function budget_jsonb_elements(p_array jsonb) returns jsonb[]
language sql immutable parallel safe as $$
  select array(select e.value from jsonb_array_elements(p_array) with ordinality as e(value, position) order by e.position)
$$;


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
drop function if exists budget_settle_batch(uuid[], numeric[], text[], text[], jsonb[], uuid[]);
create or replace function budget_settle_batch(p_ids uuid[], p_actuals numeric[], p_sources text[], p_descriptions text[], p_metadata jsonb[],
                                               p_usage_ids uuid[] default null,
                                               p_roots uuid[] default null, p_root uuid default '00000000-0000-0000-0000-000000000000')
returns table (reservation_id uuid, usage_id uuid, definitions_version bigint)
language plpgsql set lock_timeout = '5s' as $$
#variable_conflict use_column
declare
  trees uuid[] := budget_reservation_trees(p_roots, p_ids);
  tree uuid;
  -- the reservation rows ended, one element each, with their window's end
  e_ids uuid[]; e_budgets uuid[]; e_roots uuid[]; e_starts timestamptz[]; e_amounts numeric[]; e_matched boolean[]; e_ranks integer[];
  e_currencies text[]; e_requests text[]; e_created timestamptz[]; e_rates numeric[]; e_excluded boolean[]; e_ends timestamptz[];
  -- each call: its reservation, usage record id, currency, request id, date, and the budget it is recorded on, with its root
  k_ids uuid[]; k_usages uuid[]; k_currencies text[]; k_requests text[]; k_at timestamptz[]; k_budgets uuid[]; k_roots uuid[];
  -- the usage records written (a request recorded before writes none): id and amount
  recorded_ids uuid[]; recorded_amounts numeric[];
  -- the usage records charged, and their trees
  u_ids uuid[]; u_roots uuid[];
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
  x_roots uuid[];
begin
  -- Asynchronous commit: the batch's locks go at commit, not once the WAL is on disk. A PostgreSQL
  -- crash can lose the last batches whole; their reservations come back and are swept at their
  -- estimate, so nothing goes uncounted. (set_config with is_local lasts to the end of the transaction.)
  perform set_config('synchronous_commit', 'off', true);
  -- the lock order (locks.sql): the reservation rows here, then the window rows in budget_record_spend,
  -- which reads what a window can still store once they are locked
  perform budget_lock_reservations(p_ids, null, trees);

  -- the reservations' rows ended, tree by tree, each with its window's end as its cache row has it (a row
  -- whose window has no cache row is ended, and records nothing)
  foreach tree in array trees loop
    with ended as (
      delete from budget_reservations r where r.root_id = tree and r.id = any (p_ids)
      returning r.id, r.budget_id, r.root_id, r.period_start, r.amount, r.scope_matched, r.scope_rank, r.currency, r.request_id, r.created_at,
                r.exchange_rate, r.as_if_excluded
    )
    select e_ids || array_agg(e.id), e_budgets || array_agg(e.budget_id), e_roots || array_agg(e.root_id), e_starts || array_agg(e.period_start),
           e_amounts || array_agg(e.amount), e_matched || array_agg(e.scope_matched), e_ranks || array_agg(e.scope_rank),
           e_currencies || array_agg(e.currency), e_requests || array_agg(e.request_id), e_created || array_agg(e.created_at),
           e_rates || array_agg(e.exchange_rate), e_excluded || array_agg(e.as_if_excluded), e_ends || array_agg(c.period_end)
    into e_ids, e_budgets, e_roots, e_starts, e_amounts, e_matched, e_ranks, e_currencies, e_requests, e_created, e_rates, e_excluded, e_ends
    from ended e join budget_status_cache c on c.root_id = tree and c.budget_id = e.budget_id and c.period_start = e.period_start;
  end loop;

  -- Each call (the rows of one reservation): the id of its usage record (the caller's, else made here), its
  -- currency and request id, when it is dated (inside the window of the budget it is recorded on), and that
  -- budget, the most specific that held it, with its root. Computed from the arrays alone, as is all that
  -- follows up to the writes: a query of a distributed table that read a CTE would have Citus ship the CTE's
  -- rows to other nodes.
  select array_agg(c.reservation_id order by c.reservation_id), array_agg(c.usage_id order by c.reservation_id),
         array_agg(c.currency order by c.reservation_id), array_agg(c.request_id order by c.reservation_id),
         array_agg(c.reserved_at order by c.reservation_id), array_agg(c.held_by[1] order by c.reservation_id),
         array_agg(c.held_root order by c.reservation_id)
  into k_ids, k_usages, k_currencies, k_requests, k_at, k_budgets, k_roots
  from (
    select e.id as reservation_id,
           coalesce((select i.usage_id from unnest(p_ids, p_usage_ids) as i(reservation_id, usage_id)
                     where i.reservation_id = e.id and i.usage_id is not null limit 1), gen_random_uuid()) as usage_id,
           min(e.currency) as currency, min(e.request_id) as request_id,
           coalesce((array_agg(e.dated_at order by e.scope_rank, e.budget_id) filter (where e.scope_matched))[1],
                    (array_agg(e.dated_at order by e.scope_rank, e.budget_id))[1]) as reserved_at,
           coalesce(array_agg(e.budget_id order by e.scope_rank, e.budget_id) filter (where e.scope_matched),
                    array_agg(e.budget_id order by e.scope_rank, e.budget_id)) as held_by,
           -- the root of held_by[1], the budget the call is recorded on
           coalesce((array_agg(e.root_id order by e.scope_rank, e.budget_id) filter (where e.scope_matched))[1],
                    (array_agg(e.root_id order by e.scope_rank, e.budget_id))[1]) as held_root
    from (select e.*, greatest(e.period_start, least(e.created_at, e.period_end - interval '1 microsecond')) as dated_at
          from unnest(e_ids, e_budgets, e_roots, e_starts, e_matched, e_ranks, e_currencies, e_requests, e_created, e_ends)
            as e(id, budget_id, root_id, period_start, scope_matched, scope_rank, currency, request_id, created_at, period_end)) e
    group by e.id
  ) c;

  -- each charged call's usage record (also counting toward the other budgets that held it), once per request
  with recorded as (
    insert into budget_usage_records as u (id, budget_id, root_id, amount, currency, source, description, metadata, idempotency_key,
                                           also_counts_toward, occurred_at, allocated_by_settlement)
    select k.usage_id, k.budget_id, k.root_id, least(i.actual, budget_money_max()), k.currency, i.source, i.description,
           coalesce(i.metadata, '{}'::jsonb) || jsonb_build_object('requestId', k.request_id), k.request_id,
           (select coalesce(array_agg(e.budget_id order by e.rank, e.budget_id) filter (where e.matched),
                            array_agg(e.budget_id order by e.rank, e.budget_id))
            from unnest(e_ids, e_budgets, e_matched, e_ranks) as e(id, budget_id, matched, rank) where e.id = k.id)[2:],
           k.at, true
    from unnest(k_ids, k_usages, k_currencies, k_requests, k_at, k_budgets, k_roots) as k(id, usage_id, currency, request_id, at, budget_id, root_id)
    join unnest(p_ids, p_actuals, p_sources, p_descriptions, p_metadata) as i(reservation_id, actual, source, description, metadata)
      on i.reservation_id = k.id
    where i.actual > 0
    on conflict (budget_id, idempotency_key, root_id) do nothing
    returning u.id, u.amount
  )
  select array_agg(r.id), array_agg(r.amount) into recorded_ids, recorded_amounts from recorded r;

  with windowed as (
    select e.*, greatest(e.period_start, least(e.created_at, e.period_end - interval '1 microsecond')) as dated_at
    from unnest(e_ids, e_budgets, e_roots, e_starts, e_amounts, e_created, e_rates, e_excluded, e_ends)
      as e(id, budget_id, root_id, period_start, amount, created_at, exchange_rate, as_if_excluded, period_end)
  ),
  calls as (
    select * from unnest(k_ids, k_usages, k_roots) as k(reservation_id, usage_id, held_root)
  ),
  charged as (
    select c.reservation_id, r.id as usage_id, r.amount
    from calls c join unnest(recorded_ids, recorded_amounts) as r(id, amount) on r.id = c.usage_id
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
         (select array_agg(w.period_start order by w.budget_id, w.period_start) from windowed w join charged ch on ch.reservation_id = w.id where w.as_if_excluded),
         (select array_agg(w.root_id order by w.budget_id, w.period_start) from windowed w join charged ch on ch.reservation_id = w.id where w.as_if_excluded),
         (select array_agg(c.usage_id order by c.usage_id) from calls c join charged ch on ch.usage_id = c.usage_id),
         (select array_agg(c.held_root order by c.usage_id) from calls c join charged ch on ch.usage_id = c.usage_id)
  into s_ords, s_usages, s_budgets, s_amounts, s_rates, s_at, s_starts, s_ends, r_budgets, r_starts, r_held, found_ids, found_usages,
       x_usages, x_budgets, x_starts, x_roots, u_ids, u_roots;

  -- The spend and the release of what was held, each window row written once (budget_record_spend); what a
  -- window could not store is kept on the usage record.
  select jsonb_object_agg(x.usage_id::text, x.by_budget) into unrecorded
  from (select s.usage_id, jsonb_object_agg(s.budget_id::text, round(s.cost - s.charged, 10)::text) as by_budget
        from budget_record_spend(s_ords, s_usages, s_budgets, s_amounts, s_rates, s_at, s_starts, s_ends, true, r_budgets, r_starts, r_held, trees) s
        where s.cost > s.charged group by s.usage_id) x;
  if unrecorded is not null then
    foreach tree in array trees loop
      update budget_usage_records u set metadata = u.metadata || jsonb_build_object('unrecordedPastLimit', unrecorded -> u.id::text)
      where u.root_id = tree
        and u.id in (select k::uuid from jsonb_object_keys(unrecorded) k join unnest(u_ids, u_roots) as x(id, root) on x.id = k::uuid and x.root = tree);
    end loop;
  end if;

  -- A shadow budget's as-if ledger leaves out what it would have refused: the allocations just recorded for
  -- those holds go to its excluded_amount (its window rows are locked by budget_record_spend: the lock order, 008).
  -- Only while the budget is still shadow: one switched away from it excludes nothing (its change also unmarks
  -- its live holds, budget_definitions_left_shadow in shadow.sql; this covers a switch that commits while
  -- this settlement runs, after it read its holds).
  if x_usages is not null then
    foreach tree in array trees loop
      insert into budget_shadow_windows as s (budget_id, root_id, period_start, excluded_amount)
      select x.b, tree, x.s, sum(a.amount)
      from unnest(x_usages, x_budgets, x_starts, x_roots) as x(u, b, s, root)
      join budget_usage_allocations a on a.root_id = tree and a.usage_id = x.u and a.budget_id = x.b
      join budget_definitions d on d.root_id = tree and d.id = x.b and d.enforcement = 'shadow'
      where x.root = tree
      group by x.b, x.s
      order by x.b, x.s
      on conflict (budget_id, period_start, root_id) do update set excluded_amount = s.excluded_amount + excluded.excluded_amount;
    end loop;
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
drop function if exists budget_settle_leased(uuid[], text[], numeric[], text[], text[], jsonb[], timestamptz[], interval, uuid[]);
create or replace function budget_settle_leased(
  p_lease_ids uuid[], p_request_ids text[], p_actuals numeric[], p_sources text[], p_descriptions text[],
  p_metadata jsonb[], p_occurred_at timestamptz[], p_ttl interval, p_usage_ids uuid[] default null,
  p_roots uuid[] default null, p_root uuid default '00000000-0000-0000-0000-000000000000'
) returns table (request_id text, usage_id uuid, lease_found boolean, definitions_version bigint)
language plpgsql set lock_timeout = '5s' as $$
#variable_conflict use_column
declare
  trees uuid[] := budget_reservation_trees(p_roots, p_lease_ids);
  tree uuid;
  -- the leases' rows, one element each, with their window's end
  l_ids uuid[]; l_budgets uuid[]; l_roots uuid[]; l_starts timestamptz[]; l_amounts numeric[]; l_matched boolean[]; l_ranks integer[];
  l_currencies text[]; l_rates numeric[]; l_ends timestamptz[];
  s_ords bigint[];
  s_usages uuid[];
  s_budgets uuid[];
  s_amounts numeric[];
  s_rates numeric[];
  s_at timestamptz[];
  s_starts timestamptz[];
  s_ends timestamptz[];
  s_leases uuid[];
  s_roots uuid[];
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
  k_roots uuid[];
  -- each call: its lease, request, actual cost, source, description, metadata, usage record id, currency, the
  -- budget it is recorded on with its root, when it is dated, and when it was admitted
  q_leases uuid[]; q_requests text[]; q_actuals numeric[]; q_sources text[]; q_descriptions text[]; q_metadata jsonb[]; q_usages uuid[];
  q_currencies text[]; q_budgets uuid[]; q_roots uuid[]; q_at timestamptz[]; q_admitted timestamptz[];
  -- the usage records written (a request recorded before writes none): id and amount
  recorded_ids uuid[]; recorded_amounts numeric[];
  -- what budget_record_spend returned: each (usage record, budget), its cost and what was charged
  c_usages uuid[];
  c_budgets uuid[];
  c_costs numeric[];
  c_charged numeric[];
  -- the usage records written, and their trees
  u_ids uuid[];
  u_roots uuid[];
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
  perform budget_lock_reservations(p_lease_ids, null, trees);

  -- the leases' rows of the calls that cost something, tree by tree, each with its window's end
  foreach tree in array trees loop
    select l_ids || array_agg(r.id), l_budgets || array_agg(r.budget_id), l_roots || array_agg(r.root_id), l_starts || array_agg(r.period_start),
           l_amounts || array_agg(r.amount), l_matched || array_agg(r.scope_matched), l_ranks || array_agg(r.scope_rank),
           l_currencies || array_agg(r.currency), l_rates || array_agg(r.exchange_rate), l_ends || array_agg(c.period_end)
    into l_ids, l_budgets, l_roots, l_starts, l_amounts, l_matched, l_ranks, l_currencies, l_rates, l_ends
    from budget_reservations r join budget_status_cache c on c.root_id = tree and c.budget_id = r.budget_id and c.period_start = r.period_start
    where r.root_id = tree
      and r.id in (select i.lease_id from unnest(p_lease_ids, p_actuals) as i(lease_id, actual) where i.actual > 0);
  end loop;

  -- Each call (an input row whose lease is there): the id of its usage record (the caller's, else made here),
  -- its currency, the budget it is recorded on (the lease's most specific) with its root, and when it is dated
  -- (its admission, inside that budget's window). Computed from the arrays alone, as is all that follows up to
  -- the writes: a query of a distributed table that read a CTE would have Citus ship the CTE's rows to other nodes.
  select array_agg(c.lease_id order by c.n), array_agg(c.request_id order by c.n), array_agg(c.actual order by c.n),
         array_agg(c.source order by c.n), array_agg(c.description order by c.n), array_agg(c.metadata order by c.n),
         array_agg(c.usage_id order by c.n), array_agg(c.currency order by c.n), array_agg(c.scope_budgets[1] order by c.n),
         array_agg(c.record_root order by c.n), array_agg(c.occurred_at order by c.n), array_agg(c.admitted_at order by c.n)
  into q_leases, q_requests, q_actuals, q_sources, q_descriptions, q_metadata, q_usages, q_currencies, q_budgets, q_roots, q_at, q_admitted
  from (
    select min(i.n) as n, i.lease_id, i.request_id, i.actual, i.source, i.description, i.metadata, coalesce(i.usage_id, gen_random_uuid()) as usage_id,
           min(l.currency) as currency,
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
    from unnest(p_lease_ids, p_request_ids, p_actuals, p_sources, p_descriptions, p_metadata, p_occurred_at, p_usage_ids) with ordinality
           as i(lease_id, request_id, actual, source, description, metadata, occurred_at, usage_id, n)
    join unnest(l_ids, l_budgets, l_roots, l_starts, l_matched, l_ranks, l_currencies, l_ends)
           as l(id, budget_id, root_id, period_start, scope_matched, scope_rank, currency, period_end) on l.id = i.lease_id
    where i.actual > 0
    group by i.lease_id, i.request_id, i.actual, i.source, i.description, i.metadata, i.occurred_at, i.usage_id
  ) c;

  -- each call's usage record (also counting toward the lease's other budgets), once per request
  with recorded as (
    insert into budget_usage_records as u (id, budget_id, root_id, amount, currency, source, description, metadata, idempotency_key,
                                           also_counts_toward, occurred_at, allocated_by_settlement)
    select c.usage_id, c.budget_id, c.root_id, least(c.actual, budget_money_max()), c.currency, c.source, c.description,
           c.metadata || jsonb_build_object('requestId', c.request_id), c.request_id,
           (select coalesce(array_agg(l.budget_id order by l.rank, l.budget_id) filter (where l.matched),
                            array_agg(l.budget_id order by l.rank, l.budget_id))
            from unnest(l_ids, l_budgets, l_matched, l_ranks) as l(id, budget_id, matched, rank) where l.id = c.lease_id)[2:],
           c.occurred_at, true
    from unnest(q_leases, q_requests, q_actuals, q_sources, q_descriptions, q_metadata, q_usages, q_currencies, q_budgets, q_roots, q_at)
      as c(lease_id, request_id, actual, source, description, metadata, usage_id, currency, budget_id, root_id, occurred_at)
    on conflict (budget_id, idempotency_key, root_id) do nothing
    returning u.id, u.amount
  )
  select array_agg(r.id), array_agg(r.amount) into recorded_ids, recorded_amounts from recorded r;

  with leases as (
    select * from unnest(l_ids, l_budgets, l_roots, l_starts, l_amounts, l_rates, l_ends)
      as l(id, budget_id, root_id, period_start, amount, exchange_rate, period_end)
  ),
  calls as (
    select * from unnest(q_leases, q_requests, q_usages, q_roots, q_admitted) as c(lease_id, request_id, usage_id, record_root, admitted_at)
  ),
  charged as (
    select c.lease_id, c.request_id, c.admitted_at, r.id as usage_id, r.amount
    from calls c join unnest(recorded_ids, recorded_amounts) as r(id, amount) on r.id = c.usage_id
  ),
  -- each budget's allocation dated inside the window its lease row is charged to (budget_record_spend);
  -- calls of one window take what is left in the order they were admitted
  spend as (
    select dense_rank() over (order by ch.admitted_at, ch.request_id, ch.usage_id) as ord, ch.usage_id, l.budget_id, ch.amount, l.exchange_rate,
           ch.admitted_at, l.period_start, l.period_end, ch.lease_id, l.root_id
    from charged ch join leases l on l.id = ch.lease_id
  ),
  -- per lease row: what it holds and what its calls cost
  drawing as (
    select s.lease_id, s.budget_id, s.period_start, s.root_id, min(l.amount) as held, sum(budget_convert_unbounded(s.amount, s.exchange_rate)) as cost
    from spend s join leases l on l.id = s.lease_id and l.budget_id = s.budget_id
    group by s.lease_id, s.budget_id, s.period_start, s.root_id
  ),
  -- per window row: what its lease rows give up, each what its calls cost and what it holds at most
  released as (
    select x.budget_id, x.period_start, sum(least(x.cost, x.held)) as amount from drawing x group by x.budget_id, x.period_start
  )
  select (select array_agg(x.ord order by x.ord, x.budget_id) from spend x), (select array_agg(x.usage_id order by x.ord, x.budget_id) from spend x),
         (select array_agg(x.budget_id order by x.ord, x.budget_id) from spend x), (select array_agg(x.amount order by x.ord, x.budget_id) from spend x),
         (select array_agg(x.exchange_rate order by x.ord, x.budget_id) from spend x), (select array_agg(x.admitted_at order by x.ord, x.budget_id) from spend x),
         (select array_agg(x.period_start order by x.ord, x.budget_id) from spend x), (select array_agg(x.period_end order by x.ord, x.budget_id) from spend x),
         (select array_agg(x.lease_id order by x.ord, x.budget_id) from spend x), (select array_agg(x.root_id order by x.ord, x.budget_id) from spend x),
         (select array_agg(x.budget_id) from released x), (select array_agg(x.period_start) from released x), (select array_agg(x.amount) from released x),
         (select array_agg(x.lease_id) from drawing x), (select array_agg(x.budget_id) from drawing x), (select array_agg(x.period_start) from drawing x),
         (select array_agg(x.held) from drawing x), (select array_agg(x.cost) from drawing x), (select array_agg(x.root_id) from drawing x),
         (select array_agg(c.lease_id order by c.usage_id) from calls c), (select array_agg(c.request_id order by c.usage_id) from calls c),
         (select array_agg(ch.usage_id order by c.usage_id) from calls c left join charged ch on ch.usage_id = c.usage_id),
         (select array_agg(c.usage_id order by c.usage_id) from calls c join charged ch on ch.usage_id = c.usage_id),
         (select array_agg(c.record_root order by c.usage_id) from calls c join charged ch on ch.usage_id = c.usage_id)
  into s_ords, s_usages, s_budgets, s_amounts, s_rates, s_at, s_starts, s_ends, s_leases, s_roots, r_budgets, r_starts, r_released,
       k_leases, k_budgets, k_starts, k_held, k_cost, k_roots, found_leases, found_requests, found_usages, u_ids, u_roots;

  -- The spend and the release, each window row written once (budget_record_spend); then, this function's own
  -- part, each lease row drawn down by what its calls were charged. No condition on the amount there: such
  -- a condition is read from the statement's snapshot, so a lease that a concurrent return drew down while
  -- this function waited for its lock would not be drawn (while its window row was). The update re-reads the
  -- locked row.
  select array_agg(x.usage_id), array_agg(x.budget_id), array_agg(x.cost), array_agg(x.charged)
  into c_usages, c_budgets, c_costs, c_charged
  from budget_record_spend(s_ords, s_usages, s_budgets, s_amounts, s_rates, s_at, s_starts, s_ends, true, r_budgets, r_starts, r_released, trees) x;
  foreach tree in array trees loop
    update budget_reservations r set amount = greatest(r.amount - s.total, 0), expires_at = now() + p_ttl
    from (select l.lease_id, l.budget_id, sum(x.charged) as total
          from unnest(c_usages, c_budgets, c_charged) as x(usage_id, budget_id, charged)
          join unnest(s_usages, s_budgets, s_leases, s_roots) as l(usage_id, budget_id, lease_id, root)
            on l.usage_id = x.usage_id and l.budget_id = x.budget_id and l.root = tree
          group by l.lease_id, l.budget_id) s
    where r.root_id = tree and r.id = s.lease_id and r.budget_id = s.budget_id;
  end loop;
  select array_agg(x.usage_id), array_agg(x.budget_id), array_agg(x.cost), array_agg(x.charged)
  into short_usages, short_budgets, short_costs, short_charged
  from unnest(c_usages, c_budgets, c_costs, c_charged) as x(usage_id, budget_id, cost, charged) where x.cost > x.charged;

  -- Rare: a window that could not store all of it (money is below 10^18). What it did not take is kept on the
  -- usage record, and its lease rows gave up only what was charged: the release reckoned from the costs is
  -- given back in part.
  if short_usages is not null then
    foreach tree in array trees loop
      update budget_usage_records u set metadata = u.metadata || jsonb_build_object('unrecordedPastLimit', x.by_budget)
      from (select s.usage_id, jsonb_object_agg(s.budget_id::text, round(s.cost - s.charged, 10)::text) as by_budget
            from unnest(short_usages, short_budgets, short_costs, short_charged) as s(usage_id, budget_id, cost, charged)
            join unnest(u_ids, u_roots) as k(id, root) on k.id = s.usage_id and k.root = tree
            group by s.usage_id) x
      where u.root_id = tree and u.id = x.usage_id;
      update budget_status_cache c set reserved_amount = c.reserved_amount + x.back
      from (select k.budget_id, k.period_start, sum(least(k.cost, k.held) - least(coalesce(ch.total, 0), k.held)) as back
            from unnest(k_leases, k_budgets, k_starts, k_held, k_cost, k_roots) as k(lease_id, budget_id, period_start, held, cost, root)
            left join (select l.lease_id, l.budget_id, sum(a.amount) as total
                       from unnest(s_usages, s_budgets, s_leases, s_roots) as l(usage_id, budget_id, lease_id, root)
                       join budget_usage_allocations a on a.root_id = tree and a.usage_id = l.usage_id and a.budget_id = l.budget_id
                       where l.root = tree
                       group by l.lease_id, l.budget_id) ch on ch.lease_id = k.lease_id and ch.budget_id = k.budget_id
            where k.root = tree
            group by k.budget_id, k.period_start) x
      where c.root_id = tree and c.budget_id = x.budget_id and c.period_start = x.period_start and x.back > 0;
    end loop;
  end if;

  return query
    select i.request_id, f.usage_id, f.lease_id is not null, budget_definitions_version()
    from unnest(p_lease_ids, p_request_ids) as i(lease_id, request_id)
    left join unnest(found_leases, found_requests, found_usages) as f(lease_id, request_id, usage_id)
      on f.lease_id = i.lease_id and f.request_id = i.request_id;
end $$;
