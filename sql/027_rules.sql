-- One owner per rule (issue 22, item 3): the rules that SQL needs under a window's lock live here once, and
-- TypeScript reads their answer instead of computing them again. To be folded by the lead into the
-- per-function files; each section says what it replaces.

-- 1. The burn-rate floor ----------------------------------------------------------------------------------
--
-- The time a window's spend is spread over: from the later of its start and the budget's (p_start) to p_at,
-- in microseconds, never less than one hour, so a window's first second does not divide by nothing. The one
-- place the floor lives: the linear forecast (projected alerts measure it under the window's lock) and the
-- burn rate (the status's, the digests') both divide by it. TypeScript kept a copy (MINIMUM_ELAPSED_MS).
create function budget_burn_elapsed_us(p_start timestamptz, p_at timestamptz) returns numeric
language sql immutable parallel safe as $$
  select greatest(extract(epoch from p_at - p_start) * 1000000, 3600000000)
$$;

-- 013's linear rule, its elapsed time from the function above (otherwise as 013 wrote it).
create or replace function budget_linear_forecast(p_current numeric, p_start timestamptz, p_end timestamptz, p_at timestamptz)
returns numeric language sql immutable parallel safe as $$
  select case
    when p_at < p_start or p_at >= p_end then p_current
    else (units + div(units * left_us * 2 + elapsed_us, elapsed_us * 2)) * 0.0000000001
  end
  from (select round(p_current * 10000000000) as units,
               extract(epoch from p_end - p_at) * 1000000 as left_us,
               budget_burn_elapsed_us(p_start, p_at) as elapsed_us) x
$$;

-- The burn rate: p_current spent in the window [p_period_start, p_period_end), per day over its elapsed part
-- (from the later of the window's start and the budget's startDate, up to p_at or the window's end),
-- rounded half up to 10 decimals; 0 before the budget starts. The arguments are budget_forecast's, so a
-- status or a digest reads both in one statement. It replaces the computation in lib/services/status-rules.ts.
create function budget_burn_rate(p_budget_id uuid, p_period_start timestamptz, p_period_end timestamptz, p_current numeric, p_at timestamptz)
returns numeric language sql stable parallel safe as $$
  select case when p_at < s.start_at then 0
              else div(round(p_current * 10000000000) * 86400000000 * 2 + e.elapsed_us, e.elapsed_us * 2) * 0.0000000001 end
  from budget_definitions d
  cross join lateral (select greatest(p_period_start, d.start_date) as start_at) s
  cross join lateral (select budget_burn_elapsed_us(s.start_at, least(p_at, p_period_end)) as elapsed_us) e
  where d.id = p_budget_id
$$;

-- 2. The threshold crossing -------------------------------------------------------------------------------
--
-- Whether an alert at p_threshold percent is reached by p_measured (the spend, or for a projected alert the
-- forecast) against the budget's amount: the crossing rule, once, compared exactly. Crossings are recorded
-- under the window's lock (budget_alerts_reached below; the batch collector's steps, 018, are to call it too
-- when folded). TypeScript mirrors it once, for the gate's decision on the numbers it reads under the hold's
-- lock (percentReached, lib/services/status-rules.ts); test/alerts.test.ts holds the two to the same answers.
create function budget_alert_reached(p_measured numeric, p_threshold numeric, p_amount numeric) returns boolean
language sql immutable parallel safe as $$
  select p_measured * 100 >= p_threshold * p_amount
$$;

-- 020's budget_alerts_reached, its comparison from the function above (otherwise as 020 wrote it).
create or replace function budget_alerts_reached(p_budget_id uuid, p_period_start timestamptz, p_period_end timestamptz, p_current numeric)
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
    continue when not budget_alert_reached(measured, threshold, budget.amount);
    actions := array(select jsonb_array_elements_text(alert -> 'actions'));
    channels := array(select jsonb_array_elements_text(coalesce(alert -> 'notificationChannels', '[]'::jsonb)));
    limit_amount := budget.amount;
    return next;
  end loop;
end $$;
