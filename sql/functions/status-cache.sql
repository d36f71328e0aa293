-- The status cache (budget_status_cache): a window's spend summed from the allocations, and a refresh
-- that puts a row right without stalling the gate.

-- Spend counted toward a budget in a window, summed from the allocations themselves, within the budget's tree
-- (on Citus, one shard's). PL/pgSQL: Citus cannot plan a parameterized SQL-language function's query on a
-- distributed table. calculate_budget_status, with the budget alone: its root is read first.
create or replace function calculate_budget_status_in_tree(p_root uuid, p_budget_id uuid, p_period_start timestamptz, p_period_end timestamptz)
returns table (current_amount numeric, usage_count bigint, last_usage_at timestamptz)
language plpgsql stable as $$
begin
  return query
    select coalesce(sum(a.amount), 0), count(*), max(a.occurred_at)
    from budget_usage_allocations a
    where a.root_id = p_root and a.budget_id = p_budget_id and a.occurred_at >= p_period_start and a.occurred_at < p_period_end;
end $$;
create or replace function calculate_budget_status(p_budget_id uuid, p_period_start timestamptz, p_period_end timestamptz)
returns table (current_amount numeric, usage_count bigint, last_usage_at timestamptz)
language plpgsql stable as $$
begin
  return query select * from calculate_budget_status_in_tree((select d.root_id from budget_definitions d where d.id = p_budget_id),
                                                             p_budget_id, p_period_start, p_period_end);
end $$;

-- A refresh that never stalls the gate. The sum runs outside any lock: in one statement, so under one
-- snapshot, it reads the window's allocations and the cache row as that snapshot sees them; their
-- difference is the row's drift. Increments committed after the snapshot are in neither side (their
-- writers add them to the row themselves), so adding the drift under a brief row lock is exact.
-- refresh_budget_status_cache_in_tree: with the budget's tree, when the caller knows it (the line load does);
-- null, or refresh_budget_status_cache (the argument list the versions before call; a function of its own name,
-- lines.sql's budget_applicable says why): read by the budget's id, on Citus from every shard.
-- an argument list with a default a development build had (it would make a call of the one below ambiguous)
drop function if exists refresh_budget_status_cache(uuid, timestamptz, timestamptz, uuid);
create or replace function refresh_budget_status_cache(p_budget_id uuid, p_period_start timestamptz, p_period_end timestamptz)
returns setof budget_status_cache language plpgsql as $$
begin
  return query select * from refresh_budget_status_cache_in_tree(p_budget_id, p_period_start, p_period_end, null::uuid);
end $$;
create or replace function refresh_budget_status_cache_in_tree(p_budget_id uuid, p_period_start timestamptz, p_period_end timestamptz,
  p_root uuid)
returns setof budget_status_cache language plpgsql as $$
declare
  drift record;
  root uuid := p_root;
begin
  -- every statement names the budget's root: on Citus each is then one shard's
  if root is null then
    select d.root_id into root from budget_definitions d where d.id = p_budget_id;
  end if;
  insert into budget_status_cache (budget_id, root_id, period_start, period_end)
  values (p_budget_id, root, p_period_start, p_period_end)
  on conflict (budget_id, period_start, root_id) do nothing;
  -- the sum of calculate_budget_status, written out: in this one statement it must read the same snapshot as
  -- the row (on Citus a function called here would run apart, on the coordinator, under its own)
  select s.current_amount - c.current_amount as amount, s.usage_count - c.usage_count as calls, s.last_usage_at
  into drift
  from budget_status_cache c,
       (select coalesce(sum(a.amount), 0) as current_amount, count(*) as usage_count, max(a.occurred_at) as last_usage_at
        from budget_usage_allocations a
        where a.root_id = root and a.budget_id = p_budget_id and a.occurred_at >= p_period_start and a.occurred_at < p_period_end) s
  where c.root_id = root and c.budget_id = p_budget_id and c.period_start = p_period_start;
  return query
    update budget_status_cache c
    set current_amount = c.current_amount + drift.amount, usage_count = c.usage_count + drift.calls,
        last_usage_at = greatest(c.last_usage_at, drift.last_usage_at),
        period_end = p_period_end, refreshed_at = now(), updated_at = now()
    where c.root_id = root and c.budget_id = p_budget_id and c.period_start = p_period_start
    returning c.*;
end $$;
