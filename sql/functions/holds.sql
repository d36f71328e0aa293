-- Holds: a gated call's estimate held on every budget of its line, or on none, until it settles. The
-- lock order: locks.sql.

-- Whether spending p_amount fits a budget now: the one place this rule lives (the hold, check
-- constraints and the caller summary read it; lib/gate/decision.ts reads their answer). A soft or shadow
-- budget always takes it; a hard one while settled + reserved + amount stays within its limit. (A shadow
-- budget's own verdict is this rule read as 'hard' on its as-if ledger: budget_hold_batch.)
create or replace function budget_fits(p_enforcement text, p_limit numeric, p_current numeric, p_reserved numeric, p_amount numeric)
returns boolean language sql immutable parallel safe as $$
  select p_enforcement in ('soft', 'shadow') or p_current + p_reserved + p_amount <= p_limit
$$;

-- Whether a call whose worst case is p_held (in the budget's currency, as held) is within the budget's cap on
-- the cost of one call (maxCallCost; null: no cap): the one place this rule lives. Apart from the room: a soft
-- budget's cap refuses too. (The gate routes a call over a cap past its leases to a hold, which reads this.)
create or replace function budget_within_cap(p_held numeric, p_cap numeric)
returns boolean language sql immutable parallel safe as $$
  select p_cap is null or p_held <= p_cap
$$;

-- How far approvals let a budget's spend go in a window now (null: no approval in force). Named by its tree's
-- root too: on Citus a statement reaches one node when it names the root.
create or replace function budget_approved_in_tree(p_root uuid, p_budget_id uuid, p_period_start timestamptz)
returns numeric language plpgsql stable as $$
begin
  return (select max(a.spent_at_approval + a.amount) from budget_approvals a
          where a.root_id = p_root and a.budget_id = p_budget_id and a.period_start = p_period_start and a.expires_at > now());
end $$;

-- The same, found by the budget alone: what instances of the version before call (their caller summary), kept
-- while a rolling upgrade may still run them beside this one.
create or replace function budget_approved_through(p_budget_id uuid, p_period_start timestamptz)
returns numeric language plpgsql stable as $$
begin
  return budget_approved_in_tree((select d.root_id from budget_definitions d where d.id = p_budget_id), p_budget_id, p_period_start);
end $$;

-- The actions of a window's active projected crossings: a projected crossing stays crossed for the rest of
-- its period, until the definition resolves it (alerts.sql); current ones follow the numbers.
create or replace function budget_projected_actions(p_root uuid, p_budget_id uuid, p_period_start timestamptz)
returns text[] language plpgsql stable as $$
begin
  return array(select distinct action from budget_alert_history h, unnest(h.actions) as action
               where h.root_id = p_root and h.budget_id = p_budget_id and h.period_start = p_period_start and h.basis = 'projected'
                 and h.resolved_at is null);
end $$;

-- The estimate converted at p_rate as a hold on a window with p_current spent and p_reserved held: null when
-- there is no rate, or when the amount or the window's total with it would be past what money can hold.
create or replace function budget_hold_amount(p_amount numeric, p_rate numeric, p_current numeric, p_reserved numeric) returns numeric
language sql immutable parallel safe as $$
  select case when ceil(p_amount * p_rate * 10000000000) < 10000000000000000000000000000
               and p_current + p_reserved + ceil(p_amount * p_rate * 10000000000) * 0.0000000001 < 1000000000000000000
         then budget_convert(p_amount, p_rate) end
$$;

-- Holds for a batch of calls in one statement (group commit): the calls that arrived together while the
-- previous batch was in PostgreSQL. Their window rows are locked once, in the lock order (locks.sql), and
-- the calls are admitted one after another in arrival order, each on all of its budgets or none
-- (budget_fits against what the calls before it took, and budget_within_cap: a call over a budget's
-- cap does not fit it, over_cap). Then one update per window row and one insert of
-- every admitted call's reservation rows. A call whose windows are not current (a rollover, a cache row
-- gone) holds nothing and is told so, to reload its line. Rows (p_row_*) name each call's budgets by the
-- call's position (1-based) in p_reservation_ids.
--
-- Each budget's share is converted into its currency at the rate in force now, rounded up: a budget with
-- no rate in force holds nothing (its rows say so: held and exchange_rate null), and neither does one on
-- which the converted estimate cannot be held (past 10^18: out_of_range, a refusal of that call,
-- estimate_out_of_range in lib/gate/decision.ts, never an error of the statement, which holds a batch
-- of other calls too). The projected actions are those of the window's active projected crossings (a
-- projected crossing stays crossed for the rest of its period, until the definition resolves it).
--
-- The batch names its budgets' trees (p_roots: the caller's lines know them; null, as the version before
-- calls it: read from the budgets), and each statement here reads or writes one tree's rows. On Citus the
-- call runs on the node of p_root's tree (sql/citus/delegate.sql), the gate's batches are of one tree (or of
-- the trees of a line that spans several, reached from there), and so a one-tree batch runs whole on one
-- node. p_root chooses the node only; it defaults to the nil root, never to null (delegate.sql says why).
--
-- A hot budget's queue must not hold a pooled connection for long: a hold that cannot get its locks within
-- 2 s fails (SQLSTATE 55P03) and the gate answers by its failure mode.
--
-- A shadow budget (enforcement 'shadow') never refuses. One on which the estimate cannot be held (no rate,
-- out of range) holds nothing (no reservation row: the settlement records none of the call's spend on it),
-- its verdict is shadow_fits false, and the call's other budgets decide. One that can takes every call, and
-- is judged beside it as a hard one would be, on its as-if ledger (migration 008): spend less
-- excluded_amount, held less its holds marked
-- as_if_excluded, and the same fit and cap rules (budget_fits read as 'hard', budget_within_cap). Its rows
-- report that ledger (current_amount, reserved_amount), its cap (over_cap) and the verdict (shadow_fits;
-- null on other budgets), so that lib/gate/decision.ts judges it as a hard budget; a hold it would have
-- refused is marked as_if_excluded here, under the same lock, so the next call sees the as-if ledger of a
-- hard twin. Its excluded_amount is read after the window rows are locked (the lock order: 008).
-- Its result's columns change (shadow_fits did): a function's row type cannot be replaced, only dropped and made
-- again, so the file drops it, in its argument list of before (without the trees) and in this one.
drop function if exists budget_hold_batch(uuid[], numeric[], text[], text, interval, integer[], uuid[], timestamptz[], timestamptz[], boolean[], integer[], boolean, boolean);
drop function if exists budget_hold_batch(uuid[], numeric[], text[], text, interval, integer[], uuid[], timestamptz[], timestamptz[], boolean[], integer[], boolean, boolean, uuid[], uuid);
create or replace function budget_hold_batch(
  p_reservation_ids uuid[], p_amounts numeric[], p_request_ids text[], p_currency text, p_ttl interval,
  p_row_calls integer[], p_row_budgets uuid[], p_row_starts timestamptz[], p_row_ends timestamptz[],
  p_row_matched boolean[], p_row_ranks integer[], p_need_approvals boolean, p_need_projected boolean,
  p_roots uuid[] default null, p_root uuid default '00000000-0000-0000-0000-000000000000'
) returns table (call_index integer, budget_id uuid, amount numeric, enforcement text, current_amount numeric,
                 reserved_amount numeric, fits boolean, is_current boolean, is_reserved boolean,
                 approved_through numeric, projected_actions text[], definitions_version bigint,
                 held numeric, exchange_rate numeric, out_of_range boolean, over_cap boolean, shadow_fits boolean)
language plpgsql set lock_timeout = '2s' as $$
#variable_conflict use_column
declare
  keys uuid[]; starts timestamptz[]; limits numeric[]; enforcements text[]; currents numeric[]; reserveds numeric[]; added numeric[];
  currencies text[]; version bigint;
  trees uuid[]; tree uuid; roots uuid[]; rates numeric[]; caps numeric[]; row_held numeric[]; row_out_of_range boolean[]; row_over_cap boolean[];
  row_window integer[];
  call_current boolean[]; call_reserved boolean[]; call_fits boolean;
  row_reserved_before numeric[]; row_fits boolean[];
  -- shadow windows: whether each is one, its as-if spend and held amount, what admitted calls added to the
  -- latter, and each row's verdict
  shadows boolean[]; asif_currents numeric[]; asif_reserveds numeric[]; asif_added numeric[]; row_shadow_fits boolean[];
  shadow_excluded numeric; shadow_held numeric;
  calls integer := coalesce(array_length(p_reservation_ids, 1), 0);
  rows_count integer := coalesce(array_length(p_row_calls, 1), 0);
  w integer;
begin
  -- the trees of the batch's budgets, as the caller names them (its lines know them), else read from their
  -- rows (on Citus, on every shard); each statement below then names one tree, so that on Citus it runs on
  -- that tree's node alone
  trees := budget_line_trees(p_roots, p_row_budgets);

  -- the current windows' rows, in the lock order (locks.sql)
  perform budget_lock_windows(array_agg(r.b), array_agg(r.s), array_agg(r.e), trees)
  from unnest(p_row_budgets, p_row_starts, p_row_ends) as r(b, s, e) where r.s <= now() and now() < r.e;

  foreach tree in array trees loop
    select keys || array_agg(c.budget_id order by c.budget_id, c.period_start), starts || array_agg(c.period_start order by c.budget_id, c.period_start),
           limits || array_agg(d.amount order by c.budget_id, c.period_start), enforcements || array_agg(d.enforcement order by c.budget_id, c.period_start),
           currents || array_agg(c.current_amount order by c.budget_id, c.period_start), reserveds || array_agg(c.reserved_amount order by c.budget_id, c.period_start),
           currencies || array_agg(d.currency order by c.budget_id, c.period_start),
           -- each budget's cap on one call, read with its limit under the lock
           caps || array_agg(d.max_call_cost order by c.budget_id, c.period_start),
           roots || array_agg(c.root_id order by c.budget_id, c.period_start)
    into keys, starts, limits, enforcements, currents, reserveds, currencies, caps, roots
    from budget_status_cache c
    join budget_definitions d on d.root_id = c.root_id and d.id = c.budget_id
    join (select distinct r.b, r.s, r.e from unnest(p_row_budgets, p_row_starts, p_row_ends) as r(b, s, e) where r.s <= now() and now() < r.e) x
      on c.budget_id = x.b and c.period_start = x.s and c.period_end = x.e
    where c.root_id = tree;
  end loop;
  -- each window's rate from the calls' currency into its budget's, in force now (null: none is); read apart
  -- from the rows above: on Citus those are read on the trees' nodes, and the rates are a reference table
  select array_agg(budget_exchange_rate(p_currency, x.currency, now()) order by x.n) into rates
  from unnest(currencies) with ordinality as x(currency, n);
  keys := coalesce(keys, '{}'); added := array_fill(0::numeric, array[coalesce(array_length(keys, 1), 0)]);
  asif_added := added;
  shadows := array_fill(false, array[coalesce(array_length(keys, 1), 0)]);
  asif_currents := currents; asif_reserveds := reserveds;
  for ki in 1 .. coalesce(array_length(keys, 1), 0) loop
    continue when enforcements[ki] <> 'shadow';
    shadows[ki] := true;
    -- reads into variables, not assignments to an element: Citus runs a query in an element's assignment by its
    -- text, "x[i] := ...", which is no statement ("syntax error at or near :=")
    select coalesce(sum(s.excluded_amount), 0) into shadow_excluded from budget_shadow_windows s
    where s.root_id = roots[ki] and s.budget_id = keys[ki] and s.period_start = starts[ki];
    select coalesce(sum(r.amount), 0) into shadow_held from budget_reservations r
    where r.root_id = roots[ki] and r.budget_id = keys[ki] and r.period_start = starts[ki] and r.as_if_excluded;
    asif_currents[ki] := currents[ki] - shadow_excluded;
    asif_reserveds[ki] := reserveds[ki] - shadow_held;
  end loop;

  -- Which locked window each row names (null: its window is not current or has no row).
  row_window := array_fill(null::integer, array[rows_count]);
  for ri in 1 .. rows_count loop
    for ki in 1 .. coalesce(array_length(keys, 1), 0) loop
      if keys[ki] = p_row_budgets[ri] and starts[ki] = p_row_starts[ri] then row_window[ri] := ki; end if;
    end loop;
  end loop;

  call_current := array_fill(true, array[calls]);
  call_reserved := array_fill(false, array[calls]);
  row_reserved_before := array_fill(null::numeric, array[rows_count]);
  row_fits := array_fill(false, array[rows_count]);
  row_held := array_fill(null::numeric, array[rows_count]);
  row_out_of_range := array_fill(false, array[rows_count]);
  row_over_cap := array_fill(false, array[rows_count]);
  row_shadow_fits := array_fill(null::boolean, array[rows_count]);
  for ci in 1 .. calls loop
    call_fits := true;
    for ri in 1 .. rows_count loop
      continue when p_row_calls[ri] <> ci;
      w := row_window[ri];
      if w is null then call_current[ci] := false; continue; end if;
      row_reserved_before[ri] := reserveds[w] + added[w];
      -- the estimate in the budget's currency, rounded up; a budget without a rate in force, or on which it
      -- cannot be held (past 10^18), holds nothing
      row_held[ri] := budget_hold_amount(p_amounts[ci], rates[w], currents[w], reserveds[w] + added[w]);
      row_out_of_range[ri] := row_held[ri] is null and rates[w] is not null;
      row_over_cap[ri] := row_held[ri] is not null and not budget_within_cap(row_held[ri], caps[w]);
      if shadows[w] then
        -- never refuses for its cap or its room: judged as a hard budget on its as-if ledger instead
        row_shadow_fits[ri] := row_held[ri] is not null and not row_over_cap[ri]
                               and budget_fits('hard', limits[w], asif_currents[w], asif_reserveds[w] + asif_added[w], row_held[ri]);
        row_reserved_before[ri] := asif_reserveds[w] + asif_added[w];
        -- never refuses, not even when it cannot convert the estimate: it then holds nothing and the other
        -- budgets decide (its verdict: exchange_rate_missing or estimate_out_of_range)
        row_fits[ri] := true;
      else
        row_fits[ri] := row_held[ri] is not null and not row_over_cap[ri]
                        and budget_fits(enforcements[w], limits[w], currents[w], reserveds[w] + added[w], row_held[ri]);
      end if;
      call_fits := call_fits and row_fits[ri];
    end loop;
    if call_fits and call_current[ci] then
      call_reserved[ci] := true;
      for ri in 1 .. rows_count loop
        if p_row_calls[ri] = ci and row_held[ri] is not null then
          added[row_window[ri]] := added[row_window[ri]] + row_held[ri];
          if row_shadow_fits[ri] then asif_added[row_window[ri]] := asif_added[row_window[ri]] + row_held[ri]; end if;
        end if;
      end loop;
    end if;
  end loop;

  foreach tree in array trees loop
    update budget_status_cache c
    set reserved_amount = c.reserved_amount + (select a.added from unnest(keys, starts, added) as a(b, s, added)
                                               where a.b = c.budget_id and a.s = c.period_start)
    where c.root_id = tree
      and (c.budget_id, c.period_start) in (select a.b, a.s from unnest(keys, starts, added, roots) as a(b, s, added, root)
                                            where a.added > 0 and a.root = tree);
  end loop;

  insert into budget_reservations (id, budget_id, root_id, period_start, amount, scope_matched, scope_rank, currency, request_id, expires_at,
                                   call_amount, exchange_rate, as_if_excluded, trees)
  select p_reservation_ids[r.call], r.b, roots[r.w], r.s, r.held, r.matched, r.rank, p_currency, p_request_ids[r.call], now() + p_ttl,
         p_amounts[r.call], rates[r.w], coalesce(not r.shadow_fits, false), t.trees
  from unnest(p_row_calls, p_row_budgets, p_row_starts, p_row_matched, p_row_ranks, row_held, row_window, row_shadow_fits)
    as r(call, b, s, matched, rank, held, w, shadow_fits)
  -- the trees of each call's rows (migration 012)
  join (select x.call, array_agg(distinct roots[x.w] order by roots[x.w]) as trees
        from unnest(p_row_calls, row_window, row_held) as x(call, w, held) where x.held is not null group by x.call) t on t.call = r.call
  where call_reserved[r.call] and r.held is not null;

  version := budget_definitions_version();
  return query
    select r.call, r.b, limits[r.w], enforcements[r.w], asif_currents[r.w], r.before, r.fits, call_current[r.call], call_reserved[r.call],
           case when p_need_approvals then budget_approved_in_tree(roots[r.w], r.b, r.s) end,
           case when p_need_projected then budget_projected_actions(roots[r.w], r.b, r.s) else '{}'::text[] end,
           version, r.held, rates[r.w], r.out_of_range, r.over_cap, r.shadow_fits
    from unnest(p_row_calls, p_row_budgets, p_row_starts, row_window, row_reserved_before, row_fits, row_held, row_out_of_range, row_over_cap,
                row_shadow_fits)
      as r(call, b, s, w, before, fits, held, out_of_range, over_cap, shadow_fits)
    where r.w is not null;
end $$;
