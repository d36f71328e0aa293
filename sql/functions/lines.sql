-- A caller's line: the budgets that apply to a call, resolved once per caller, window and process.

-- The budgets that apply to a call: the live budgets of each (scope type, scope id) and all their
-- ancestors, each once, that have a period window at p_at and whose filters the call matches (a filtered
-- budget that does not match is left out; its ancestors still apply, each on its own filters). scope_rank
-- orders them: by the position of the scope they came from (callers list the most specific scope first),
-- then by distance from it, so a budget matched directly comes before the same budget reached as an
-- ancestor. Every budget applies whatever its currency: p_currency is not read (it stays in the
-- signature); what a budget in another currency holds is converted where it is held.
-- PL/pgSQL in steps, so that on Citus each is one a distributed plan can take: the budgets the scopes name
-- (a read of every shard), then each one's lineage within its tree (one shard's), then the windows.
-- Each budget's root comes with it (added last: a result's columns change only at the end, docs/data-model.md).
-- p_roots: the trees the scopes' budgets are in, when the caller knows them (the line load on Citus, which
-- reads them first: budget_scope_trees); only those trees are read, one statement a tree. Null: every tree.
-- budget_applicable, without it (the argument list the versions before call): every tree. A function of its own
-- name rather than a default: a version before that made its argument list again beside one with defaults would
-- make every call of it ambiguous.
drop function if exists budget_applicable(text[], text[], text, timestamptz, text, jsonb);
-- an argument list with a default a development build had (it would make a call of the one below ambiguous)
drop function if exists budget_applicable(text[], text[], text, timestamptz, text, jsonb, uuid[]);
create or replace function budget_applicable(p_scope_types text[], p_scope_ids text[], p_currency text, p_at timestamptz, p_model text, p_tags jsonb)
returns table (budget_id uuid, scope_matched boolean, scope_rank integer, period_start timestamptz, period_end timestamptz, root_id uuid)
language plpgsql stable as $$
begin
  return query select * from budget_applicable_in_trees(p_scope_types, p_scope_ids, p_currency, p_at, p_model, p_tags, null::uuid[]);
end $$;
create or replace function budget_applicable_in_trees(p_scope_types text[], p_scope_ids text[], p_currency text, p_at timestamptz, p_model text, p_tags jsonb,
  p_roots uuid[])
returns table (budget_id uuid, scope_matched boolean, scope_rank integer, period_start timestamptz, period_end timestamptz, root_id uuid)
language plpgsql stable as $$
declare
  tree uuid;
  -- the budgets the scopes name: each one's id, root, and the rank of the scope that named it
  named_ids uuid[] := '{}'::uuid[];
  named_roots uuid[] := '{}'::uuid[];
  named_ranks integer[] := '{}'::integer[];
  ids uuid[] := '{}'::uuid[];
  roots uuid[] := '{}'::uuid[];
  direct boolean[] := '{}'::boolean[];
  ranks integer[] := '{}'::integer[];
begin
  if p_roots is null then
    select coalesce(array_agg(m.id), '{}'), coalesce(array_agg(m.root_id), '{}'), coalesce(array_agg(s.rank::integer), '{}')
    into named_ids, named_roots, named_ranks
    from unnest(p_scope_types, p_scope_ids) with ordinality as s(scope_type, scope_id, rank)
    join budget_definitions m on m.scope_type = s.scope_type and m.scope_id = s.scope_id and m.deleted_at is null;
  else
    -- one statement a tree, each naming it (a condition on p_roots beside it would keep Citus from routing it)
    foreach tree in array p_roots loop
      select named_ids || coalesce(array_agg(m.id), '{}'), named_roots || coalesce(array_agg(m.root_id), '{}'),
             named_ranks || coalesce(array_agg(s.rank::integer), '{}')
      into named_ids, named_roots, named_ranks
      from unnest(p_scope_types, p_scope_ids) with ordinality as s(scope_type, scope_id, rank)
      join budget_definitions m on m.root_id = tree and m.scope_type = s.scope_type and m.scope_id = s.scope_id and m.deleted_at is null;
    end loop;
  end if;
  for i in 1 .. cardinality(named_ids) loop
    select ids || array_agg(l.id), roots || array_agg(named_roots[i]), direct || array_agg(l.depth = 1), ranks || array_agg(named_ranks[i] * 100 + l.depth)
    into ids, roots, direct, ranks
    from budget_lineage_within(named_roots[i], named_ids[i]) l;
  end loop;
  -- tree by tree, each statement naming its tree (on Citus, one shard's)
  foreach tree in array array(select distinct r.root from unnest(roots) as r(root) order by 1) loop
    return query
      select b.id, bool_or(x.direct), min(x.rank)::integer, w.period_start, w.period_end, b.root_id
      from unnest(ids, roots, direct, ranks) as x(id, root_id, direct, rank)
      join budget_definitions b on b.root_id = tree and b.id = x.id and b.deleted_at is null
      -- by the budget's columns: on Citus this part runs on the shards, whose rows are not of budget_definitions' type
      cross join lateral budget_period_window(b.period, b.start_date, b.end_date, b.recurring, p_at, b.timezone,
                                              b.fiscal_year_start_month, b.period_alignment) w
      where x.root_id = tree and budget_filters_match(b.filter_models, b.filter_tags, p_model, p_tags)
      group by b.root_id, b.id, w.period_start, w.period_end;
  end loop;
end $$;

-- The trees the scopes' live budgets are in, in root order, and the definitions' global version read before
-- them: the line load on Citus reads these first (a read of every shard: a caller's scopes do not say which
-- trees), then sends budget_line to the node of the first tree with the trees named. A line is stamped with
-- this version, never a newer one: a budget made in another tree after this read bumps past it, and the line
-- is forgotten at the next read of the version.
create or replace function budget_scope_trees(p_scope_types text[], p_scope_ids text[], out roots uuid[], out version bigint)
language plpgsql stable as $$
begin
  version := budget_definitions_version();
  roots := coalesce((select array_agg(distinct m.root_id order by m.root_id)
                     from unnest(p_scope_types, p_scope_ids) as s(scope_type, scope_id)
                     join budget_definitions m on m.scope_type = s.scope_type and m.scope_id = s.scope_id and m.deleted_at is null), '{}');
end $$;

-- The budget line of a caller, for the process's cache: every budget that applies (budget_applicable),
-- with what the gate needs to decide (its rate limits, its currency: the gate leases only lines in its own
-- currency; its near-limit policy, null: the gate's; its cap on one call, which keeps a call over it off the
-- leases), each window's cache row made sure of, and the versions it was read at: the definitions' global
-- one, and each budget's tree's (definitions.sql). Runs once per caller, window and process, not per call.
-- A window seen for the first time, or one whose row was made for another window that began at the same instant
-- (the budget's period changed since), is recomputed from the allocations.
-- Its enforcement too: a line with a shadow budget is held call by call, never leased (a shadow budget is
-- judged on its as-if ledger, which only a hold reads).
-- Its result's columns changed (enforcement, then the tree's version): a function's row type cannot be replaced, only dropped and made again.
--
-- p_roots: the trees the scopes' budgets are in (budget_scope_trees), when the caller read them first: only
-- those are read, one statement a tree, and on Citus p_root (the first of them) sends the call to that tree's
-- node (sql/citus/delegate.sql). Null: every tree, read here. budget_line, without them (the argument list
-- the versions before call): every tree; a function of its own name, as budget_applicable's above says (and a
-- version before that makes budget_line again is refused: its result differs).
drop function if exists budget_line(text[], text[], text, text, jsonb);
-- an argument list with defaults a development build had (it would make a call of the one below ambiguous)
drop function if exists budget_line(text[], text[], text, text, jsonb, uuid[], uuid);
create or replace function budget_line(p_scope_types text[], p_scope_ids text[], p_currency text, p_model text, p_tags jsonb)
returns table (budget_id uuid, name text, alerts jsonb, scope_matched boolean, scope_rank integer,
               period_start timestamptz, period_end timestamptz, definitions_version bigint,
               rate_requests_per_minute integer, rate_tokens_per_minute bigint, currency text, near_limit text, max_call_cost numeric,
               enforcement text, root_id uuid, tree_version bigint)
language plpgsql as $$
begin
  return query select * from budget_line_in_trees(p_scope_types, p_scope_ids, p_currency, p_model, p_tags, null::uuid[], '00000000-0000-0000-0000-000000000000'::uuid);
end $$;
create or replace function budget_line_in_trees(p_scope_types text[], p_scope_ids text[], p_currency text, p_model text, p_tags jsonb,
  p_roots uuid[], p_root uuid)
returns table (budget_id uuid, name text, alerts jsonb, scope_matched boolean, scope_rank integer,
               period_start timestamptz, period_end timestamptz, definitions_version bigint,
               rate_requests_per_minute integer, rate_tokens_per_minute bigint, currency text, near_limit text, max_call_cost numeric,
               enforcement text, root_id uuid, tree_version bigint)
language plpgsql as $$
declare
  applicable record;
  tree uuid;
  ids uuid[] := '{}'::uuid[];
  roots uuid[] := '{}'::uuid[];
  matched boolean[] := '{}'::boolean[];
  ranks integer[] := '{}'::integer[];
  starts timestamptz[] := '{}'::timestamptz[];
  ends timestamptz[] := '{}'::timestamptz[];
  -- each budget's terms, by its id, read tree by tree
  terms jsonb := '{}'::jsonb;
  -- The versions are read first, the global one and those of the trees the scopes name (every budget of the
  -- line is in one of them), so whatever is read after is as new or newer: a line is never stamped with a
  -- version newer than what it holds (a change committed while the line loads, a refresh below may wait, is
  -- then met by a newer version at the next read, and the line forgotten). Read here, not in the query at the
  -- end: on Citus that runs on the shards, where a read of the reference table would be a distributed query.
  global_version bigint := budget_definitions_version();
  tree_roots uuid[] := '{}'::uuid[];
  tree_versions bigint[] := '{}'::bigint[];
begin
  if p_roots is null then
    select coalesce(array_agg(t.root_id), '{}'::uuid[]) into tree_roots
    from (select distinct m.root_id from unnest(p_scope_types, p_scope_ids) as s(scope_type, scope_id)
          join budget_definitions m on m.scope_type = s.scope_type and m.scope_id = s.scope_id and m.deleted_at is null) t;
  else
    tree_roots := budget_line_trees(p_roots, null);
  end if;
  foreach tree in array tree_roots loop
    tree_versions := tree_versions || coalesce((select v.version from budget_tree_versions v where v.root_id = tree), 0);
  end loop;
  for applicable in
    select a.budget_id, a.root_id, a.scope_matched, a.scope_rank, a.period_start, a.period_end
    from budget_applicable_in_trees(p_scope_types, p_scope_ids, p_currency, now(), p_model, p_tags, p_roots) a order by a.budget_id
  loop
    ids := ids || applicable.budget_id;
    roots := roots || applicable.root_id;
    matched := matched || applicable.scope_matched;
    ranks := ranks || applicable.scope_rank;
    starts := starts || applicable.period_start;
    ends := ends || applicable.period_end;
    if not exists (select 1 from budget_status_cache c
                   where c.root_id = applicable.root_id and c.budget_id = applicable.budget_id
                     and c.period_start = applicable.period_start and c.period_end = applicable.period_end) then
      perform refresh_budget_status_cache_in_tree(applicable.budget_id, applicable.period_start, applicable.period_end, applicable.root_id);
    end if;
  end loop;
  -- each tree's budgets by a statement that names it (on Citus, one shard's); money as text, kept exact
  foreach tree in array array(select distinct r.root from unnest(roots) as r(root) order by 1) loop
    select terms || coalesce(jsonb_object_agg(b.id::text, jsonb_build_object(
             'name', b.name, 'alerts', b.alerts, 'requests', b.rate_requests_per_minute, 'tokens', b.rate_tokens_per_minute::text,
             'currency', b.currency, 'near_limit', b.near_limit, 'max_call_cost', b.max_call_cost::text, 'enforcement', b.enforcement)), '{}'::jsonb)
    into terms
    from budget_definitions b where b.root_id = tree and b.id = any (ids);
  end loop;
  return query
    select a.budget_id, t.terms ->> 'name', t.terms -> 'alerts', a.scope_matched, a.scope_rank, a.period_start, a.period_end, global_version,
           (t.terms ->> 'requests')::integer, (t.terms ->> 'tokens')::bigint, t.terms ->> 'currency', t.terms ->> 'near_limit',
           (t.terms ->> 'max_call_cost')::numeric, t.terms ->> 'enforcement', a.root_id, coalesce(v.version, 0)
    from unnest(ids, roots, matched, ranks, starts, ends) as a(budget_id, root_id, scope_matched, scope_rank, period_start, period_end)
    cross join lateral (select terms -> a.budget_id::text as terms) t
    -- a tree not read above (a budget the scopes named only after): 0, older than any, so the line is not kept
    left join unnest(tree_roots, tree_versions) as v(root_id, version) on v.root_id = a.root_id
    where t.terms is not null
    order by a.scope_matched desc, a.scope_rank, a.budget_id;
end $$;
