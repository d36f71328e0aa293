-- What the gate caches from budget definitions: the version that tells a process its lines are out of
-- date, and the filters that say which calls a budget counts.

-- The definitions' version (the table's comment in the baseline says how processes use it).
create or replace function budget_definitions_version() returns bigint language sql stable as $$
  select version from budget_definitions_version
$$;

-- Every change to budget definitions bumps the version, in the change's own transaction: no one sees the
-- new version before the change. So does a crossing whose alert does more than notify (alerts.sql): it
-- changes what the gate may admit as a definition does, and a lease admits from memory. The bump waits
-- for the commit (a deferred constraint trigger, one bump per row): taken last, the version row's lock
-- is never held while a transaction goes on to lock window rows, so a definition change and a settlement
-- that records a crossing cannot deadlock on it. (A constraint trigger cannot be replaced: it is
-- dropped and created again.)
create or replace function budget_definitions_changed() returns trigger language plpgsql as $$
begin
  update budget_definitions_version set version = version + 1;
  return null;
end $$;
drop trigger if exists budget_definitions_changed on budget_definitions;
create constraint trigger budget_definitions_changed after insert or update or delete on budget_definitions
deferrable initially deferred for each row execute function budget_definitions_changed();

-- Does a call to p_model carrying p_tags count toward the budget? The one place the filters are read.
create or replace function budget_matches(b budget_definitions, p_model text, p_tags jsonb) returns boolean
language sql immutable parallel safe as $$
  select (b.filter_models is null or exists (
            select 1 from unnest(b.filter_models) pattern
            where pattern = p_model or (right(pattern, 1) = '*' and starts_with(p_model, left(pattern, -1)))))
     and (b.filter_tags is null or coalesce(p_tags, '{}'::jsonb) @> b.filter_tags)
$$;
