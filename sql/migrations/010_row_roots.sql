-- Every row that belongs to a budget carries the id of that budget's tree root (root_id), as the budget does
-- (migration 004): the column the tables distribute by on Citus (docs/scaling.md), on plain PostgreSQL
-- too, so that one schema serves both engines.
--
-- - A row's root is its budget's: the key (root_id, budget_id) -> budget_definitions (root_id, id) replaces
--   the key on budget_id alone, so a row cannot name another tree's root. A budget's root never changes
--   (004), so a row's never has to follow it.
-- - A row that belongs to no budget (usage counted toward none, an audit entry for an exchange rate, a
--   decision no budget made) has the nil uuid as its root: every such row is kept together, and the
--   column is never null (Citus refuses a null distribution value).
-- - A notification carries the root of the alert, digest or drift it tells of, keyed the same way.
-- - A writer may leave root_id out: the trigger budget_row_root (sql/functions/tree.sql) fills it from the
--   budget. The gate's own statements name it, which Citus requires of an insert.
-- - Left for the distribution step: primary and unique keys that do not include root_id, and the keys from
--   a budget's allocations to a usage record, which a call whose line spans two trees has in both.
--
-- Written to run again: each step checks whether it was done. An existing database is filled in place from
-- the budgets; a row whose budget is gone (the tables without a key to their budget) gets the nil root.

do $$
declare
  nil constant uuid := '00000000-0000-0000-0000-000000000000';
  t text;
  -- a new database has no triggers yet: the repeatable files make them after the migrations
  guarded constant boolean := exists (select 1 from pg_trigger where tgname = 'budget_audit_log_append_only'
                                                                  and tgrelid = 'budget_audit_log'::regclass);
begin
  -- each table with a budget_id; the first list holds a key to budget_definitions
  foreach t in array array['budget_usage_records', 'budget_usage_allocations', 'budget_status_cache', 'budget_reservations',
                           'budget_approvals', 'budget_rate_buckets', 'budget_alert_history', 'budget_digests',
                           'budget_forecast_profiles', 'budget_audit_log', 'budget_recon_mappings', 'budget_recon_corrections',
                           'budget_recon_drifts', 'budget_shadow_windows', 'budget_shadow_counts',
                           'budget_forecast_backdated', 'budget_decision_log'] loop
    if exists (select 1 from information_schema.columns where table_name = t and column_name = 'root_id' and table_schema = current_schema()) then
      continue;
    end if;
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
    if t not in ('budget_forecast_backdated', 'budget_decision_log') then
      execute format('alter table %I drop constraint if exists %I', t, t || '_budget_id_fkey');
      execute format('alter table %I add constraint %I foreign key (root_id, budget_id) references budget_definitions (root_id, id)',
                     t, t || '_root_budget_fkey');
      -- a row of no budget is of no tree
      execute format('alter table %I add constraint %I check (budget_id is not null or root_id = %L)', t, t || '_no_budget_no_root', nil);
    end if;
  end loop;

  -- the events a notification tells of, keyed by (root_id, id) so that its key can name the pair
  create unique index if not exists budget_alert_history_root on budget_alert_history (root_id, id);
  create unique index if not exists budget_digests_root on budget_digests (root_id, id);
  create unique index if not exists budget_recon_drifts_root on budget_recon_drifts (root_id, id);

  if not exists (select 1 from information_schema.columns where table_name = 'budget_notification_outbox' and column_name = 'root_id'
                 and table_schema = current_schema()) then
    alter table budget_notification_outbox add column root_id uuid;
    update budget_notification_outbox o set root_id = coalesce(
      (select h.root_id from budget_alert_history h where h.id = o.alert_id),
      (select g.root_id from budget_digests g where g.id = o.digest_id),
      (select r.root_id from budget_recon_drifts r where r.id = o.drift_id));
    alter table budget_notification_outbox alter column root_id set not null;
    alter table budget_notification_outbox drop constraint if exists budget_notification_outbox_alert_id_fkey;
    alter table budget_notification_outbox drop constraint if exists budget_notification_outbox_digest_id_fkey;
    alter table budget_notification_outbox drop constraint if exists budget_notification_outbox_drift_id_fkey;
    alter table budget_notification_outbox add constraint budget_notification_outbox_root_alert_fkey
      foreign key (root_id, alert_id) references budget_alert_history (root_id, id);
    alter table budget_notification_outbox add constraint budget_notification_outbox_root_digest_fkey
      foreign key (root_id, digest_id) references budget_digests (root_id, id);
    alter table budget_notification_outbox add constraint budget_notification_outbox_root_drift_fkey
      foreign key (root_id, drift_id) references budget_recon_drifts (root_id, id);
  end if;
end $$;
