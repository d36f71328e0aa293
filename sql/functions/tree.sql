-- The budget tree: how deep it may be, the one walk in each direction, and each budget's root.

-- The deepest a budget tree may be, counted in budgets from a root to a leaf. The registry refuses a
-- create or a move past it (lib/budgets/registry.ts), so every walk below reaches every budget.
create or replace function budget_max_depth() returns integer language sql immutable parallel safe as $$ select 16 $$;

-- Upward: the budget and every ancestor, nearest first (depth 1 is the budget itself). The one walk
-- toward the root: the gate, the usage trigger, the registry's ancestors and its cycle check use it.
-- Within the budget's tree: every step names the root, so on Citus the walk is one shard's (a recursive
-- query over a distributed table is planned only with a filter on its distribution column). PL/pgSQL, as
-- every function here that reads a budget table: Citus cannot plan a parameterized SQL-language function's
-- query on a distributed table.
create or replace function budget_lineage_within(p_root_id uuid, p_budget_id uuid)
returns table (id uuid, depth integer, period text, start_date timestamptz, end_date timestamptz, recurring boolean)
language plpgsql stable rows 5 as $$
begin
  return query
  with recursive lineage as (
    select b.id, b.parent_id, 1 as depth from budget_definitions b where b.root_id = p_root_id and b.id = p_budget_id
    union all
    select p.id, p.parent_id, l.depth + 1 from lineage l join budget_definitions p on p.root_id = p_root_id and p.id = l.parent_id
    where l.depth < budget_max_depth()
  )
  select b.id, l.depth, b.period, b.start_date, b.end_date, b.recurring
  from lineage l join budget_definitions b on b.root_id = p_root_id and b.id = l.id
  order by l.depth;
end $$;

-- The same walk for a caller that knows only the budget: its root is read first (on Citus, a read of
-- every shard; where the root is at hand, the walk above).
create or replace function budget_lineage(p_budget_id uuid)
returns table (id uuid, depth integer, period text, start_date timestamptz, end_date timestamptz, recurring boolean)
language plpgsql stable rows 5 as $$
begin
  return query select * from budget_lineage_within((select d.root_id from budget_definitions d where d.id = p_budget_id), p_budget_id);
end $$;

-- Downward: every live descendant of the given budgets of one tree, with its distance (1: a child). The one
-- walk toward the leaves: the hierarchy view, cascading deletes and the depth check use it.
create or replace function budget_subtree_within(p_root_id uuid, p_budget_ids uuid[])
returns table (id uuid, depth integer)
language plpgsql stable as $$
begin
  return query
  with recursive subtree as (
    select b.id, 1 as depth from budget_definitions b
    where b.root_id = p_root_id and b.parent_id = any (p_budget_ids) and b.deleted_at is null
    union all
    select b.id, s.depth + 1 from subtree s join budget_definitions b on b.root_id = p_root_id and b.parent_id = s.id
    where b.deleted_at is null and s.depth < budget_max_depth()
  )
  select s.id, min(s.depth)::integer from subtree s group by s.id;
end $$;

-- The same walk from budgets of any trees: each tree's walked on its own.
create or replace function budget_subtree(p_budget_ids uuid[])
returns table (id uuid, depth integer)
language plpgsql stable as $$
declare
  tree record;
begin
  for tree in select d.root_id, array_agg(d.id) as ids from budget_definitions d where d.id = any (p_budget_ids) group by d.root_id loop
    return query select * from budget_subtree_within(tree.root_id, tree.ids);
  end loop;
end $$;

-- A new budget's root (budget_definitions.root_id): its own id when it has no parent, else its parent's
-- root. The one place the rule is written: every insert goes through it, the registry's and any other.
-- A root never changes afterwards (the tables are to be distributed by it, docs/scaling.md): the
-- registry refuses a move that would change it (409 BUDGET_ERR_MOVE_ACROSS_TREES), and the table's
-- constraints (sql/migrations/004_budget_roots.sql) refuse such an update from anywhere else. A parent
-- not there yet is a foreign key violation here: a row is looked up when it is inserted, so one statement
-- that lists a child before its parent is refused, though the parent_id key alone would take it. A row
-- that names its root (a restore, whose rows come in any order) keeps it: the constraints check it.
create or replace function budget_definitions_root() returns trigger language plpgsql as $$
begin
  if new.root_id is not null then
    return new;
  elsif new.parent_id is null then
    new.root_id := new.id;
  else
    select p.root_id into new.root_id from budget_definitions p where p.id = new.parent_id;
    if not found then
      raise exception 'budget % names parent %, which does not exist', new.id, new.parent_id
        using errcode = 'foreign_key_violation';
    end if;
  end if;
  return new;
end $$;
create or replace trigger budget_definitions_root before insert on budget_definitions
for each row execute function budget_definitions_root();

-- The root of a row that belongs to a budget (root_id on the per-budget tables, migration 010): its budget's
-- root, or the nil uuid for a row of no budget. Fills it for a writer that leaves it out; the gate's
-- statements name it themselves (Citus routes an insert by it, before any trigger runs). The key
-- (root_id, budget_id) -> budget_definitions (root_id, id) checks what a writer names. A cost mapping is the
-- one row whose budget changes (a move to another budget, maybe of another tree): its root follows, whoever
-- moves it, an instance of the version before the roots too.
create or replace function budget_row_root() returns trigger language plpgsql as $$
begin
  if new.budget_id is null then
    new.root_id := '00000000-0000-0000-0000-000000000000';
  else
    select d.root_id into new.root_id from budget_definitions d where d.id = new.budget_id;
    -- a budget that is not there: the nil root, which the key refuses where the table has one
    new.root_id := coalesce(new.root_id, '00000000-0000-0000-0000-000000000000');
  end if;
  return new;
end $$;

-- A notification's root: the root of the alert, digest or drift it tells of.
create or replace function budget_outbox_root() returns trigger language plpgsql as $$
begin
  new.root_id := coalesce((select h.root_id from budget_alert_history h where h.id = new.alert_id),
                          (select g.root_id from budget_digests g where g.id = new.digest_id),
                          (select r.root_id from budget_recon_drifts r where r.id = new.drift_id));
  return new;
end $$;

-- On every table whose rows carry both a budget and a root (migration 010).
create or replace trigger budget_alert_history_root before insert on budget_alert_history
for each row when (new.root_id is null) execute function budget_row_root();
create or replace trigger budget_approvals_root before insert on budget_approvals
for each row when (new.root_id is null) execute function budget_row_root();
create or replace trigger budget_audit_log_root before insert on budget_audit_log
for each row when (new.root_id is null) execute function budget_row_root();
create or replace trigger budget_decision_log_root before insert on budget_decision_log
for each row when (new.root_id is null) execute function budget_row_root();
create or replace trigger budget_digests_root before insert on budget_digests
for each row when (new.root_id is null) execute function budget_row_root();
create or replace trigger budget_forecast_backdated_root before insert on budget_forecast_backdated
for each row when (new.root_id is null) execute function budget_row_root();
create or replace trigger budget_forecast_profiles_root before insert on budget_forecast_profiles
for each row when (new.root_id is null) execute function budget_row_root();
create or replace trigger budget_rate_buckets_root before insert on budget_rate_buckets
for each row when (new.root_id is null) execute function budget_row_root();
create or replace trigger budget_recon_corrections_root before insert on budget_recon_corrections
for each row when (new.root_id is null) execute function budget_row_root();
create or replace trigger budget_recon_drifts_root before insert on budget_recon_drifts
for each row when (new.root_id is null) execute function budget_row_root();
create or replace trigger budget_recon_mappings_root before insert on budget_recon_mappings
for each row when (new.root_id is null) execute function budget_row_root();
-- A mapping moved to another budget by an update takes its budget's root: an instance of the version before
-- moves one so (docs/data-model.md, Upgrades). This version's writer names the root, and moves a mapping to
-- another tree by a delete and an insert (lib/reconciliation/reconciliation-repository.ts). Not on Citus: there
-- the trigger runs on a shard, from where its read of every shard is refused, and no update may change a row's
-- distribution column anyway.
create or replace trigger budget_recon_mappings_moved before update of budget_id on budget_recon_mappings
for each row when (new.budget_id is distinct from old.budget_id and not budget_on_citus()) execute function budget_row_root();
create or replace trigger budget_reservations_root before insert on budget_reservations
for each row when (new.root_id is null) execute function budget_row_root();
create or replace trigger budget_shadow_counts_root before insert on budget_shadow_counts
for each row when (new.root_id is null) execute function budget_row_root();
create or replace trigger budget_shadow_windows_root before insert on budget_shadow_windows
for each row when (new.root_id is null) execute function budget_row_root();
create or replace trigger budget_status_cache_root before insert on budget_status_cache
for each row when (new.root_id is null) execute function budget_row_root();
create or replace trigger budget_usage_allocations_root before insert on budget_usage_allocations
for each row when (new.root_id is null) execute function budget_row_root();
create or replace trigger budget_usage_records_root before insert on budget_usage_records
for each row when (new.root_id is null) execute function budget_row_root();
create or replace trigger budget_notification_outbox_root before insert on budget_notification_outbox
for each row when (new.root_id is null) execute function budget_outbox_root();
