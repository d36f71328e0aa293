-- Alerts: each threshold crossing recorded once while it holds (budget_alert_history), across every
-- gateway process, with its notifications queued in the same transaction; the crossing rule is written
-- once (budget_alerts_reached, budget_record_crossings), and both the spend trigger and a definition
-- change call it.

-- What an alert compares with its threshold: the spend, or for a projected alert the forecast
-- (forecast.sql). The crossing rule below and the steps of budget_record_spend (spend.sql) both measure
-- through it, so they cannot disagree.
create or replace function budget_alert_measure(p_budget_id uuid, p_current numeric, p_basis text, p_period_start timestamptz, p_period_end timestamptz)
returns numeric language sql volatile as $$
  select case when p_basis = 'projected' then budget_forecast(p_budget_id, p_period_start, p_period_end, p_current, now()) else p_current end
$$;
-- The same, the budget's root given (budget_forecast_in_tree): what the spend path and the alert trigger call.
create or replace function budget_alert_measure_in_tree(p_root uuid, p_budget_id uuid, p_current numeric, p_basis text,
  p_period_start timestamptz, p_period_end timestamptz)
returns numeric language sql volatile as $$
  select case when p_basis = 'projected' then budget_forecast_in_tree(p_root, p_budget_id, p_period_start, p_period_end, p_current, now()) else p_current end
$$;

-- Whether an alert at p_threshold percent is reached by p_measured (the spend, or for a projected alert the
-- forecast) against the budget's amount: the crossing rule, once, compared exactly. Crossings are recorded
-- under the window's lock (budget_alerts_reached below, and budget_record_spend's steps in spend.sql, which
-- every way of recording spend goes through). TypeScript mirrors it once, for the gate's decision on the numbers it reads under the hold's
-- lock (percentReached, lib/usage/status-rules.ts); test/alerts.test.ts holds the two to the same answers.
create or replace function budget_alert_reached(p_measured numeric, p_threshold numeric, p_amount numeric) returns boolean
language sql immutable parallel safe as $$
  select p_measured * 100 >= p_threshold * p_amount
$$;

-- Each of the budget's alerts that its spend p_current in the window reaches: a current alert compares the
-- spend, a projected one the forecast (budget_alert_measure; computed once however many projected alerts
-- there are, so only a budget that has one pays for it). The measure is compared unbounded and returned as
-- it is (budget_record_crossings clamps it where stored).
drop function if exists budget_alerts_reached(uuid, timestamptz, timestamptz, numeric);
create or replace function budget_alerts_reached(p_root uuid, p_budget_id uuid, p_period_start timestamptz, p_period_end timestamptz, p_current numeric)
returns table (threshold numeric, basis text, actions text[], channels text[], measured numeric, limit_amount numeric)
language plpgsql volatile as $$
declare
  budget record;
  alert jsonb;
  forecast numeric;
begin
  select b.amount, b.alerts into budget from budget_definitions b where b.root_id = p_root and b.id = p_budget_id;
  for alert in select value from jsonb_array_elements(budget.alerts) loop
    basis := coalesce(alert ->> 'basis', 'current');
    measured := p_current;
    if basis = 'projected' then
      forecast := coalesce(forecast, budget_alert_measure_in_tree(p_root, p_budget_id, p_current, 'projected', p_period_start, p_period_end));
      measured := forecast;
    end if;
    threshold := (alert ->> 'threshold')::numeric;
    continue when not budget_alert_reached(measured, threshold, budget.amount);
    actions := array(select jsonb_array_elements_text(alert -> 'actions'));
    channels := array(select jsonb_array_elements_text(coalesce(alert -> 'notificationChannels', '[]'::jsonb)));
    limit_amount := budget.amount;
    return next;
  end loop;
end $$;

-- Whether the window has an active crossing of the alert at p_threshold on p_basis (recorded and not resolved:
-- recording it again would do nothing).
create or replace function budget_alert_active(p_root uuid, p_budget_id uuid, p_period_start timestamptz, p_threshold numeric, p_basis text)
returns boolean language plpgsql stable as $$
begin
  return exists (select 1 from budget_alert_history h
                 where h.root_id = p_root and h.budget_id = p_budget_id and h.period_start = p_period_start and h.resolved_at is null
                   and h.threshold = p_threshold and h.basis = p_basis);
end $$;

-- Records each alert reached (above) that has no active crossing in the window, with its notifications,
-- and returns how many it recorded. The active-crossing key settles any race: one active row per crossing.
-- A forecast can pass 10^18 while the spend it projects from fits (a soft budget near 10^18, early in its
-- window): the crossing is still a crossing, and is stored with its measure clamped to the largest amount
-- money holds; failing there would refuse usage that fits and every settlement on the budget.
drop function if exists budget_record_crossings(uuid, timestamptz, timestamptz, numeric);
create or replace function budget_record_crossings(p_root uuid, p_budget_id uuid, p_period_start timestamptz, p_period_end timestamptz, p_current numeric)
returns integer language plpgsql as $$
declare
  reached record;
  crossing_id uuid;
  recorded integer := 0;
  is_shadow boolean;
begin
  for reached in select * from budget_alerts_reached(p_root, p_budget_id, p_period_start, p_period_end, p_current) loop
    crossing_id := null;
    -- a shadow budget's crossing is marked so: notify only (its actions are what a hard twin would have done);
    -- read apart from the insert, as Citus runs no subquery inside an INSERT
    is_shadow := exists (select 1 from budget_definitions d where d.root_id = p_root and d.id = p_budget_id and d.enforcement = 'shadow');
    insert into budget_alert_history (budget_id, root_id, period_start, threshold, basis, actions, spent, limit_amount, shadow)
    values (p_budget_id, p_root, p_period_start, reached.threshold, reached.basis, reached.actions,
            least(round(reached.measured, 10), 999999999999999999.9999999999), reached.limit_amount, is_shadow)
    on conflict (budget_id, period_start, threshold, basis, root_id) where resolved_at is null do nothing
    returning budget_alert_history.id into crossing_id;
    if crossing_id is not null then
      recorded := recorded + 1;
      insert into budget_notification_outbox (alert_id, root_id, channel)
      select crossing_id, p_root, channel from unnest(reached.channels) as channel
      on conflict (alert_id, channel, root_id) do nothing;
    end if;
  end loop;
  return recorded;
end $$;

-- A crossing whose alert does more than notify (block, restrict models, downgrade, require approval) is
-- in force for the gate at once, however it was recorded: a lease on the budget's line admits from memory
-- and would not see it (spend through the gate cannot cross such a threshold inside a lease, lib/gate/leases.ts;
-- usage recorded through another door can). So it bumps its tree's version at commit, as a definition
-- change does (the triggers are in definitions.sql, with the other bumps), and every process with a line in
-- the tree forgets its lines and leases within the versions' freshness bound (lib/gate/budget-lines.ts).

-- Whenever a window's spend grows: the rule above. The window row is locked by the statement that grew it.
-- A true-up's correction (reconciliation.sql) counts in its own day's window, which may have ended: an
-- ended window's alerts stay as they were then, rather than fire now, out of order.
create or replace function budget_status_after_update() returns trigger language plpgsql as $$
begin
  if new.period_end <= now() and current_setting('relaycore_budgets.correcting', true) = 'on' then return null; end if;
  perform budget_record_crossings(new.root_id, new.budget_id, new.period_start, new.period_end, new.current_amount);
  return null;
end $$;
create or replace trigger budget_status_cache_alerts after update of current_amount on budget_status_cache
for each row when (new.current_amount > old.current_amount) execute function budget_status_after_update();

-- Re-evaluates the budget's alerts in its window of now, after a change of its definition and in the same
-- transaction: each active crossing that the definition no longer reaches (its threshold and basis gone, its
-- actions changed, or its measure now below the threshold times the amount) is resolved; each alert reached
-- and not active is recorded and queued for notification. Running it again changes nothing. A window with
-- no cache row yet is made (refresh_budget_status_cache: its first spend runs the trigger above).
-- Windows other than now's are history and stay as they are.
--
-- The lock order (locks.sql): only the budget's window row, as
-- budget_record_spend (spend.sql) takes it. A settlement or usage record that grows the window waits for the change
-- to commit, then its trigger reads the new definition; one that committed first is in current_amount here.
create or replace function budget_alerts_follow_definition(p_budget_id uuid) returns table (recorded integer, resolved integer)
language plpgsql as $$
declare
  budget budget_definitions;
  now_window record;
  cached record;
  reached jsonb;
begin
  recorded := 0;
  resolved := 0;
  -- A what-if replay applies its proposal in a transaction that always rolls back and reads no alert
  -- history nor window row: following the definition there would only lock the window row the live gate
  -- needs, for the whole replay (lib/simulate/simulator.ts sets the mark, transaction-local).
  if current_setting('relaycore_budgets.simulating', true) = 'on' then return next; return; end if;
  select * into budget from budget_definitions b where b.id = p_budget_id and b.deleted_at is null;
  if not found then return next; return; end if;
  select * into now_window from budget_window(budget, now());
  if now_window.period_start is null then return next; return; end if; -- not started, or ended: no window of now

  select c.period_start, c.period_end, c.current_amount into cached from budget_status_cache c
  where c.root_id = budget.root_id and c.budget_id = p_budget_id and c.period_start = now_window.period_start for update;
  if not found then
    select c.period_start, c.period_end, c.current_amount into cached
    from refresh_budget_status_cache_in_tree(p_budget_id, now_window.period_start, now_window.period_end, budget.root_id) c;
  end if;

  -- the alerts the definition reaches now, read first: Citus takes no volatile function inside an UPDATE
  select coalesce(jsonb_agg(jsonb_build_object('threshold', r.threshold, 'basis', r.basis, 'actions', to_jsonb(array(select unnest(r.actions) order by 1)))), '[]')
  into reached
  from budget_alerts_reached(budget.root_id, p_budget_id, cached.period_start, cached.period_end, cached.current_amount) r;
  update budget_alert_history h set resolved_at = now()
  where h.root_id = budget.root_id and h.budget_id = p_budget_id and h.period_start = cached.period_start and h.resolved_at is null
    and not exists (
      select 1 from jsonb_array_elements(reached) r
      where (r.value ->> 'threshold')::numeric = h.threshold and r.value ->> 'basis' = h.basis
        and r.value -> 'actions' = to_jsonb(array(select unnest(h.actions) order by 1)));
  get diagnostics resolved = row_count;
  recorded := budget_record_crossings(budget.root_id, p_budget_id, cached.period_start, cached.period_end, cached.current_amount);
  return next;
end $$;
