-- Alerts follow definitions (issue 21, item 4).
--
-- A crossing was recorded only when a window's spend grew (004, 013, 019), so a change of a budget's
-- amount, alerts, period or enforcement left the alert history speaking of the old definition: lowering
-- an amount below the spend made the gate refuse (it reads thresholds from the definition) with no
-- crossing recorded or notified, and raising it lifted a block the history still called active.
--
-- 1. A crossing can stop being active. budget_alert_history.resolved_at marks a crossing that no longer
--    holds under the budget's definition; the row stays (the history, its deliveries, its acknowledgement).
--    Only one active crossing per window, threshold and basis: a crossing that holds again after it was
--    resolved is a new crossing, recorded and notified like the first.
-- 2. The crossing rule, once: budget_alerts_reached says which of a budget's alerts its numbers reach;
--    budget_record_crossings records those not active yet and queues their notifications. The spend
--    trigger (budget_status_after_update) and the definition change (budget_alerts_follow_definition)
--    both call it.
-- 3. budget_alerts_follow_definition re-evaluates the window of now in the change's own transaction,
--    under 016's lock order (it takes the budget's window row only, as the usage trigger does).
-- 4. The gate reads projected crossings from the history (a projected crossing stays crossed for the
--    rest of its period): a resolved one no longer counts there either.

-- 1. Active crossings ---------------------------------------------------------------------------------------
alter table budget_alert_history add column resolved_at timestamptz;
alter table budget_alert_history drop constraint budget_alert_history_budget_id_period_start_threshold_basis_key;
create unique index budget_alert_history_active on budget_alert_history (budget_id, period_start, threshold, basis)
where resolved_at is null;

-- 2. The crossing rule ---------------------------------------------------------------------------------------
--
-- Each of the budget's alerts that its spend p_current in the window reaches: a current alert compares the
-- spend, a projected one the forecast (budget_alert_measure, 013; computed once however many projected
-- alerts there are). The measure is compared unbounded and returned as it is (019 clamps it where stored).
create function budget_alerts_reached(p_budget_id uuid, p_period_start timestamptz, p_period_end timestamptz, p_current numeric)
returns table (threshold numeric, basis text, actions text[], channels text[], measured numeric, limit_amount numeric)
language plpgsql volatile as $$
declare
  budget record;
  alert jsonb;
  forecast numeric;
begin
  select b.amount, b.alerts into budget from budget_definitions b where b.id = p_budget_id;
  for alert in select value from jsonb_array_elements(budget.alerts) loop
    basis := coalesce(alert ->> 'basis', 'current');
    measured := p_current;
    if basis = 'projected' then
      forecast := coalesce(forecast, budget_alert_measure(p_budget_id, p_current, 'projected', p_period_start, p_period_end));
      measured := forecast;
    end if;
    threshold := (alert ->> 'threshold')::numeric;
    continue when measured * 100 < threshold * budget.amount;
    actions := array(select jsonb_array_elements_text(alert -> 'actions'));
    channels := array(select jsonb_array_elements_text(coalesce(alert -> 'notificationChannels', '[]'::jsonb)));
    limit_amount := budget.amount;
    return next;
  end loop;
end $$;

-- Records each alert reached (above) that has no active crossing in the window, with its notifications,
-- and returns how many it recorded. The active-crossing key settles any race: one active row per crossing.
create function budget_record_crossings(p_budget_id uuid, p_period_start timestamptz, p_period_end timestamptz, p_current numeric)
returns integer language plpgsql as $$
declare
  reached record;
  crossing_id uuid;
  recorded integer := 0;
begin
  for reached in select * from budget_alerts_reached(p_budget_id, p_period_start, p_period_end, p_current) loop
    crossing_id := null;
    insert into budget_alert_history (budget_id, period_start, threshold, basis, actions, spent, limit_amount)
    values (p_budget_id, p_period_start, reached.threshold, reached.basis, reached.actions,
            least(round(reached.measured, 10), 999999999999999999.9999999999), reached.limit_amount)
    on conflict (budget_id, period_start, threshold, basis) where resolved_at is null do nothing
    returning budget_alert_history.id into crossing_id;
    if crossing_id is not null then
      recorded := recorded + 1;
      insert into budget_notification_outbox (alert_id, channel)
      select crossing_id, channel from unnest(reached.channels) as channel
      on conflict (alert_id, channel) do nothing;
    end if;
  end loop;
  return recorded;
end $$;

-- Whenever a window's spend grows (004's trigger, unchanged): the rule above.
create or replace function budget_status_after_update() returns trigger language plpgsql as $$
begin
  perform budget_record_crossings(new.budget_id, new.period_start, new.period_end, new.current_amount);
  return null;
end $$;

-- 3. A definition change ------------------------------------------------------------------------------------
--
-- Re-evaluates the budget's alerts in its window of now, after a change of its definition and in the same
-- transaction: each active crossing that the definition no longer reaches (its threshold and basis gone, its
-- actions changed, or its measure now below the threshold times the amount) is resolved; each alert reached
-- and not active is recorded and queued for notification. Running it again changes nothing. A window with
-- no cache row yet is made (refresh_budget_status_cache, 002: its first spend runs the trigger above).
-- Windows other than now's are history and stay as they are.
--
-- The lock order (016): only the budget's window row, by (budget_id, period_start), as the usage trigger
-- and the batch collector take it. A settlement or usage record that grows the window waits for the change
-- to commit, then its trigger reads the new definition; one that committed first is in current_amount here.
create function budget_alerts_follow_definition(p_budget_id uuid) returns table (recorded integer, resolved integer)
language plpgsql as $$
declare
  budget budget_definitions;
  now_window record;
  cached record;
begin
  recorded := 0;
  resolved := 0;
  select * into budget from budget_definitions b where b.id = p_budget_id and b.deleted_at is null;
  if not found then return next; return; end if;
  select * into now_window from budget_window(budget, now());
  if now_window.period_start is null then return next; return; end if; -- not started, or ended: no window of now

  select c.period_start, c.period_end, c.current_amount into cached from budget_status_cache c
  where c.budget_id = p_budget_id and c.period_start = now_window.period_start for update;
  if not found then
    select c.period_start, c.period_end, c.current_amount into cached
    from refresh_budget_status_cache(p_budget_id, now_window.period_start, now_window.period_end) c;
  end if;

  update budget_alert_history h set resolved_at = now()
  where h.budget_id = p_budget_id and h.period_start = cached.period_start and h.resolved_at is null
    and not exists (
      select 1 from budget_alerts_reached(p_budget_id, cached.period_start, cached.period_end, cached.current_amount) r
      where r.threshold = h.threshold and r.basis = h.basis
        and array(select unnest(r.actions) order by 1) = array(select unnest(h.actions) order by 1));
  get diagnostics resolved = row_count;
  recorded := budget_record_crossings(p_budget_id, cached.period_start, cached.period_end, cached.current_amount);
  return next;
end $$;

-- 4. The gate's projected actions ---------------------------------------------------------------------------
--
-- As 019's, reading active projected crossings only.
create or replace function budget_hold_batch(
  p_reservation_ids uuid[], p_amounts numeric[], p_request_ids text[], p_currency text, p_ttl interval,
  p_row_calls integer[], p_row_budgets uuid[], p_row_starts timestamptz[], p_row_ends timestamptz[],
  p_row_matched boolean[], p_row_ranks integer[], p_need_approvals boolean, p_need_projected boolean
) returns table (call_index integer, budget_id uuid, amount numeric, enforcement text, current_amount numeric,
                 reserved_amount numeric, fits boolean, is_current boolean, is_reserved boolean,
                 approved_through numeric, projected_actions text[], definitions_version bigint,
                 held numeric, exchange_rate numeric, out_of_range boolean)
language plpgsql as $$
#variable_conflict use_column
declare
  keys uuid[]; starts timestamptz[]; limits numeric[]; enforcements text[]; currents numeric[]; reserveds numeric[]; added numeric[];
  rates numeric[]; row_held numeric[]; row_out_of_range boolean[];
  row_window integer[];
  call_current boolean[]; call_reserved boolean[]; call_fits boolean;
  row_reserved_before numeric[]; row_fits boolean[];
  calls integer := coalesce(array_length(p_reservation_ids, 1), 0);
  rows_count integer := coalesce(array_length(p_row_calls, 1), 0);
  w integer;
begin
  perform 1 from budget_status_cache c
  join (select distinct r.b, r.s, r.e from unnest(p_row_budgets, p_row_starts, p_row_ends) as r(b, s, e) where r.s <= now() and now() < r.e) x
    on c.budget_id = x.b and c.period_start = x.s and c.period_end = x.e
  order by c.budget_id, c.period_start
  for update of c;

  select array_agg(c.budget_id order by c.budget_id, c.period_start), array_agg(c.period_start order by c.budget_id, c.period_start),
         array_agg(d.amount order by c.budget_id, c.period_start), array_agg(d.enforcement order by c.budget_id, c.period_start),
         array_agg(c.current_amount order by c.budget_id, c.period_start), array_agg(c.reserved_amount order by c.budget_id, c.period_start),
         -- each window's rate from the calls' currency into its budget's, in force now (null: none is)
         array_agg(budget_exchange_rate(p_currency, d.currency, now()) order by c.budget_id, c.period_start)
  into keys, starts, limits, enforcements, currents, reserveds, rates
  from budget_status_cache c
  join budget_definitions d on d.id = c.budget_id
  join (select distinct r.b, r.s, r.e from unnest(p_row_budgets, p_row_starts, p_row_ends) as r(b, s, e) where r.s <= now() and now() < r.e) x
    on c.budget_id = x.b and c.period_start = x.s and c.period_end = x.e;
  keys := coalesce(keys, '{}'); added := array_fill(0::numeric, array[coalesce(array_length(keys, 1), 0)]);

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
      row_fits[ri] := row_held[ri] is not null and budget_fits(enforcements[w], limits[w], currents[w], reserveds[w] + added[w], row_held[ri]);
      call_fits := call_fits and row_fits[ri];
    end loop;
    if call_fits and call_current[ci] then
      call_reserved[ci] := true;
      for ri in 1 .. rows_count loop
        if p_row_calls[ri] = ci then added[row_window[ri]] := added[row_window[ri]] + row_held[ri]; end if;
      end loop;
    end if;
  end loop;

  update budget_status_cache c set reserved_amount = c.reserved_amount + a.added
  from unnest(keys, starts, added) as a(b, s, added)
  where a.added > 0 and c.budget_id = a.b and c.period_start = a.s;

  insert into budget_reservations (id, budget_id, period_start, amount, scope_matched, scope_rank, currency, request_id, expires_at,
                                   call_amount, exchange_rate)
  select p_reservation_ids[r.call], r.b, r.s, r.held, r.matched, r.rank, p_currency, p_request_ids[r.call], now() + p_ttl,
         p_amounts[r.call], rates[r.w]
  from unnest(p_row_calls, p_row_budgets, p_row_starts, p_row_matched, p_row_ranks, row_held, row_window) as r(call, b, s, matched, rank, held, w)
  where call_reserved[r.call];

  return query
    select r.call, r.b, limits[r.w], enforcements[r.w], currents[r.w], r.before, r.fits, call_current[r.call], call_reserved[r.call],
           case when p_need_approvals then budget_approved_through(r.b, r.s) end,
           case when p_need_projected then array(select distinct action from budget_alert_history h, unnest(h.actions) as action
                                                 where h.budget_id = r.b and h.period_start = r.s and h.basis = 'projected'
                                                   and h.resolved_at is null) else '{}'::text[] end,
           budget_definitions_version(), r.held, rates[r.w], r.out_of_range
    from unnest(p_row_calls, p_row_budgets, p_row_starts, row_window, row_reserved_before, row_fits, row_held, row_out_of_range)
      as r(call, b, s, w, before, fits, held, out_of_range)
    where r.w is not null;
end $$;

alter function budget_hold_batch(uuid[], numeric[], text[], text, interval, integer[], uuid[], timestamptz[], timestamptz[], boolean[], integer[], boolean, boolean)
  set lock_timeout = '2s';
