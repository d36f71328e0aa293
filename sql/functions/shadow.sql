-- Shadow budgets' own ledger (migration 008): what each would have done, counted, and the holds it would
-- have refused for an alert action marked. Its fit on room and cap is decided in budget_hold_batch (holds.sql).

-- Records a call's shadow verdicts, one element per shadow budget that would have refused, clamped or
-- downgraded it: a count per (window, code, outcome), and whether the call's hold on that budget is left out
-- of its as-if ledger (as_if_excluded: p_excludes). The hold marks what it refuses on room or cap; this
-- marks a refusal for an alert action (block-all, require-approval, restrict-models), and unmarks a call a
-- clamp or a downgrade would have answered (its as-if spend is then its real one: docs/budgets.md). Locks the
-- call's reservation rows (the lock order, locks.sql), then the count rows (by budget, window, code, outcome).
-- budget_shadow_note_in_trees: each budget's tree given (p_roots[i], the line's), and each statement names one
-- tree (on Citus, one shard's; a count row's insert must name its root, which Citus places it by).
-- budget_shadow_note, the argument list the versions before call: the trees read from the budgets first.
create or replace function budget_shadow_note(p_reservation_id uuid, p_budget_ids uuid[], p_period_starts timestamptz[],
                                              p_codes text[], p_outcomes text[], p_excludes boolean[])
returns void language plpgsql set lock_timeout = '2s' as $$
begin
  perform budget_shadow_note_in_trees(p_reservation_id, p_budget_ids,
    array(select d.root_id from unnest(p_budget_ids) with ordinality as x(id, n) left join budget_definitions d on d.id = x.id order by x.n),
    p_period_starts, p_codes, p_outcomes, p_excludes);
end $$;

create or replace function budget_shadow_note_in_trees(p_reservation_id uuid, p_budget_ids uuid[], p_roots uuid[], p_period_starts timestamptz[],
                                                       p_codes text[], p_outcomes text[], p_excludes boolean[])
returns void language plpgsql set lock_timeout = '2s' as $$
declare
  tree uuid;
begin
  perform budget_lock_reservations(array[p_reservation_id], p_budget_ids, p_roots);
  foreach tree in array budget_line_trees(p_roots, null) loop
    update budget_reservations r set as_if_excluded = x.e
    from unnest(p_budget_ids, p_excludes, p_roots) as x(b, e, root)
    where r.root_id = tree and x.root = tree and r.id = p_reservation_id and r.budget_id = x.b and r.as_if_excluded <> x.e;

    insert into budget_shadow_counts as c (budget_id, root_id, period_start, code, outcome, calls)
    select x.b, tree, x.s, x.c, x.o, count(*)
    from unnest(p_budget_ids, p_roots, p_period_starts, p_codes, p_outcomes) as x(b, root, s, c, o)
    where x.root = tree
    group by x.b, x.s, x.c, x.o
    order by x.b, x.s, x.c, x.o
    on conflict (budget_id, period_start, code, outcome, root_id) do update set calls = c.calls + excluded.calls;
  end loop;
end $$;

-- A shadow window's as-if figures, for its status: the spend a hard twin would have had (the real spend
-- less what it would have refused), the real spend it would have refused, and its counts by code and outcome.
-- budget_shadow_status_in_tree: the budget's tree given, and each read names it (on Citus, one shard's);
-- PL/pgSQL, since Citus cannot plan an SQL function's parameterized reads of distributed tables.
-- budget_shadow_status, the argument list the versions before call: the tree read from the budget first.
create or replace function budget_shadow_status_in_tree(p_root uuid, p_budget_id uuid, p_period_start timestamptz)
returns table (excluded_amount numeric, counts jsonb)
language plpgsql stable as $$
begin
  excluded_amount := coalesce((select s.excluded_amount from budget_shadow_windows s
                               where s.root_id = p_root and s.budget_id = p_budget_id and s.period_start = p_period_start), 0);
  counts := coalesce((select jsonb_agg(jsonb_build_object('code', c.code, 'outcome', c.outcome, 'calls', c.calls) order by c.code, c.outcome)
                      from budget_shadow_counts c where c.root_id = p_root and c.budget_id = p_budget_id and c.period_start = p_period_start), '[]'::jsonb);
  return next;
end $$;

create or replace function budget_shadow_status(p_budget_id uuid, p_period_start timestamptz)
returns table (excluded_amount numeric, counts jsonb)
language plpgsql stable as $$
declare
  tree uuid;
begin
  -- the tree read into a variable first: as a subquery in the call's argument, Citus sent the call to every shard
  -- of budget_definitions, each answering a row (an empty ledger where the budget is not)
  select d.root_id into tree from budget_definitions d where d.id = p_budget_id;
  return query select * from budget_shadow_status_in_tree(tree, p_budget_id, p_period_start);
end $$;

-- A budget that stops being shadow keeps no as-if ledger: its live holds stop being marked as_if_excluded in
-- the change's own transaction, so that a hold in flight settles as spend the budget counts (the settlement
-- adds to excluded_amount only a marked hold of a budget still shadow). The reservation rows, all of its tree,
-- are locked by (id, budget_id), the lock order (locks.sql): a settlement that locked them first has ended them,
-- one that waits for them reads them unmarked.
create or replace function budget_definitions_left_shadow() returns trigger language plpgsql as $$
begin
  perform 1 from budget_reservations r where r.budget_id = new.id and r.as_if_excluded order by r.id, r.budget_id for update;
  update budget_reservations r set as_if_excluded = false where r.budget_id = new.id and r.as_if_excluded;
  return null;
end $$;
create or replace trigger budget_definitions_left_shadow after update of enforcement on budget_definitions
for each row when (old.enforcement = 'shadow' and new.enforcement <> 'shadow') execute function budget_definitions_left_shadow();
