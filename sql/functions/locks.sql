-- THE LOCK ORDER, and the two functions that take it. Every statement that locks several reservation or
-- window rows takes them through these, and each function that does relies on it:
--   1. reservation rows (budget_reservations), tree by tree in the order of their roots, and within a tree
--      by (id, budget_id);
--   2. window rows (budget_status_cache), tree by tree in the order of their roots, and within a tree by
--      (budget_id, period_start).
-- That is, by (root_id, id, budget_id) and then by (root_id, budget_id, period_start). An unordered
-- `for update` locks rows in whatever order its plan reads them (an index scan by key, a sequential scan by
-- where the row's latest version lies), so two statements on the same lease could take its rows in
-- opposite orders and deadlock: PostgreSQL then killed a lease's give-back, and its unused slice stayed held
-- until it was swept as spend.
--
-- Why tree by tree: on Citus a tree's rows sit on one node, and a `for update` is run only by a statement
-- that stays on one (a statement locking the rows of two trees is refused: "could not run distributed query
-- with FOR UPDATE/SHARE commands"). So there each tree's rows are locked by a statement of their own that
-- names the root, the trees taken in one order, as the tree versions' bump at commit takes them
-- (definitions.sql). On plain PostgreSQL one statement locks them all in the same order: the roots need no
-- reading first, and a settlement is not a statement a tree longer (budget_on_citus).
--
-- Who locks what: the settlements (settlements.sql), the leases (leases.sql) and the sweeper (sweeper.sql)
-- take both kinds, reservation rows first; budget_hold_batch (holds.sql) and budget_record_spend (spend.sql:
-- the usage API's record, the usage trigger and the batch collector, usage-recording.sql, record through it (the
-- API's record makes a window's missing row first, in the same order), and so do the
-- settlements, after their reservation rows) lock window rows only; budget_shadow_note (shadow.sql) locks
-- reservation rows only. A change to one budget (a window change, window-changes.sql; an alert following its
-- definition, alerts.sql; a budget leaving shadow, shadow.sql) locks rows of that budget's tree alone, in the
-- same order within it. The rate-limit functions (rate-limits.sql) lock bucket rows only, by budget id.

-- Whether this database is distributed by Citus: its metadata catalog is there once the extension is.
create or replace function budget_on_citus() returns boolean language sql stable parallel safe as $$
  select to_regclass('pg_catalog.pg_dist_partition') is not null
$$;

-- The trees of a line's statement (a hold, a lease take; the trees a line load, a sweep or a shadow note is told):
-- p_roots when given (a window in none of them is out of date there), else those of the budgets p_budgets (a read
-- on every shard on Citus), in root order, each once, without a null. (It was
-- budget_lease_trees, in leases.sql.)
drop function if exists budget_lease_trees(uuid[], uuid[]);
create or replace function budget_line_trees(p_roots uuid[], p_budgets uuid[]) returns uuid[]
language plpgsql stable as $$
begin
  if p_roots is not null then
    return coalesce((select array_agg(distinct x.root order by x.root) from unnest(p_roots) as x(root) where x.root is not null), '{}');
  end if;
  return coalesce((select array_agg(distinct d.root_id order by d.root_id) from budget_definitions d where d.id = any (p_budgets)), '{}');
end $$;

-- The trees of the reservations p_ids, in root order: a settlement's, a lease return's or renewal's. On plain
-- PostgreSQL, read from their rows (one index read): a caller's p_roots bounds nothing there. On Citus, read
-- by id alone reaches every shard, so the trees p_roots names are checked instead, a tree at a time: when
-- every reservation has rows in them, and every row's own list of its reservation's trees (trees, migration
-- 012) is among them, they are the trees. Otherwise (told too few, a reservation already ended, or a row of
-- the version before, which has no list) they are read from the rows.
create or replace function budget_reservation_trees(p_roots uuid[], p_ids uuid[]) returns uuid[]
language plpgsql stable as $$
declare
  named uuid[];
  tree uuid;
  seen uuid[] := '{}'::uuid[];
  complete boolean := true;
begin
  if p_roots is not null and budget_on_citus() then
    named := coalesce((select array_agg(distinct x.root order by x.root) from unnest(p_roots) as x(root) where x.root is not null), '{}');
    foreach tree in array named loop
      select seen || coalesce(array_agg(distinct r.id), '{}'),
             complete and coalesce(bool_and(r.trees is not null and r.trees <@ named), true)
      into seen, complete
      from budget_reservations r where r.root_id = tree and r.id = any (p_ids);
    end loop;
    if complete and not exists (select 1 from unnest(p_ids) as i(id) where i.id <> all (seen)) then
      return named;
    end if;
  end if;
  return coalesce((select array_agg(distinct r.root_id order by r.root_id) from budget_reservations r where r.id = any (p_ids)), '{}');
end $$;

-- Locks the rows of the reservations p_ids (of every budget, or of p_budgets when given), in the lock order;
-- rows that are not there lock nothing. Returns how many were locked. p_roots: the trees the rows are in, as
-- the caller knows them (on Citus, none is read: each tree's rows are locked by their root); null: read from
-- the rows, on every shard there. A row in a tree p_roots leaves out is not locked.
drop function if exists budget_lock_reservations(uuid[], uuid[]);
create or replace function budget_lock_reservations(p_ids uuid[], p_budgets uuid[] default null, p_roots uuid[] default null)
returns integer language plpgsql as $$
declare
  trees uuid[];
  root uuid;
  locked integer := 0;
  n integer;
begin
  if not budget_on_citus() then
    perform 1 from budget_reservations r
    where r.id = any (p_ids) and (p_budgets is null or r.budget_id = any (p_budgets))
    order by r.root_id, r.id, r.budget_id for update;
    get diagnostics locked = row_count;
    return locked;
  end if;
  -- a reservation's rows never change tree (a move across trees is refused), so the roots read here are the
  -- rows' roots when they are locked
  if p_roots is not null then
    select array_agg(distinct x.root order by x.root) into trees from unnest(p_roots) as x(root);
  else
    select array_agg(distinct r.root_id order by r.root_id) into trees from budget_reservations r
    where r.id = any (p_ids) and (p_budgets is null or r.budget_id = any (p_budgets));
  end if;
  foreach root in array coalesce(trees, '{}') loop
    perform 1 from budget_reservations r
    where r.root_id = root and r.id = any (p_ids) and (p_budgets is null or r.budget_id = any (p_budgets))
    order by r.id, r.budget_id for update;
    get diagnostics n = row_count;
    locked := locked + n;
  end loop;
  return locked;
end $$;

-- Locks the window rows (p_budgets[i], p_starts[i]), and only those whose period ends at p_ends[i] when
-- p_ends is given, in the lock order; rows that are not there lock nothing. Returns how many were locked.
-- p_roots as for budget_lock_reservations.
drop function if exists budget_lock_windows(uuid[], timestamptz[], timestamptz[]);
create or replace function budget_lock_windows(p_budgets uuid[], p_starts timestamptz[], p_ends timestamptz[] default null, p_roots uuid[] default null)
returns integer language plpgsql as $$
declare
  trees uuid[];
  root uuid;
  locked integer := 0;
  n integer;
begin
  if not budget_on_citus() then
    perform 1 from budget_status_cache c
    join (select distinct k.b, k.s, k.e from unnest(p_budgets, p_starts, p_ends) as k(b, s, e)) k
      on c.budget_id = k.b and c.period_start = k.s and (k.e is null or c.period_end = k.e)
    order by c.root_id, c.budget_id, c.period_start for update of c;
    get diagnostics locked = row_count;
    return locked;
  end if;
  -- the trees as the caller names them (its lines know them), else read from the rows: on every shard
  if p_roots is not null then
    select array_agg(distinct x.root order by x.root) into trees from unnest(p_roots) as x(root);
  else
    select array_agg(distinct c.root_id order by c.root_id) into trees from budget_status_cache c
    join unnest(p_budgets, p_starts, p_ends) as k(b, s, e)
      on c.budget_id = k.b and c.period_start = k.s and (k.e is null or c.period_end = k.e);
  end if;
  foreach root in array coalesce(trees, '{}') loop
    perform 1 from budget_status_cache c
    where c.root_id = root
      and (c.budget_id, c.period_start) in (select k.b, k.s from unnest(p_budgets, p_starts, p_ends) as k(b, s, e)
                                            where k.e is null or k.e = c.period_end)
    order by c.budget_id, c.period_start for update;
    get diagnostics n = row_count;
    locked := locked + n;
  end loop;
  return locked;
end $$;
