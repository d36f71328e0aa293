-- Each budget tree's version: what a gateway process reads to learn that a tree it keeps lines for has
-- changed (sql/functions/definitions.sql says who bumps it, lib/gate/definitions-version.ts how it is read).
-- One row per tree, written by triggers on that tree's own rows: on Citus the row sits on the tree's shard
-- (distributed by root_id, co-located), where a trigger may write it; a trigger on a shard cannot write the
-- one global row of budget_definitions_version, which is a reference table there.
-- A tree without a row is at version 0. No key to budget_definitions: the row outlives its budgets, so
-- the version never goes back.
create table if not exists budget_tree_versions (
  root_id uuid primary key,
  version bigint not null default 0
);
