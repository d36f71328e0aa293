-- The sweeper: reservations left by a process that died mid-call, or that outlived their TTL.

-- Settles expired reservations through the one batch settlement (settlements.sql). Their outcome is
-- unknown: the request may well have reached the provider and been charged, so each is counted as spent
-- at its estimate (the most the call could cost; a lease's unused slice and all), in the call's currency,
-- never silently released: a budget may end up over-counted by a crash, never overspent.
--
-- Every gateway process sweeps, and none waits on another: rows are locked in the lock order (locks.sql: tree
-- by tree), SKIP LOCKED. Expired rows are taken from the trees in root order, then every row of the
-- reservations they belong to, skipping still. A reservation whose line spans trees can be met by two
-- sweepers, each holding its rows in one tree: waiting for the rest (the settlement would) deadlocks the two,
-- so a reservation of which this sweeper could not lock every row is left to whoever holds the rest, or to the
-- next sweep, and the sweep takes more expired rows in its place. Up to p_limit rows of the reservations it
-- settles, in at most 10 rounds (a sweep never scans without end behind transactions that hold rows); each
-- reservation settled once, at the most any of its rows held for the call. Returns how many it settled.
--
-- p_roots: the trees to look for expired rows in (null: every tree, a read of every shard). On Citus the
-- sweeper names one tree a call (budget_expired_trees below), and p_root, the same tree, sends the call to
-- that tree's node (sql/citus/delegate.sql); the other trees of a reservation met there are its rows' own
-- list (budget_reservation_trees), so nothing is read by id on every shard. budget_sweep_expired, without them
-- (the argument list the versions before call; a function of its own name, lines.sql's budget_applicable says
-- why): every tree.
-- an argument list with defaults a development build had (it would make a call of the one below ambiguous)
drop function if exists budget_sweep_expired(integer, uuid[], uuid);
create or replace function budget_sweep_expired(p_limit integer) returns integer language plpgsql as $$
begin
  return budget_sweep_trees(p_limit, null::uuid[], '00000000-0000-0000-0000-000000000000'::uuid);
end $$;
create or replace function budget_sweep_trees(p_limit integer, p_roots uuid[], p_root uuid)
returns integer language plpgsql set lock_timeout = '5s' as $$
declare
  root uuid;
  left_to_take integer := p_limit;
  tree_ids uuid[];
  sweep_trees uuid[];
  -- one round: the reservations met, their trees, and each row of theirs locked here (its reservation's id)
  met uuid[];
  met_trees uuid[];
  round_trees uuid[];
  locked uuid[];
  -- each row of the reservations met (its reservation's id, what it held for the call), then each reservation:
  -- its rows in all, and the most any of them held
  row_ids uuid[];
  row_amounts numeric[];
  found_ids uuid[];
  found_rows bigint[];
  found_amounts numeric[];
  -- what this sweep settles, and the reservations it left (a row of theirs held elsewhere)
  ids uuid[] := '{}'::uuid[];
  amounts numeric[] := '{}'::numeric[];
  left_alone uuid[] := '{}'::uuid[];
  kept integer;
  -- the trees of the reservations met, which the settlement names (it then reads none of them again)
  trees uuid[] := '{}'::uuid[];
begin
  for round in 1 .. 10 loop
    met := '{}'::uuid[];
    met_trees := '{}'::uuid[];
    if p_roots is not null then
      sweep_trees := budget_line_trees(p_roots, null);
    else
      sweep_trees := array(select distinct r.root_id from budget_reservations r
                           where r.expires_at < now() and r.id <> all (ids) and r.id <> all (left_alone) order by 1);
    end if;
    foreach root in array sweep_trees loop
      exit when left_to_take - cardinality(met) <= 0;
      tree_ids := array(select r.id from budget_reservations r
                        where r.root_id = root and r.expires_at < now() and r.id <> all (ids) and r.id <> all (left_alone)
                        order by r.id, r.budget_id limit left_to_take - cardinality(met) for update skip locked);
      met := met || tree_ids;
      -- the trees each of these reservations has rows in, as its rows name them (a row from before they did: none)
      met_trees := met_trees || root || array(select distinct t.tree from budget_reservations r, unnest(r.trees) as t(tree)
                                              where r.root_id = root and r.id = any (tree_ids));
    end loop;
    exit when cardinality(met) = 0;

    round_trees := budget_reservation_trees(met_trees, met);
    locked := '{}'::uuid[];
    row_ids := '{}'::uuid[];
    row_amounts := '{}'::numeric[];
    foreach root in array round_trees loop
      if root <> all (trees) then trees := trees || root; end if;
      locked := locked || array(select r.id from budget_reservations r where r.root_id = root and r.id = any (met)
                                order by r.id, r.budget_id for update skip locked);
      select row_ids || coalesce(array_agg(r.id), '{}'), row_amounts || coalesce(array_agg(coalesce(r.call_amount, r.amount)), '{}')
      into row_ids, row_amounts
      from budget_reservations r where r.root_id = root and r.id = any (met);
    end loop;
    select array_agg(x.id), array_agg(x.total), array_agg(x.amount) into found_ids, found_rows, found_amounts
    from (select f.id, count(*) as total, max(f.amount) as amount
          from unnest(row_ids, row_amounts) as f(id, amount) group by f.id) x;
    kept := 0;
    for i in 1 .. coalesce(cardinality(found_ids), 0) loop
      if found_rows[i] = (select count(*) from unnest(locked) as l(id) where l.id = found_ids[i]) then
        ids := ids || found_ids[i];
        amounts := amounts || found_amounts[i];
        left_to_take := left_to_take - found_rows[i]::integer;
        kept := kept + 1;
      else
        left_alone := left_alone || found_ids[i];
      end if;
    end loop;
    -- every reservation met kept: the rows ran out, or the limit was reached
    exit when kept = coalesce(cardinality(found_ids), 0) or left_to_take <= 0;
  end loop;
  if cardinality(ids) = 0 then return 0; end if;
  perform budget_settle_batch(ids, amounts, array_fill('expired-reservation'::text, array[array_length(ids, 1)]),
    array_fill('The gateway did not settle this call before its reservation expired; counted at its estimate'::text, array[array_length(ids, 1)]),
    array_fill(jsonb_build_object('outcome', 'unknown'), array[array_length(ids, 1)]), null, trees);
  return array_length(ids, 1);
end $$;

-- The trees that hold expired reservations, in root order, at most p_limit: where the sweeper looks on Citus,
-- one delegated call of budget_sweep_trees a tree. A read of every shard, by nature: a process of any tree
-- may have died.
create or replace function budget_expired_trees(p_limit integer) returns uuid[] language plpgsql stable as $$
begin
  return coalesce((select array_agg(x.root_id order by x.root_id)
                   from (select distinct r.root_id from budget_reservations r where r.expires_at < now()
                         order by r.root_id limit greatest(p_limit, 0)) x), '{}');
end $$;
