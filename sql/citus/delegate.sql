-- The gate's statements that name their tree, delegated by it (docs/scaling.md): Citus sends each call to the
-- node that holds the shard of its p_root, and the statements inside it, each naming one tree, run on that
-- node's shards; a tree the call names besides is reached from there. Run by distributeOnCitus()
-- (lib/kernel/database/citus.ts) after distribute.sql, in a transaction of its own (Citus registers no function
-- in a transaction that created shards in parallel). Written to run again: a function already delegated is
-- left as it is.
--
-- Each is registered in its argument list that has p_root (the one without, kept for the versions before, runs
-- where it is called). Where p_root has a default, it is the nil root, never null: Citus 13.2 crashes the
-- server process that plans a call whose distribution argument is null.
do $$
declare
  k record;
begin
  for k in select p.oid::regprocedure as fn from pg_proc p
           where p.proname = any (array['budget_hold_batch', 'budget_settle_batch', 'budget_settle_leased', 'budget_lease_take', 'budget_lease_renew', 'budget_lease_return',
                                         'budget_rate_take', 'budget_rate_give_back', 'budget_sweep_trees', 'budget_line_in_trees',
                                         'budget_record_usage_in_trees']) and p.pronamespace = current_schema()::regnamespace
             and 'p_root' = any (p.proargnames) loop
    if not exists (select 1 from pg_dist_object o where o.classid = 'pg_proc'::regclass and o.objid = k.fn::oid
                   and o.distribution_argument_index is not null) then
      perform create_distributed_function(k.fn, 'p_root', colocate_with => 'budget_definitions');
    end if;
  end loop;
end $$;

-- What a delegated call runs on its node must be there: Citus copies a function to the workers when it is made,
-- except one whose arguments or result are a table's row type while that table is still local (migrate() makes
-- the functions before this step distributes the tables). Those of the plugin's functions are copied now.
do $$
declare
  k record;
begin
  for k in select p.oid::regprocedure as fn from pg_proc p
           where p.proname ~ '^(budget|refresh_budget|calculate_budget)_'
             and p.pronamespace = current_schema()::regnamespace
             and not exists (select 1 from pg_dist_object o where o.classid = 'pg_proc'::regclass and o.objid = p.oid) loop
    perform create_distributed_function(k.fn);
  end loop;
end $$;
