-- What-if replay (lib/simulate/): the recorded calls of a past range replayed, in time order, through the
-- rules the gate and the alerts use, against the budgets defined in the calling transaction (which holds an
-- operator's proposal, and is always rolled back). Nothing here writes: it reads the definitions, the
-- recorded usage and the decision log, and returns its state.
--
-- One call replays one slice of the range and carries the replay's state in and out as jsonb, so a long
-- range is replayed slice by slice and the caller can report progress between slices (and cancel).
--
-- The events: every gated call's usage record (metadata.estimatedCost is its estimate, amount its real cost)
-- and every refusal of the decision log (a call that never ran: its estimate, and no real cost). For each,
-- the budgets that apply at its instant (budget_applicable, as the gate's line), each window's replayed
-- spend, the estimate converted as a hold would (budget_exchange_rate, budget_hold_amount), and the refusals
-- in decide()'s order (lib/gate/decision.ts): exchange_rate_missing, estimate_out_of_range, budget_blocked,
-- approval_required, model_restricted, call_cost_cap_exceeded, budget_exceeded (budget_fits, with nothing
-- reserved: the replay is one call at a time). Only a hard budget refuses for want of room; a shadow budget
-- never refuses. A call that goes ahead adds its real cost (budget_convert) to each window of its line, and
-- each alert the new spend reaches (budget_alert_reached) is a crossing at that instant, whose actions are
-- in force for the rest of the window.
-- The least threshold of a window's alerts (flattened as budget_simulate_slice keeps them) that the replay
-- can still cross: a current one not crossed yet. Null: none.
create or replace function budget_simulate_next_threshold(p_thresholds numeric[], p_bases text[], p_crossed boolean[]) returns numeric
language sql immutable parallel safe as $$
  select min(x.threshold) from unnest(p_thresholds, p_bases, p_crossed) as x(threshold, basis, crossed) where x.basis = 'current' and not x.crossed
$$;

-- p_repriced_ids, p_repriced_costs: the gated calls of the slice priced on the model auto-downgrade would
-- have sent them to (lib/simulate/simulator.ts prices them with the gate's price book, from the tokens their
-- usage reported), in the record's currency. A call the replay downgrades adds that cost instead of its own.
drop function if exists budget_simulate_slice(jsonb, timestamptz, timestamptz, timestamptz, text[], jsonb);
create or replace function budget_simulate_slice(p_state jsonb, p_from timestamptz, p_to timestamptz, p_range_from timestamptz,
                                                 p_cheap_models text[], p_downgrades jsonb, p_repriced_ids uuid[], p_repriced_costs numeric[])
returns jsonb language plpgsql stable as $$
declare
  -- windows: one per (budget, period start) met so far
  w_index jsonb := coalesce(p_state -> 'windowIndex', '{}'::jsonb);
  w_budget uuid[]; w_start timestamptz[]; w_end timestamptz[]; w_spent numeric[]; w_calls bigint[]; w_actions text[];
  w_crossed text[]; w_enforcement text[]; w_amount numeric[]; w_currency text[]; w_cap numeric[]; w_alerts jsonb[];
  -- crossings, in the order they happened
  c_window integer[]; c_threshold numeric[]; c_at timestamptz[]; c_spent numeric[];
  -- refusals, clamps and downgrades by (budget, outcome, code)
  r_index jsonb := coalesce(p_state -> 'refusalIndex', '{}'::jsonb);
  r_budget uuid[]; r_outcome text[]; r_code text[]; r_count bigint[]; r_cost numeric[]; r_first timestamptz[]; r_avoided numeric[];
  unknowns jsonb := coalesce(p_state -> 'unknowns', '{}'::jsonb);
  events bigint := coalesce((p_state ->> 'events')::bigint, 0);
  -- each window's alerts, flattened: wa_first[w] .. wa_first[w] + wa_count[w] - 1
  -- w_next[w]: the least threshold of the window's current alerts not crossed yet (null: none). The alerts are
  -- walked only when the spend reaches it (budget_alert_reached is monotone in the threshold): most calls cross none.
  w_next numeric[];
  wa_first integer[]; wa_count integer[]; wa_threshold numeric[] := '{}'::numeric[]; wa_basis text[] := '{}'::text[]; wa_actions text[] := '{}'::text[]; wa_crossed boolean[] := '{}'::boolean[];
  -- the line cache, by caller (a dense number per scopes, model, tags and currency in the slice): its windows and
  -- rates, flattened (lc_first[caller], lc_len[caller]), until the first of its windows ends or a rate changes
  lc_until timestamptz[]; lc_first integer[]; lc_len integer[]; l_windows integer[] := '{}'::integer[]; l_rates numeric[] := '{}'::numeric[];
  line_windows integer[]; line_rates numeric[]; line_amounts numeric[]; line_until timestamptz;
  -- the call's line in the flattened arrays: l_windows[lb + 1 .. lb + ln] (a line that is not cached is written
  -- past l_end, and the next one overwrites it), so the per-call path reads it where it is instead of copying it
  l_amounts numeric[] := '{}'::numeric[]; l_end integer := 0; lb integer; ln integer;
  -- the last verdict by caller (m_best, m_refusing) for the estimate m_estimate, taken at spent_version: the
  -- count of calls that changed a window's spend (and so its actions) so far. Between two such calls the
  -- windows, their actions and the caller's line are as they were, and the rules are immutable functions of
  -- them, so the same caller with the same estimate gets the same verdict without evaluating them again
  -- (a run of refusals, where nothing goes ahead, replays at the cost of the lookup).
  spent_version bigint := 0::bigint; m_version bigint[]; m_estimate numeric[]; m_best integer[]; m_refusing integer[];
  -- an admission by caller (a_version, a_estimate) outlives other calls' spend: nothing in decide()'s order turns
  -- an admission into a refusal but a new action (a crossing: actions_version counts them) or a window's spend
  -- growing past l_lim at that line position. budget_hold_amount is defined while spend + held < 10^18, and
  -- budget_fits (hard) holds while spend + held <= amount (holds.sql); both only fail as the spend grows, so
  -- the admission stands while each window's spend is at most l_lim (null: a shadow window, which never refuses).
  actions_version bigint := 0::bigint; a_version bigint[]; a_estimate numeric[]; l_lim numeric[] := '{}'::numeric[]; admitted boolean;
  -- the line of the event being replayed, before its windows are met: its budgets in the line's order, their windows
  -- at the event, and (API usage) the amount allocated to each
  n_budget uuid[]; n_start timestamptz[]; n_end timestamptz[]; n_allocated numeric[]; span record; spent_before numeric;
  e record; a record; definition record; w integer; i integer; code text; refusing integer;
  downgrade text; outcome text; held numeric; rank integer; best integer; key text; alert jsonb; threshold numeric;
begin
  select coalesce(array_agg((x ->> 'b')::uuid order by o), '{}'), coalesce(array_agg((x ->> 's')::timestamptz order by o), '{}'),
         coalesce(array_agg((x ->> 'e')::timestamptz order by o), '{}'), coalesce(array_agg((x ->> 'spent')::numeric order by o), '{}'),
         coalesce(array_agg((x ->> 'calls')::bigint order by o), '{}'), coalesce(array_agg(x ->> 'actions' order by o), '{}'),
         coalesce(array_agg(x ->> 'crossed' order by o), '{}')
  into w_budget, w_start, w_end, w_spent, w_calls, w_actions, w_crossed
  from jsonb_array_elements(coalesce(p_state -> 'windows', '[]'::jsonb)) with ordinality as t(x, o);
  select coalesce(array_agg(d.enforcement order by o), '{}'), coalesce(array_agg(d.amount order by o), '{}'),
         coalesce(array_agg(d.currency order by o), '{}'), coalesce(array_agg(d.max_call_cost order by o), '{}'),
         coalesce(array_agg(d.alerts order by o), '{}')
  into w_enforcement, w_amount, w_currency, w_cap, w_alerts
  from unnest(w_budget) with ordinality as t(b, o) join budget_definitions d on d.id = t.b;
  for w in 1 .. coalesce(array_length(w_budget, 1), 0) loop
    wa_first[w] := coalesce(array_length(wa_threshold, 1), 0) + 1; wa_count[w] := 0;
    for alert in select value from jsonb_array_elements(w_alerts[w]) loop
      threshold := (alert ->> 'threshold')::numeric;
      wa_threshold := wa_threshold || threshold; wa_basis := wa_basis || coalesce(alert ->> 'basis', 'current');
      wa_actions := wa_actions || (' ' || coalesce((select string_agg(x, ' ') from jsonb_array_elements_text(alert -> 'actions') x), '') || ' ');
      wa_crossed := wa_crossed || (w_crossed[w] like '% ' || threshold::text || ' %');
      wa_count[w] := wa_count[w] + 1;
    end loop;
    w_next[w] := budget_simulate_next_threshold(wa_threshold[wa_first[w] : wa_first[w] + wa_count[w] - 1], wa_basis[wa_first[w] : wa_first[w] + wa_count[w] - 1],
                                                wa_crossed[wa_first[w] : wa_first[w] + wa_count[w] - 1]);
  end loop;
  select coalesce(array_agg((x ->> 'w')::integer order by o), '{}'), coalesce(array_agg((x ->> 'threshold')::numeric order by o), '{}'),
         coalesce(array_agg((x ->> 'at')::timestamptz order by o), '{}'), coalesce(array_agg((x ->> 'spent')::numeric order by o), '{}')
  into c_window, c_threshold, c_at, c_spent
  from jsonb_array_elements(coalesce(p_state -> 'crossings', '[]'::jsonb)) with ordinality as t(x, o);
  select coalesce(array_agg((x ->> 'b')::uuid order by o), '{}'), coalesce(array_agg(x ->> 'outcome' order by o), '{}'),
         coalesce(array_agg(x ->> 'code' order by o), '{}'), coalesce(array_agg((x ->> 'count')::bigint order by o), '{}'),
         coalesce(array_agg((x ->> 'cost')::numeric order by o), '{}'), coalesce(array_agg((x ->> 'first')::timestamptz order by o), '{}'),
         coalesce(array_agg((x ->> 'avoided')::numeric order by o), '{}')
  into r_budget, r_outcome, r_code, r_count, r_cost, r_first, r_avoided
  from jsonb_array_elements(coalesce(p_state -> 'refusals', '[]'::jsonb)) with ordinality as t(x, o);

  -- One read of the range's usage records (gated or not), one of its refusals, sorted once into time order. The
  -- caller's number only has to be equal for equal scopes, so its ranking compares bytes ("C"), and the ties
  -- at one instant are broken by the ids as they are stored (uuid, bigint): no text collation in either sort.
  for e in
    select ev.*, dense_rank() over (order by ev.organization_id collate "C", ev.team_id collate "C", ev.user_id collate "C", ev.project_id collate "C",
                                             ev.model collate "C", ev.tags::text collate "C", ev.currency collate "C")::integer as caller
    from (
    -- kind 0, a gated call's usage record; kind 2, usage recorded through the API (not gated): it counts toward
    -- the budgets it was recorded on, and refuses nothing
    -- (a gated call's estimate is the decimal string the gate writes; a number there is API usage's own metadata.
    -- The string is not checked further: a regular expression on every record cost a quarter of the replay)
    select u.occurred_at as at, case when g.gated then 0 else 2 end as kind, u.id, null::bigint as refusal_id,
           u.amount, u.currency, case when g.gated then (u.metadata ->> 'estimatedCost')::numeric end as estimate,
           -- the model the caller asked for (a call the gate downgraded ran on, and is recorded at, the cheaper one);
           -- a call the gate downgraded costs what it cost if the replay downgrades it too
           u.organization_id, u.team_id, u.user_id, u.project_id, coalesce(u.metadata ->> 'requestedModel', u.model_id) as model, u.metadata -> 'tags' as tags,
           coalesce(r.cost, case when u.metadata ? 'requestedModel' then u.amount end) as repriced, g.gated and u.metadata ? 'requestedModel' as downgraded
    from budget_usage_records u
    left join unnest(p_repriced_ids, p_repriced_costs) as r(id, cost) on r.id = u.id
    cross join lateral (select jsonb_typeof(u.metadata -> 'estimatedCost') = 'string' as gated) g
    where u.occurred_at >= p_from and u.occurred_at < p_to
      -- a true-up's correction is replayed as one event, at what it is now: its adjustments (reconciliation.sql)
      -- are summed into its first record below, never replayed one by one in an order of random ids
      and not (u.correction and u.metadata ? 'adjusts')
    union all
    select d.at, 1, null::uuid, d.id, null::numeric, d.currency, d.estimate, d.organization_id, d.team_id, d.user_id, d.project_id, coalesce(d.requested_model, d.model), d.tags, null, false
    from budget_decision_log d
    -- a rate limit's refusal is not replayed (rate limits are not): the call is left out
    where d.at >= p_from and d.at < p_to and d.outcome = 'refused' and d.code <> 'rate_limit_exceeded'
    ) ev
    order by ev.at, ev.kind, ev.id, ev.refusal_id
  loop
    events := events + 1;
    -- the line, from the cache while its windows last
    if e.kind = 2 or lc_until[e.caller] is null or lc_until[e.caller] <= e.at then
      line_windows := '{}'; line_rates := '{}'; line_amounts := '{}'; line_until := 'infinity';
      if e.kind <> 2 then
        -- a gated call's or a refusal's line, as the gate's
        select coalesce(array_agg(l.budget_id order by l.scope_matched desc, l.scope_rank, l.budget_id), '{}'),
               coalesce(array_agg(l.period_start order by l.scope_matched desc, l.scope_rank, l.budget_id), '{}'),
               coalesce(array_agg(l.period_end order by l.scope_matched desc, l.scope_rank, l.budget_id), '{}'),
               coalesce(array_agg(null::numeric), '{}')
        into n_budget, n_start, n_end, n_allocated
        from budget_applicable(
          array_remove(array[case when e.user_id is not null then 'user' end, case when e.project_id is not null then 'project' end,
                             case when e.team_id is not null then 'team' end, case when e.organization_id is not null then 'organization' end], null),
          array_remove(array[e.user_id, e.project_id, e.team_id, e.organization_id], null),
          e.currency, e.at, e.model, e.tags) l;
      else
        -- API usage: the budgets its allocations (and its true-up's adjustments) name, each with its amount. The
        -- allocations are read first, then each budget in its tree, its window computed on its columns: on Citus a
        -- record's allocations may sit in other trees than it, and tables join on their tree alone.
        n_budget := '{}'; n_start := '{}'; n_end := '{}'; n_allocated := '{}';
        for a in
          select al.budget_id, al.root_id, sum(al.amount) as allocated
          from budget_usage_allocations al
          where al.usage_id = any (array[e.id] || array(select adjustment.id from budget_usage_records adjustment
                                                        where adjustment.occurred_at = e.at and adjustment.correction and adjustment.metadata ->> 'adjusts' = e.id::text))
          group by al.budget_id, al.root_id
          order by al.budget_id
        loop
          select w.period_start, w.period_end into span
          from budget_definitions d
          cross join lateral budget_period_window(d.period, d.start_date, d.end_date, d.recurring, e.at, d.timezone, d.fiscal_year_start_month, d.period_alignment) w
          where d.root_id = a.root_id and d.id = a.budget_id and d.deleted_at is null;
          continue when not found;
          n_budget := n_budget || a.budget_id; n_start := n_start || span.period_start; n_end := n_end || span.period_end;
          n_allocated := n_allocated || a.allocated;
        end loop;
      end if;
      for a in
        select x.budget_id, x.period_start, x.period_end, x.allocated
        from unnest(n_budget, n_start, n_end, n_allocated) with ordinality as x(budget_id, period_start, period_end, allocated, o)
        order by x.o
      loop
        key := a.budget_id::text || '|' || a.period_start::text;
        w := (w_index ->> key)::integer;
        if w is null then
          w := coalesce(array_length(w_budget, 1), 0) + 1;
          w_index := w_index || jsonb_build_object(key, w);
          w_budget[w] := a.budget_id; w_start[w] := a.period_start; w_end[w] := a.period_end; w_calls[w] := 0;
          w_actions[w] := ''; w_crossed[w] := '';
          select d.enforcement, d.amount, d.currency, d.max_call_cost, d.alerts into definition
          from budget_definitions d where d.id = a.budget_id;
          w_enforcement[w] := definition.enforcement; w_amount[w] := definition.amount; w_currency[w] := definition.currency;
          w_cap[w] := definition.max_call_cost; w_alerts[w] := definition.alerts;
          wa_first[w] := coalesce(array_length(wa_threshold, 1), 0) + 1; wa_count[w] := 0;
          -- a window that began before the range starts from the spend recorded toward the budget before it
          -- (a select into, not an assignment: Citus plans an assignment's query from its text, which it cannot parse)
          select coalesce(sum(al.amount), 0) into spent_before from budget_usage_allocations al
          where al.budget_id = a.budget_id and al.occurred_at >= a.period_start and al.occurred_at < greatest(a.period_start, p_range_from);
          w_spent[w] := spent_before;
          if w_spent[w] > 0 then unknowns := jsonb_set(unknowns, '{spendBeforeRange}', 'true'); end if;
          -- the alerts that spend already reached were crossed before the range
          for alert in select value from jsonb_array_elements(w_alerts[w]) loop
            threshold := (alert ->> 'threshold')::numeric;
            wa_threshold := wa_threshold || threshold; wa_basis := wa_basis || coalesce(alert ->> 'basis', 'current');
            wa_actions := wa_actions || (' ' || coalesce((select string_agg(x, ' ') from jsonb_array_elements_text(alert -> 'actions') x), '') || ' ');
            wa_crossed := wa_crossed || (coalesce(alert ->> 'basis', 'current') = 'current' and budget_alert_reached(w_spent[w], threshold, w_amount[w]));
            wa_count[w] := wa_count[w] + 1;
            if wa_crossed[wa_first[w] + wa_count[w] - 1] then
              w_crossed[w] := w_crossed[w] || ' ' || threshold::text || ' ';
              w_actions[w] := w_actions[w] || wa_actions[wa_first[w] + wa_count[w] - 1];
            end if;
          end loop;
          w_next[w] := budget_simulate_next_threshold(wa_threshold[wa_first[w] : wa_first[w] + wa_count[w] - 1], wa_basis[wa_first[w] : wa_first[w] + wa_count[w] - 1],
                                                      wa_crossed[wa_first[w] : wa_first[w] + wa_count[w] - 1]);
          if 'current' <> any(wa_basis[wa_first[w] : wa_first[w] + wa_count[w] - 1]) then unknowns := jsonb_set(unknowns, '{projectedAlerts}', 'true'); end if;
        end if;
        line_windows := line_windows || w;
        line_amounts := line_amounts || a.allocated;
        line_rates := line_rates || budget_exchange_rate(e.currency, w_currency[w], e.at);
        line_until := least(line_until, a.period_end);
      end loop;
      lb := l_end; ln := coalesce(array_length(line_windows, 1), 0);
      for i in 1 .. ln loop
        l_windows[lb + i] := line_windows[i]; l_rates[lb + i] := line_rates[i]; l_amounts[lb + i] := line_amounts[i];
      end loop;
      if e.kind <> 2 then
        -- a rate that takes effect later ends the cached line there
        select least(line_until, min(r.effective_from)) into line_until from budget_exchange_rates r where r.effective_from > e.at;
        lc_first[e.caller] := lb + 1;
        lc_len[e.caller] := ln;
        lc_until[e.caller] := line_until;
        l_end := lb + ln;
        m_version[e.caller] := null; a_version[e.caller] := null;
      else
        unknowns := jsonb_set(unknowns, '{recordedThroughApi}', 'true');
      end if;
    else
      lb := lc_first[e.caller] - 1; ln := lc_len[e.caller];
    end if;

    outcome := null;
    -- usage recorded through the API was never the gate's to decide: only gated calls and refusals are
    if e.kind <> 2 then
    -- the refusals, strictest first, each the first budget of the line it applies to (decide()): each budget's
    -- strictest refusal (1 exchange_rate_missing, 2 estimate_out_of_range, 3 budget_blocked, 4 approval_required,
    -- 5 model_restricted, 6 call_cost_cap_exceeded, 7 budget_exceeded), the line's strictest, its first budget
    code := null; refusing := null; best := 8;
    admitted := a_version[e.caller] = actions_version and a_estimate[e.caller] = e.estimate;
    if admitted then
      for i in 1 .. ln loop
        if w_spent[l_windows[lb + i]] > l_lim[lb + i] then admitted := false; exit; end if;
      end loop;
    end if;
    if m_version[e.caller] = spent_version and m_estimate[e.caller] = e.estimate then
      best := m_best[e.caller]; refusing := m_refusing[e.caller];
    elsif admitted then
      null;
    else
    for i in 1 .. ln loop
      w := l_windows[lb + i];
      l_lim[lb + i] := null;
      continue when w_enforcement[w] = 'shadow';
      -- the estimate held on the budget, as the hold converts it
      held := case when l_rates[lb + i] is null then null else budget_hold_amount(e.estimate, l_rates[lb + i], w_spent[w], 0) end;
      if held is not null then
        l_lim[lb + i] := case when w_enforcement[w] = 'hard' then least(w_amount[w] - held, 999999999999999999.9999999999 - held)
                              else 999999999999999999.9999999999 - held end;
      end if;
      rank := case
        when l_rates[lb + i] is null then 1
        when held is null then 2
        when w_actions[w] = '' then 8
        when w_actions[w] like '% block-all %' then 3
        when w_actions[w] like '% require-approval %' then 4
        when w_actions[w] like '% restrict-models %' and not (e.model = any(p_cheap_models)) then 5
        else 8 end;
      if rank = 8 and not budget_within_cap(held, w_cap[w]) then rank := 6; end if;
      if rank = 8 and w_enforcement[w] = 'hard' and not budget_fits(w_enforcement[w], w_amount[w], w_spent[w], 0, held) then rank := 7; end if;
      if rank < best then best := rank; refusing := i; end if;
    end loop;
    m_version[e.caller] := spent_version; m_estimate[e.caller] := e.estimate; m_best[e.caller] := best; m_refusing[e.caller] := refusing;
    a_version[e.caller] := case when best = 8 then actions_version end; a_estimate[e.caller] := e.estimate;
    end if;
    if best < 8 then
      code := (array['exchange_rate_missing', 'estimate_out_of_range', 'budget_blocked', 'approval_required', 'model_restricted',
                     'call_cost_cap_exceeded', 'budget_exceeded'])[best];
      if best = 4 then unknowns := jsonb_set(unknowns, '{approvals}', 'true'); end if;
      if best = 5 then unknowns := jsonb_set(unknowns, '{restrictModels}', 'true'); end if;
    end if;

    -- auto-downgrade: the cheaper model takes the call (a refusal for room, a cap, a range or a model), as decide() does
    downgrade := null;
    if p_downgrades ? e.model then
      -- a shadow budget's actions are verdicts only: the gate reads the others' (decideChecks)
      for i in 1 .. ln loop
        if w_enforcement[l_windows[lb + i]] <> 'shadow' and w_actions[l_windows[lb + i]] like '% auto-downgrade %' then
          downgrade := p_downgrades ->> e.model; exit;
        end if;
      end loop;
      if downgrade = e.model then downgrade := null; end if;
    end if;
    outcome := case when code is null and downgrade is null then null
                    when code is not null and (downgrade is null or code not in ('budget_exceeded', 'call_cost_cap_exceeded', 'estimate_out_of_range', 'model_restricted')) then 'refused'
                    else 'downgraded' end;
    if outcome = 'downgraded' then
      unknowns := jsonb_set(unknowns, case when e.repriced is null then '{downgradedCost}' else '{downgradedRepriced}' end::text[], 'true');
      if refusing is null then refusing := 1; code := 'auto_downgrade'; end if;
      unknowns := jsonb_set(unknowns, '{downgradeHeldAtCost}', 'true');
      -- The gate holds the cheaper call again, and refuses it when it does not fit either. The cheaper model's
      -- estimate is not stored (the request is not), so the replay holds what the call costs on it: its
      -- repriced cost, else its recorded cost, else (a call that never ran) its estimate.
      for i in 1 .. ln loop
        w := l_windows[lb + i];
        continue when w_enforcement[w] = 'shadow' or l_rates[lb + i] is null;
        held := budget_hold_amount(coalesce(e.repriced, e.amount, e.estimate), l_rates[lb + i], w_spent[w], 0);
        if held is null or not budget_fits(w_enforcement[w], w_amount[w], w_spent[w], 0, held) then
          outcome := 'refused'; refusing := i; code := case when held is null then 'estimate_out_of_range' else 'budget_exceeded' end;
          exit;
        end if;
      end loop;
    end if;

    if outcome is not null then
      key := w_budget[l_windows[lb + refusing]]::text || '|' || outcome || '|' || code;
      i := (r_index ->> key)::integer;
      if i is null then
        i := coalesce(array_length(r_budget, 1), 0) + 1;
        r_index := r_index || jsonb_build_object(key, i);
        r_budget[i] := w_budget[l_windows[lb + refusing]]; r_outcome[i] := outcome; r_code[i] := code;
        r_count[i] := 0; r_cost[i] := 0; r_first[i] := e.at; r_avoided[i] := 0;
      end if;
      r_count[i] := r_count[i] + 1;
      r_cost[i] := r_cost[i] + e.estimate;
      if outcome = 'refused' then r_avoided[i] := r_avoided[i] + coalesce(e.amount, 0); end if;
    end if;

    end if;

    continue when outcome = 'refused';
    -- a call the gate downgraded that the replay lets through on the model it asked for: recorded at the cheaper model's cost
    if e.kind = 0 and e.downgraded and outcome is null then unknowns := jsonb_set(unknowns, '{upgradedCost}', 'true'); end if;
    -- a call refused in reality that would have gone ahead: its real cost is unknown, counted at its estimate
    if e.kind = 1 then unknowns := jsonb_set(unknowns, '{refusedInRealityAdmitted}', 'true'); end if;
    spent_version := spent_version + 1;
    for i in 1 .. ln loop
      w := l_windows[lb + i];
      w_spent[w] := w_spent[w] + case when e.kind = 2 then l_amounts[lb + i]
                                      else budget_convert(coalesce(case when outcome = 'downgraded' then e.repriced end, e.amount, e.estimate), l_rates[lb + i]) end;
      w_calls[w] := w_calls[w] + 1;
      continue when w_next[w] is null or not budget_alert_reached(w_spent[w], w_next[w], w_amount[w]);
      -- projected alerts are not replayed (their window said so when it was met)
      for j in wa_first[w] .. wa_first[w] + wa_count[w] - 1 loop
        continue when wa_crossed[j] or wa_basis[j] <> 'current' or not budget_alert_reached(w_spent[w], wa_threshold[j], w_amount[w]);
        wa_crossed[j] := true;
        w_crossed[w] := w_crossed[w] || ' ' || wa_threshold[j]::text || ' ';
        w_actions[w] := w_actions[w] || wa_actions[j];
        actions_version := actions_version + 1;
        c_window := c_window || w; c_threshold := c_threshold || wa_threshold[j]; c_at := c_at || e.at; c_spent := c_spent || w_spent[w];
      end loop;
      w_next[w] := budget_simulate_next_threshold(wa_threshold[wa_first[w] : wa_first[w] + wa_count[w] - 1], wa_basis[wa_first[w] : wa_first[w] + wa_count[w] - 1],
                                                  wa_crossed[wa_first[w] : wa_first[w] + wa_count[w] - 1]);
    end loop;
  end loop;

  return jsonb_build_object(
    'events', events, 'unknowns', unknowns, 'windowIndex', w_index, 'refusalIndex', r_index,
    'windows', coalesce((select jsonb_agg(jsonb_build_object('b', b, 's', s, 'e', en, 'spent', sp::text, 'calls', ca, 'actions', ac, 'crossed', cr) order by o)
                         from unnest(w_budget, w_start, w_end, w_spent, w_calls, w_actions, w_crossed) with ordinality as t(b, s, en, sp, ca, ac, cr, o)), '[]'),
    'crossings', coalesce((select jsonb_agg(jsonb_build_object('w', cw, 'b', w_budget[cw], 's', w_start[cw], 'threshold', th::text, 'at', ca, 'spent', sp::text) order by o)
                           from unnest(c_window, c_threshold, c_at, c_spent) with ordinality as t(cw, th, ca, sp, o)), '[]'),
    'refusals', coalesce((select jsonb_agg(jsonb_build_object('b', b, 'outcome', ou, 'code', co, 'count', cn, 'cost', cs::text, 'first', fi, 'avoided', av::text) order by o)
                          from unnest(r_budget, r_outcome, r_code, r_count, r_cost, r_first, r_avoided) with ordinality as t(b, ou, co, cn, cs, fi, av, o)), '[]'));
end $$;
