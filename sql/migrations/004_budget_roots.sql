-- Every budget carries the id of its tree's root (root_id): a root's is its own id, a child's is its
-- parent's. It is the column the tables will be distributed by (docs/scaling.md), so a budget's root is
-- fixed when it is created: a move within its tree keeps it, and a move that would change it (under a
-- parent in another tree, a root under another tree, a child made a root) is refused by the registry
-- (409 BUDGET_ERR_MOVE_ACROSS_TREES, docs/budgets.md). The constraints below make the rule the
-- database's too: a root is its own root, and a child's (root_id, parent_id) is its parent's (root_id, id).
-- The trigger that fills root_id on insert is in sql/functions/tree.sql.
--
-- Written to run again: each step checks whether it was done. An existing database is filled in place
-- by walking every tree from its roots, archived budgets too; a row no root reaches (a parent_id cycle,
-- which the registry never writes) is named in the error, and nothing changes.
alter table budget_definitions add column if not exists root_id uuid;

-- A live budget under an archived parent (older or hand-written data: the registry refuses to archive a
-- budget with live children) becomes a root, with its subtree: every update checks its parent, which no
-- longer exists for the API, and making it a root afterwards would be a move across trees. An archived
-- budget counts toward no call, so the live budget's calls are counted as before; its usage stays its own.
update budget_definitions b set parent_id = null
where b.root_id is null and b.deleted_at is null and b.parent_id is not null
  and exists (select 1 from budget_definitions p where p.id = b.parent_id and p.deleted_at is not null);

with recursive tree as (
  select b.id, b.id as root_id from budget_definitions b where b.parent_id is null
  union all
  select b.id, t.root_id from tree t join budget_definitions b on b.parent_id = t.id
)
update budget_definitions b set root_id = t.root_id from tree t where b.id = t.id and b.root_id is null;

do $$
declare
  v_unrooted text;
begin
  select string_agg(id::text, ', ' order by id) into v_unrooted from (select id from budget_definitions where root_id is null limit 10) u;
  if v_unrooted is not null then
    raise exception 'budget_definitions has budgets no root reaches (their parent_id make a cycle): %', v_unrooted
      using errcode = 'integrity_constraint_violation';
  end if;
end $$;

alter table budget_definitions alter column root_id set not null;

-- The index on root_id (a tree's budgets), unique with id so a child's key can name its parent's pair.
create unique index if not exists budget_definitions_root on budget_definitions (root_id, id);

do $$
begin
  if not exists (select 1 from pg_constraint where conrelid = 'budget_definitions'::regclass and conname = 'budget_definitions_root_itself') then
    alter table budget_definitions add constraint budget_definitions_root_itself check ((parent_id is null) = (root_id = id));
  end if;
  if not exists (select 1 from pg_constraint where conrelid = 'budget_definitions'::regclass and conname = 'budget_definitions_root_parent_fkey') then
    alter table budget_definitions add constraint budget_definitions_root_parent_fkey
      foreign key (root_id, parent_id) references budget_definitions (root_id, id);
  end if;
end $$;
