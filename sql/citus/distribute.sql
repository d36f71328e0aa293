-- The distribution step: the budget tables on a Citus cluster (docs/scaling.md). distributeOnCitus()
-- (lib/kernel/database/citus.ts) runs it on a migrated database with the citus extension; plain PostgreSQL
-- never sees it, and migrate() does not call it yet (citus.ts says why). Written to run again: a table
-- already in Citus's metadata is left as it is, the rest are distributed, and every run ends by checking
-- that every table with a root_id is.
--
-- - Every table whose rows belong to a budget tree is distributed by root_id (migration 010) and co-located
--   with budget_definitions: a tree's budgets, windows, holds, records, alerts and notifications sit on one
--   shard, so a statement about one tree runs on one node.
-- - What every tree reads is a reference table, copied to every node: exchange rates, the definitions'
--   global version, and the provider costs with their import cursors. Each tree's own version
--   (budget_tree_versions) is a tree's row like any other: the triggers that bump it run on the tree's shard.
-- - Nothing running on a shard writes a reference table (Citus refuses: "cannot execute a distributed query
--   from a query on a shard"): the registry bumps the global version from the coordinator (definitions.sql).
-- - The keys only one database can hold (named *_across_trees, 010) go first: Citus cannot enforce a key
--   across shards, and refuses to distribute a table that has one.
-- - Triggers run on the shards (citus.enable_unsafe_triggers): each touches only rows of its own tree.
-- - The gate's statements are delegated by their tree's root: delegate.sql, run after this in a transaction of
--   its own (Citus registers no function in a transaction that created shards in parallel).
do $$
declare
  k record;
  t text;
begin
  perform set_config('citus.enable_unsafe_triggers', 'on', true);
  -- the setting for every later session too: a function file that replaces a trigger runs in one
  execute format('alter database %I set citus.enable_unsafe_triggers = on', current_database());

  foreach t in array array['budget_exchange_rates', 'budget_definitions_version', 'budget_provider_costs', 'budget_provider_cost_cursors'] loop
    if not exists (select 1 from pg_dist_partition p where p.logicalrelid = t::regclass) then
      perform create_reference_table(t);
    end if;
  end loop;

  for k in select c.conrelid::regclass::text as tbl, c.conname from pg_constraint c
           where c.conname like '%\_across\_trees' order by c.contype = 'f' desc loop
    execute format('alter table %I drop constraint %I', k.tbl, k.conname);
  end loop;
  for k in select i.indexrelid::regclass::text as idx from pg_index i join pg_class c on c.oid = i.indexrelid
           where c.relname like '%\_across\_trees' loop
    execute format('drop index %I', k.idx);
  end loop;

  -- the referenced tables before the tables whose keys name them; each one not distributed yet
  foreach t in array array['budget_definitions', 'budget_tree_versions', 'budget_usage_records', 'budget_alert_history', 'budget_digests', 'budget_recon_drifts',
                           'budget_usage_allocations', 'budget_status_cache', 'budget_reservations', 'budget_approvals',
                           'budget_rate_buckets', 'budget_notification_outbox', 'budget_forecast_profiles', 'budget_forecast_backdated',
                           'budget_audit_log', 'budget_decision_log', 'budget_recon_mappings', 'budget_recon_corrections',
                           'budget_shadow_windows', 'budget_shadow_counts', 'budget_approval_requests', 'budget_approval_decisions'] loop
    if not exists (select 1 from pg_dist_partition p where p.logicalrelid = t::regclass) then
      if t = 'budget_definitions' then
        perform create_distributed_table(t, 'root_id');
      else
        perform create_distributed_table(t, 'root_id', colocate_with => 'budget_definitions');
      end if;
    end if;
  end loop;

  -- a table a later migration gave a root must be named above
  select string_agg(c.table_name, ', ') into t from information_schema.columns c
  where c.table_schema = current_schema() and c.column_name = 'root_id'
    and not exists (select 1 from pg_dist_partition p where p.logicalrelid = c.table_name::regclass);
  if t is not null then
    raise exception 'tables with a root_id that the distribution step does not distribute: %', t;
  end if;
end $$;
