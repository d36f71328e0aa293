-- Standings: budgets read for a decision that holds nothing (checkCaller, checkBudgetConstraints, the caller's
-- summary; lib/gate/standing-repository.ts). Each budget's terms, and its numbers for an estimate as a hold
-- would measure them (holds.sql): spent, held, how far approvals let it go, its projected crossings' actions,
-- and whether the estimate, converted into its currency, fits. Reads only; locks nothing.

-- The budgets and windows come in as parallel arrays (budget_applicable's rows, or a budget's lineage:
-- budget_lineage_windows below), each with its tree's root, and go out in the order given. Budget by budget,
-- each statement naming its tree: on Citus each is one shard's. One query joining them to the definitions by
-- id would read every shard, and the functions it calls for each row would be distributed queries inside a
-- shard's, which Citus refuses. An id no budget of its tree has is left out, as that join left it.
create or replace function budget_standings(p_budget_ids uuid[], p_roots uuid[], p_matched boolean[], p_ranks integer[],
  p_starts timestamptz[], p_ends timestamptz[], p_estimate numeric, p_currency text)
returns table (budget_id uuid, root_id uuid, name text, alerts jsonb, currency text, near_limit text, max_call_cost numeric,
               scope_matched boolean, scope_rank integer, period_start timestamptz, period_end timestamptz,
               rate_requests_per_minute integer, rate_tokens_per_minute bigint, amount numeric, enforcement text,
               current_amount numeric, reserved_amount numeric, approved_through numeric, projected_actions text[],
               fits boolean, over_cap boolean, estimate numeric, out_of_range boolean)
language plpgsql stable as $$
declare
  b record;
  rate numeric;
begin
  for i in 1 .. coalesce(cardinality(p_budget_ids), 0) loop
    select d.name, d.alerts, d.currency, d.near_limit, d.max_call_cost, d.rate_requests_per_minute, d.rate_tokens_per_minute,
           d.amount, d.enforcement
    into b from budget_definitions d where d.root_id = p_roots[i] and d.id = p_budget_ids[i];
    continue when not found;
    budget_id := p_budget_ids[i];
    root_id := p_roots[i];
    name := b.name;
    alerts := b.alerts;
    currency := b.currency;
    near_limit := b.near_limit;
    max_call_cost := b.max_call_cost;
    scope_matched := p_matched[i];
    scope_rank := p_ranks[i];
    period_start := p_starts[i];
    period_end := p_ends[i];
    rate_requests_per_minute := b.rate_requests_per_minute;
    rate_tokens_per_minute := b.rate_tokens_per_minute;
    amount := b.amount;
    enforcement := b.enforcement;
    -- the window's cache row; a window without one yet: its allocations summed, nothing held
    select c.current_amount, c.reserved_amount into current_amount, reserved_amount
    from budget_status_cache c where c.root_id = p_roots[i] and c.budget_id = p_budget_ids[i] and c.period_start = p_starts[i];
    if not found then
      select s.current_amount into current_amount from calculate_budget_status_in_tree(p_roots[i], p_budget_ids[i], p_starts[i], p_ends[i]) s;
      reserved_amount := 0;
    end if;
    approved_through := budget_approved_in_tree(p_roots[i], p_budget_ids[i], p_starts[i]);
    projected_actions := budget_projected_actions(p_roots[i], p_budget_ids[i], p_starts[i]);
    -- as a hold would convert it (budget_hold_amount): null without a rate, or past what the budget can hold
    rate := budget_exchange_rate(p_currency, b.currency, now());
    estimate := budget_hold_amount(p_estimate, rate, current_amount, reserved_amount);
    fits := coalesce(budget_fits(b.enforcement, b.amount, current_amount, reserved_amount, estimate)
                     and budget_within_cap(estimate, b.max_call_cost), false);
    over_cap := coalesce(not budget_within_cap(estimate, b.max_call_cost), false);
    out_of_range := estimate is null and rate is not null;
    return next;
  end loop;
end $$;

-- A budget and each live ancestor with a window at p_at, nearest first, as budget_applicable's rows are (the
-- budget itself matched, rank its distance): what a check of one budget stands on. Its root is read once (on
-- Citus, a read of every shard), then every statement names it; the walk is read apart from the windows (on
-- Citus a walk inside a query over the budgets would be a distributed query inside a shard's).
create or replace function budget_lineage_windows(p_budget_id uuid, p_at timestamptz)
returns table (budget_id uuid, scope_matched boolean, scope_rank integer, period_start timestamptz, period_end timestamptz, root_id uuid)
language plpgsql stable as $$
declare
  root uuid;
  ids uuid[];
  depths integer[];
begin
  select d.root_id into root from budget_definitions d where d.id = p_budget_id;
  select array_agg(l.id order by l.depth), array_agg(l.depth order by l.depth) into ids, depths
  from budget_lineage_within(root, p_budget_id) l;
  return query
    select x.id, x.depth = 1, x.depth, w.period_start, w.period_end, root
    from unnest(ids, depths) as x(id, depth)
    join budget_definitions live on live.root_id = root and live.id = x.id and live.deleted_at is null
    -- by the budget's columns: on Citus this part runs on the shard, whose rows are not of budget_definitions' type
    cross join lateral budget_period_window(live.period, live.start_date, live.end_date, live.recurring, p_at, live.timezone,
                                            live.fiscal_year_start_month, live.period_alignment) w
    order by x.depth;
end $$;
