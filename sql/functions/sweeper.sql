-- The sweeper: reservations left by a process that died mid-call, or that outlived their TTL.

-- Settles expired reservations through the one batch settlement (settlements.sql). Their outcome is
-- unknown: the request may well have reached the provider and been charged, so each is counted as spent
-- at its estimate (the most the call could cost; a lease's unused slice and all), in the call's currency,
-- never silently released: a budget may end up over-counted by a crash, never overspent. Rows are locked
-- in the lock order (locks.sql: tree by tree, each tree's rows by one statement), SKIP LOCKED: every gateway
-- process sweeps without waiting on another. Up to p_limit rows, from the trees in root order.
create or replace function budget_sweep_expired(p_limit integer) returns integer language plpgsql set lock_timeout = '5s' as $$
declare
  ids uuid[] := '{}'::uuid[];
  amounts numeric[] := '{}'::numeric[];
  root uuid;
  left_to_take integer := p_limit;
  tree_ids uuid[];
  tree_amounts numeric[];
  taken integer;
begin
  for root in select distinct r.root_id from budget_reservations r where r.expires_at < now() order by r.root_id loop
    exit when left_to_take <= 0;
    select array_agg(x.id), array_agg(x.amount), coalesce(sum(x.rows), 0)::integer into tree_ids, tree_amounts, taken
    from (
      select r.id, max(coalesce(r.call_amount, r.amount)) as amount, count(*) as rows
      from (select r.id, r.amount, r.call_amount from budget_reservations r where r.root_id = root and r.expires_at < now()
            order by r.id, r.budget_id limit left_to_take for update skip locked) r
      group by r.id
    ) x;
    ids := ids || coalesce(tree_ids, '{}'::uuid[]);
    amounts := amounts || coalesce(tree_amounts, '{}'::numeric[]);
    left_to_take := left_to_take - taken;
  end loop;
  if cardinality(ids) = 0 then return 0; end if;
  -- a reservation whose line spans trees was met once in each: one settlement of it, at its estimate
  select array_agg(x.id order by x.id), array_agg(x.amount order by x.id) into ids, amounts
  from (select r.id, max(r.amount) as amount from unnest(ids, amounts) as r(id, amount) group by r.id) x;
  perform budget_settle_batch(ids, amounts, array_fill('expired-reservation'::text, array[array_length(ids, 1)]),
    array_fill('The gateway did not settle this call before its reservation expired; counted at its estimate'::text, array[array_length(ids, 1)]),
    array_fill(jsonb_build_object('outcome', 'unknown'), array[array_length(ids, 1)]));
  return array_length(ids, 1);
end $$;
