-- What the gate caches from budget definitions: the versions that tell a process its lines are out of
-- date, and the filters that say which calls a budget counts.

-- The global version of the definitions (the table's comment in the baseline; how it moves, below).
create or replace function budget_definitions_version() returns bigint language sql stable as $$
  select version from budget_definitions_version
$$;

-- Two versions tell a gateway process that what it derived from the definitions is out of date
-- (lib/gate/definitions-version.ts reads them):
-- - the global one (budget_definitions_version, above): bumped by the registry as the last statement of
--   every change it makes (lib/budgets/registry.ts), so a process hears of a budget in a tree it has no
--   line in yet (a new budget that now applies to a cached caller);
-- - each tree's (budget_tree_versions, migration 011): bumped by a trigger on every change to a budget of
--   the tree however it is made (the registry, or SQL by hand), and by a crossing whose alert does more
--   than notify (alerts.sql). A process reads the versions of the trees its lines are in.
-- A tree's bump is a trigger on the tree's own rows, writing the tree's own row: on Citus both sit on the
-- tree's shard, where a trigger may write (it may not write the global row, a reference table there).
-- Both bumps wait for the end: no one sees a new version before the change commits, and taken last, a
-- version row's lock is never held while a transaction goes on to lock window rows, so a definition change
-- and a settlement that records a crossing cannot deadlock on it. A transaction may touch several trees (a
-- usage batch, a settlement batch whose lines span trees): it bumps them all at once, in the order of their
-- roots, so two that touch the same trees in opposite orders queue rather than deadlock. Each change names
-- its tree as it happens (budget_tree_touched, in a transaction-local setting, which a rolled-back
-- savepoint takes back with the change); the first deferred trigger to fire at commit bumps every tree named.
create or replace function budget_definitions_bump() returns void language plpgsql as $$
begin
  update budget_definitions_version set version = version + 1;
end $$;

create or replace function budget_tree_touched(p_root_id uuid) returns void language plpgsql as $$
declare
  touched text := coalesce(current_setting('relaycore_budgets.touched_trees', true), '');
begin
  if position(p_root_id::text in touched) = 0 then
    perform set_config('relaycore_budgets.touched_trees', touched || p_root_id::text || ' ', true);
  end if;
end $$;

create or replace function budget_trees_bump() returns trigger language plpgsql as $$
declare
  touched text := coalesce(current_setting('relaycore_budgets.touched_trees', true), '');
  root uuid;
begin
  if touched = '' then return null; end if;
  perform set_config('relaycore_budgets.touched_trees', '', true);
  for root in select distinct t::uuid from regexp_split_to_table(trim(touched), ' ') t order by 1 loop
    insert into budget_tree_versions as v (root_id, version) values (root, 1)
    on conflict (root_id) do update set version = v.version + 1;
  end loop;
  return null;
end $$;

-- A row that moves its tree's version names the tree: a change to a budget (whose root never changes,
-- migration 004: the old row's is the new row's), or a crossing whose alert does more than notify (alerts.sql
-- says why). The bump is at commit. A row's triggers fire in the order of their names, so each naming
-- trigger's name sorts before its bump's (at_change before changed, at_crossing before crossed): under SET
-- CONSTRAINTS ALL IMMEDIATE the bump runs at the end of the statement, and must find the row's tree named.
create or replace function budget_tree_row_touched() returns trigger language plpgsql as $$
begin
  perform budget_tree_touched(case when tg_op = 'DELETE' then old.root_id else new.root_id end);
  return null;
end $$;
create or replace trigger budget_definitions_at_change after insert or update or delete on budget_definitions
for each row execute function budget_tree_row_touched();
drop trigger if exists budget_definitions_changed on budget_definitions;
create constraint trigger budget_definitions_changed after insert or update or delete on budget_definitions
deferrable initially deferred for each row execute function budget_trees_bump();
create or replace trigger budget_gate_action_at_crossing after insert on budget_alert_history
for each row when (not new.actions <@ array['notify']) execute function budget_tree_row_touched();
drop trigger if exists budget_gate_action_crossed on budget_alert_history;
create constraint trigger budget_gate_action_crossed after insert on budget_alert_history
deferrable initially deferred for each row when (not new.actions <@ array['notify']) execute function budget_trees_bump();
-- what the triggers ran before the trees had versions
drop function if exists budget_definitions_changed();
drop function if exists budget_gate_action_crossed();

-- Does a call to p_model carrying p_tags count toward a budget with these filters? The one place the
-- filters are read. By its columns, for a query Citus runs on the shards (a shard's rows are of the
-- shard's own row type, which budget_matches below does not take).
create or replace function budget_filters_match(p_filter_models text[], p_filter_tags jsonb, p_model text, p_tags jsonb) returns boolean
language sql immutable parallel safe as $$
  select (p_filter_models is null or exists (
            select 1 from unnest(p_filter_models) pattern
            where pattern = p_model or (right(pattern, 1) = '*' and starts_with(p_model, left(pattern, -1)))))
     and (p_filter_tags is null or coalesce(p_tags, '{}'::jsonb) @> p_filter_tags)
$$;

-- The same, given the budget's row.
create or replace function budget_matches(b budget_definitions, p_model text, p_tags jsonb) returns boolean
language sql immutable parallel safe as $$
  select budget_filters_match(b.filter_models, b.filter_tags, p_model, p_tags)
$$;
