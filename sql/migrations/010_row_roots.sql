-- Every row that belongs to a budget carries the id of that budget's tree root (root_id), as the budget does
-- (migration 004), and every key includes it: the column the tables distribute by on Citus
-- (docs/scaling.md), on plain PostgreSQL too, so that one schema serves both engines.
--
-- - A row's root is its budget's: the key (root_id, budget_id) -> budget_definitions (root_id, id) replaces
--   the key on budget_id alone, so a row cannot name another tree's root. A budget's root never changes
--   (004), so a row's never has to follow it.
-- - A row that belongs to no budget (usage counted toward none, an audit entry for an exchange rate, a
--   decision no budget made) has the nil uuid as its root: every such row is kept together, and the
--   column is never null (Citus refuses a null distribution value).
-- - A notification carries the root of the alert, digest or drift it tells of, keyed the same way.
-- - Every primary and unique key gains root_id as its last column (Citus requires it; last, so that the
--   key's index still serves the lookups by its other columns). The rows they identify are the same.
-- - A key that only one database can hold ends in _across_trees, and the Citus step drops it
--   (sql/citus/distribute.sql): a budget's id alone; a usage record's, which its allocations' key names (a
--   call whose line spans two trees has allocations in both); an idempotency key that names one record
--   across every budget; a provider dimension mapped to one budget; and the two conflict targets of the
--   previous version's statements (an unbudgeted record's request id, a digest's date), kept for an
--   instance of it that still serves during an upgrade. Each has a per-tree twin that stays.
-- - A writer may leave root_id out: a trigger fills it from the budget (budget_row_root,
--   sql/functions/tree.sql). Citus needs every insert to name it; the gate's statements do.
--
-- Written to run again: it does nothing where the usage records already carry a root. An existing database
-- is filled in place from the budgets (every row of every such table is rewritten once, under the migration's
-- locks: docs/data-model.md, Upgrades); a row whose budget is gone (in the two tables without a key to their
-- budget) gets the nil root.

do $$
declare
  nil constant uuid := '00000000-0000-0000-0000-000000000000';
  -- the tables whose rows belong to a budget; all but the last two hold a key to it
  budget_tables constant text[] := array['budget_usage_records', 'budget_usage_allocations', 'budget_status_cache', 'budget_reservations',
    'budget_approvals', 'budget_rate_buckets', 'budget_alert_history', 'budget_digests', 'budget_forecast_profiles', 'budget_audit_log',
    'budget_recon_mappings', 'budget_recon_corrections', 'budget_recon_drifts', 'budget_shadow_windows', 'budget_shadow_counts',
    'budget_forecast_backdated', 'budget_decision_log'];
  -- a new database has no triggers yet: the repeatable files make them after the migrations
  guarded constant boolean := exists (select 1 from pg_trigger where tgname = 'budget_audit_log_append_only'
                                                                  and tgrelid = 'budget_audit_log'::regclass);
  t text;
  k record;
begin
  if exists (select 1 from information_schema.columns where table_schema = current_schema()
             and table_name = 'budget_usage_records' and column_name = 'root_id') then
    return;
  end if;

  -- 1. The column, filled.
  foreach t in array budget_tables loop
    execute format('alter table %I add column root_id uuid', t);
    -- the audit log refuses updates (sql/functions/audit-log.sql): filling a new column changes no entry, so
    -- its guard steps aside for these two statements, inside this migration's transaction
    if t = 'budget_audit_log' and guarded then
      alter table budget_audit_log disable trigger budget_audit_log_append_only;
    end if;
    execute format('update %I x set root_id = d.root_id from budget_definitions d where d.id = x.budget_id', t);
    execute format('update %I set root_id = %L where root_id is null', t, nil);
    if t = 'budget_audit_log' and guarded then
      alter table budget_audit_log enable trigger budget_audit_log_append_only;
    end if;
    execute format('alter table %I alter column root_id set not null', t);
  end loop;
  alter table budget_notification_outbox add column root_id uuid;
  update budget_notification_outbox o set root_id = coalesce(
    (select h.root_id from budget_alert_history h where h.id = o.alert_id),
    (select g.root_id from budget_digests g where g.id = o.digest_id),
    (select r.root_id from budget_recon_drifts r where r.id = o.drift_id));
  alter table budget_notification_outbox alter column root_id set not null;

  -- 2. The foreign keys go while the keys they name change: every key to a budget, a usage record or an
  -- event a notification tells of (the tree's own key on (root_id, parent_id) stays: 004).
  for k in select c.conrelid::regclass::text as tbl, c.conname from pg_constraint c
           where c.contype = 'f' and c.confrelid in ('budget_definitions'::regclass, 'budget_usage_records'::regclass,
                                                     'budget_alert_history'::regclass, 'budget_digests'::regclass, 'budget_recon_drifts'::regclass)
             and c.conname <> 'budget_definitions_root_parent_fkey' loop
    execute format('alter table %I drop constraint %I', k.tbl, k.conname);
  end loop;

  -- 3. Every primary and unique key of these tables gains root_id, last; its name stays.
  for k in select c.conrelid::regclass::text as tbl, c.conname, c.contype,
                  (select string_agg(quote_ident(a.attname), ', ' order by n.o) from unnest(c.conkey) with ordinality as n(attnum, o)
                   join pg_attribute a on a.attrelid = c.conrelid and a.attnum = n.attnum) as cols
           from pg_constraint c
           where c.contype in ('p', 'u') and c.conrelid::regclass::text = any (budget_tables || array['budget_definitions', 'budget_notification_outbox'])
             and not exists (select 1 from pg_attribute a where a.attrelid = c.conrelid and a.attname = 'root_id' and a.attnum = any (c.conkey))
           order by 1, 2 loop
    execute format('alter table %I drop constraint %I', k.tbl, k.conname);
    execute format('alter table %I add constraint %I %s (%s, root_id)', k.tbl, k.conname,
                   case k.contype when 'p' then 'primary key' else 'unique' end, k.cols);
  end loop;
  -- the partial unique indexes, the same way
  drop index budget_usage_records_unbudgeted_key;
  create unique index budget_usage_records_unbudgeted_key on budget_usage_records (idempotency_key, root_id)
    where budget_id is null and idempotency_key is not null;
  drop index budget_alert_history_active;
  create unique index budget_alert_history_active on budget_alert_history (budget_id, period_start, threshold, basis, root_id)
    where resolved_at is null;
  alter index budget_usage_records_key rename to budget_usage_records_key_across_trees;
  create unique index budget_usage_records_key on budget_usage_records (idempotency_key, root_id) where request_fingerprint is not null;
  -- what one database holds besides: a budget's id and a usage record's (the allocations' key names the
  -- record's), and a provider dimension mapped to one budget
  create unique index budget_definitions_id_across_trees on budget_definitions (id);
  create unique index budget_usage_records_id_across_trees on budget_usage_records (id);
  alter table budget_recon_mappings add constraint budget_recon_mappings_dimension_across_trees unique (provider, kind, value);
  -- the conflict targets of the previous version's statements, so that an instance of it still serving while
  -- a newer one migrated finds them (docs/data-model.md, Upgrades); each keys the same rows as its twin
  -- with the root, since a budget's root is fixed and a row of no budget has the nil root
  create unique index budget_usage_records_unbudgeted_key_across_trees on budget_usage_records (idempotency_key)
    where budget_id is null and idempotency_key is not null;
  create unique index budget_digests_once_per_date_across_trees on budget_digests (budget_id, every, first_day);

  -- 4. The foreign keys again, each with the root.
  foreach t in array budget_tables[1:15] loop
    execute format('alter table %I add constraint %I foreign key (root_id, budget_id) references budget_definitions (root_id, id)',
                   t, t || '_root_budget_fkey');
    -- a row of no budget is of no tree
    execute format('alter table %I add constraint %I check (budget_id is not null or root_id = %L)', t, t || '_no_budget_no_root', nil);
  end loop;
  alter table budget_recon_corrections add constraint budget_recon_corrections_root_usage_fkey
    foreign key (root_id, usage_id) references budget_usage_records (root_id, id);
  alter table budget_usage_allocations add constraint budget_usage_allocations_usage_across_trees
    foreign key (usage_id) references budget_usage_records (id);
  alter table budget_notification_outbox add constraint budget_notification_outbox_root_alert_fkey
    foreign key (root_id, alert_id) references budget_alert_history (root_id, id);
  alter table budget_notification_outbox add constraint budget_notification_outbox_root_digest_fkey
    foreign key (root_id, digest_id) references budget_digests (root_id, id);
  alter table budget_notification_outbox add constraint budget_notification_outbox_root_drift_fkey
    foreign key (root_id, drift_id) references budget_recon_drifts (root_id, id);
end $$;
