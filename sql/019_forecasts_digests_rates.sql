-- Issue 19, items 11, 13, 14 and 16: a forecast profile that backdated usage cannot leave stale, a digest
-- sent once per local day whatever the budget's zone becomes, a converted hold that overflows refused per
-- call, and exchange-rate changes kept (and audited) instead of overwritten.

-- 1. Backdated usage and the forecast profile (013) -----------------------------------------------------
--
-- The profile of a day sums the allocations of the 28 days before it, and is kept for that day. An
-- allocation dated before the day it is stored on (usage recorded late, a call settled after midnight)
-- changes the sum. Such a transaction leaves a mark (the budget, its transaction id); a kept profile
-- carries the snapshot it was summed under, and is read only while every mark of its budget is visible
-- in that snapshot: a mark it cannot see is an allocation it did not count, so it is summed again.
-- Nothing waits on anything: marks are inserted (one per budget and transaction), never updated, and the
-- reader only reads them. Under the lock of the status row that triggers it, at most one sum per mark.
--
-- "Dated before the day it is stored on" is judged with a minute's margin (clock_timestamp() + 1 minute,
-- in the budget's zone): a transaction that stores usage in the last minute of a local day and commits
-- after midnight, once the next day's profile has been summed without it, is still caught.
create table budget_forecast_backdated (
  budget_id uuid not null,
  xact      xid8 not null,
  primary key (budget_id, xact)
);

alter table budget_forecast_profiles add column snapshot pg_snapshot;

create function budget_forecast_mark_backdated() returns trigger language plpgsql as $$
begin
  insert into budget_forecast_backdated (budget_id, xact)
  select distinct a.budget_id, pg_current_xact_id()
  from added a join budget_definitions d on d.id = a.budget_id
  where a.occurred_at < (date_trunc('day', (clock_timestamp() + interval '1 minute') at time zone d.timezone) at time zone d.timezone)
  on conflict do nothing;
  return null;
end $$;

create trigger budget_usage_allocations_backdated after insert on budget_usage_allocations
referencing new table as added for each statement execute function budget_forecast_mark_backdated();

-- The profile for p_day: the kept one when it is of that day (and of the budget's zone and start as they
-- are) and no backdated allocation came after it, else summed and kept (with the snapshot it was summed
-- under), unless a later day's is kept already (a forecast as of a past instant). A kept profile is
-- replaced only by one summed under a snapshot no older (by xmin), so the marks below the kept one's xmin,
-- visible to it and to any later sum, can go. Only the kept one's: when a later day's profile stays, a
-- mark below this sum's xmin may be one that profile did not see, and it must stay to make it summed again.
create or replace function budget_forecast_profile(p_budget_id uuid, p_timezone text, p_start_date timestamptz, p_day date,
  out days integer, out totals numeric[], out counts integer[])
language plpgsql as $$
declare
  summed_under pg_snapshot;
  kept pg_snapshot;
begin
  select p.days, p.totals, p.counts into days, totals, counts from budget_forecast_profiles p
  where p.budget_id = p_budget_id and p.local_day = p_day and p.timezone = p_timezone and p.start_date = p_start_date
    and p.snapshot is not null
    and not exists (select 1 from budget_forecast_backdated m
                    where m.budget_id = p_budget_id and m.xact >= pg_snapshot_xmin(p.snapshot) and not pg_visible_in_snapshot(m.xact, p.snapshot));
  if found then return; end if;
  -- One statement: the sum and the snapshot it read under are the same one.
  select w.days, w.totals, w.counts, pg_current_snapshot() into days, totals, counts, summed_under
  from budget_weekday_profile(p_budget_id, p_timezone, p_start_date, p_day) w;
  insert into budget_forecast_profiles as p (budget_id, local_day, timezone, start_date, days, totals, counts, snapshot)
  values (p_budget_id, p_day, p_timezone, p_start_date, days, totals, counts, summed_under)
  on conflict (budget_id) do update
  set local_day = excluded.local_day, timezone = excluded.timezone, start_date = excluded.start_date,
      days = excluded.days, totals = excluded.totals, counts = excluded.counts, snapshot = excluded.snapshot, computed_at = now()
  where p.local_day < excluded.local_day
     or (p.local_day = excluded.local_day and (p.snapshot is null or pg_snapshot_xmin(p.snapshot) <= pg_snapshot_xmin(excluded.snapshot)));
  -- the profile kept now (this sum's, or a later day's that stayed, or another session's)
  select p.snapshot into kept from budget_forecast_profiles p where p.budget_id = p_budget_id;
  -- Marks the kept profile and every snapshot from now on see; skip locked: another sum pruning the same
  -- ones may have them.
  delete from budget_forecast_backdated m
  where m.ctid = any (array(select x.ctid from budget_forecast_backdated x
                            where x.budget_id = p_budget_id
                              and x.xact < least(pg_snapshot_xmin(summed_under), pg_snapshot_xmin(kept))
                            for update skip locked));
end $$;

-- 1b. Projected alerts past 10^18 (013) ------------------------------------------------------------------
--
-- A crossing records the measure that crossed in budget_alert_history.spent, money (numeric(28, 10): below
-- 10^18). A forecast can pass that while the spend it projects from fits (a soft budget near 10^18, early in
-- its window): the crossing is still a crossing, compared unbounded, and stored with its measure clamped to
-- the largest amount money holds. Failing there would refuse usage that fits and every settlement on the
-- budget. As 013's otherwise (no settings to restate).
create or replace function budget_status_after_update() returns trigger language plpgsql as $$
declare
  budget record;
  alert jsonb;
  alert_basis text;
  measured numeric;
  forecast numeric;
  crossing_id uuid;
begin
  select b.amount, b.alerts into budget from budget_definitions b where b.id = new.budget_id;
  for alert in select value from jsonb_array_elements(budget.alerts) loop
    alert_basis := coalesce(alert ->> 'basis', 'current');
    measured := new.current_amount;
    if alert_basis = 'projected' then
      forecast := coalesce(forecast, budget_alert_measure(new.budget_id, new.current_amount, 'projected', new.period_start, new.period_end));
      measured := forecast;
    end if;
    continue when measured * 100 < (alert ->> 'threshold')::numeric * budget.amount;

    crossing_id := null;
    insert into budget_alert_history (budget_id, period_start, threshold, basis, actions, spent, limit_amount)
    values (new.budget_id, new.period_start, (alert ->> 'threshold')::numeric, alert_basis,
            array(select jsonb_array_elements_text(alert -> 'actions')), least(round(measured, 10), 999999999999999999.9999999999),
            budget.amount)
    on conflict (budget_id, period_start, threshold, basis) do nothing
    returning budget_alert_history.id into crossing_id;
    if crossing_id is not null then
      insert into budget_notification_outbox (alert_id, channel)
      select crossing_id, channel from jsonb_array_elements_text(coalesce(alert -> 'notificationChannels', '[]'::jsonb)) as channel
      on conflict (alert_id, channel) do nothing;
    end if;
  end loop;
  return null;
end $$;

-- 2. Digests: once per local day (or ISO week) -------------------------------------------------------------
--
-- A digest is keyed by the local date its period begins on (the day, or the Monday of the ISO week), not
-- by the UTC instant, which moves when the budget's time zone does. "The same day" across a zone change is
-- the same calendar date: each date is digested once, in the zone in force when its digest is made. Around
-- a change a few hours of usage may fall in two digests' periods, or in none; the window's numbers in every
-- digest come from the allocations, so no spend is lost or counted twice there.
alter table budget_digests add column first_day date;
-- Digests a zone change already sent twice keep their rows: the first of each date takes the key.
update budget_digests d set first_day = x.first_day
from (select id, (period_start at time zone timezone)::date as first_day,
             row_number() over (partition by budget_id, every, (period_start at time zone timezone)::date order by created_at, id) as nth
      from budget_digests) x
where x.id = d.id and x.nth = 1;
alter table budget_digests drop constraint budget_digests_budget_id_every_period_start_key;
alter table budget_digests add constraint budget_digests_once_per_date unique (budget_id, every, first_day);

-- 3. Converted holds that overflow (012) -----------------------------------------------------------------
--
-- Money is numeric(28, 10): below 10^18. A gated call's estimate converted at an extreme rate can be past
-- that, or can take a window's reserved amount past it (a soft budget admits any amount). Either way the
-- call cannot be held on that budget: a refusal of that call (estimate_out_of_range, lib/gate/decision.ts),
-- never an error of the statement, which holds a batch of other calls too.

-- The estimate converted at p_rate as a hold on a window with p_current spent and p_reserved held: null when
-- there is no rate, or when the amount or the window's total with it would be past what money can hold.
create function budget_hold_amount(p_amount numeric, p_rate numeric, p_current numeric, p_reserved numeric) returns numeric
language sql immutable parallel safe as $$
  select case when ceil(p_amount * p_rate * 10000000000) < 10000000000000000000000000000
               and p_current + p_reserved + ceil(p_amount * p_rate * 10000000000) / 10000000000 < 1000000000000000000
         then budget_convert(p_amount, p_rate) end
$$;

-- As 012's, with out_of_range per row: the budget has a rate in force, and the call still cannot be held on it.
drop function budget_hold_batch(uuid[], numeric[], text[], text, interval, integer[], uuid[], timestamptz[], timestamptz[], boolean[], integer[], boolean, boolean);
create function budget_hold_batch(
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
                                                 where h.budget_id = r.b and h.period_start = r.s and h.basis = 'projected') else '{}'::text[] end,
           budget_definitions_version(), r.held, rates[r.w], r.out_of_range
    from unnest(p_row_calls, p_row_budgets, p_row_starts, row_window, row_reserved_before, row_fits, row_held, row_out_of_range)
      as r(call, b, s, w, before, fits, held, out_of_range)
    where r.w is not null;
end $$;

alter function budget_hold_batch(uuid[], numeric[], text[], text, interval, integer[], uuid[], timestamptz[], timestamptz[], boolean[], integer[], boolean, boolean)
  set lock_timeout = '2s';

-- 4. Exchange rates: a history, not a row per instant ------------------------------------------------------
--
-- Setting a pair's rate again for the same instant adds a row: the replaced one stays, and the rate in
-- force at an instant is the one set last (the highest id) among those with the latest effective_from at
-- or before it. Allocations and holds store the rate they were converted at, so nothing recorded changes.
-- Writers of one pair are serialized (lib/currencies/exchange-rate-repository.ts), so ids follow commit order.
alter table budget_exchange_rates add column id bigint generated always as identity;
alter table budget_exchange_rates drop constraint budget_exchange_rates_pkey;
alter table budget_exchange_rates add primary key (id);
create index budget_exchange_rates_in_force on budget_exchange_rates (from_currency, to_currency, effective_from desc, id desc);

create or replace function budget_exchange_rate(p_from text, p_to text, p_at timestamptz) returns numeric
language sql stable parallel safe as $$
  select case when p_from = p_to then 1::numeric else (
    select r.rate from budget_exchange_rates r
    where r.from_currency = p_from and r.to_currency = p_to and r.effective_from <= p_at
    order by r.effective_from desc, r.id desc limit 1) end
$$;

-- The audit log (011) records rate changes too: no budget, the action set-exchange-rate, the rate replaced
-- at the same instant (or null) before, the new one after.
alter table budget_audit_log alter column budget_id drop not null;
alter table budget_audit_log drop constraint budget_audit_log_action_check;
alter table budget_audit_log add constraint budget_audit_log_action_check
  check (action in ('create', 'update', 'delete', 'approve', 'acknowledge', 'refresh-cache', 'set-exchange-rate'));
alter table budget_audit_log add constraint budget_audit_log_subject check ((budget_id is null) = (action = 'set-exchange-rate'));
