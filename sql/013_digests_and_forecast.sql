-- The reporter (issue 13, part 3).
-- 1. A forecast with weekday seasonality: what a budget will have spent when its window ends, from what
--    it spent on each weekday (in its own time zone) over the last four weeks, day by day; the linear
--    rule when there is not enough history. One implementation, budget_forecast(), read by the status's
--    projectedTotal, by projected alerts (budget_status_after_update, redefined below) and by digests.
-- 2. Scheduled digests: one per budget and day or week (in the budget's time zone), exactly once across
--    processes (a unique key), delivered through the notification outbox beside alert crossings.

-- 1. The forecast ------------------------------------------------------------------------------------

-- How many of p_days consecutive days from p_first fall on ISO weekday p_dow (1 Monday .. 7 Sunday).
create function budget_weekday_count(p_first date, p_days integer, p_dow integer) returns integer
language sql immutable parallel safe as $$
  select greatest(p_days, 0) / 7
       + case when ((p_dow - extract(isodow from p_first)::integer) % 7 + 7) % 7 < greatest(p_days, 0) % 7 then 1 else 0 end
$$;

-- The linear rule (the seed's): spend + spend per elapsed time x time left, the elapsed time counted from
-- the later of the window's start and the budget's, floored at one hour; nothing left to project outside
-- [that start, the window's end). Exact: money in units of 10^-10, one division rounded half up, as the
-- status computed it in TypeScript before (lib/usage/status-rules.ts keeps the burn rate).
create function budget_linear_forecast(p_current numeric, p_start timestamptz, p_end timestamptz, p_at timestamptz)
returns numeric language sql immutable parallel safe as $$
  select case
    when p_at < p_start or p_at >= p_end then p_current
    else (units + div(units * left_us * 2 + elapsed_us, elapsed_us * 2)) * 0.0000000001
  end
  from (select round(p_current * 10000000000) as units,
               extract(epoch from p_end - p_at) * 1000000 as left_us,
               greatest(extract(epoch from p_at - p_start) * 1000000, 3600000000) as elapsed_us) x
$$;

-- A budget's spend on each ISO weekday (totals[1] Monday .. totals[7] Sunday) over the whole local days
-- (in p_timezone) before p_day: at most 28 of them, none before the budget's first whole day. counts[d]
-- is how many of those days were weekday d; days how many there were. One range read of the allocations'
-- (budget_id, occurred_at) index, which includes the amount.
create function budget_weekday_profile(p_budget_id uuid, p_timezone text, p_start_date timestamptz, p_day date,
  out days integer, out totals numeric[], out counts integer[])
language plpgsql stable as $$
declare
  local_start timestamp := p_start_date at time zone p_timezone;
  first_day date := local_start::date + case when local_start = date_trunc('day', local_start) then 0 else 1 end;
  from_day date := greatest(p_day - 28, first_day);
begin
  days := greatest(p_day - from_day, 0);
  select array_agg(coalesce(s.total, 0) order by d.dow), array_agg(budget_weekday_count(from_day, days, d.dow) order by d.dow)
  into totals, counts
  from generate_series(1, 7) as d(dow)
  left join (
    select extract(isodow from a.occurred_at at time zone p_timezone)::integer as dow, sum(a.amount) as total
    from budget_usage_allocations a
    where days > 0 and a.budget_id = p_budget_id
      and a.occurred_at >= (from_day::timestamp at time zone p_timezone) and a.occurred_at < (p_day::timestamp at time zone p_timezone)
    group by 1
  ) s on s.dow = d.dow;
end $$;

-- Each budget's profile for one local day, kept so that history is summed at most once per budget and
-- day (by the first update, status read or digest that needs it), not on every update.
create table budget_forecast_profiles (
  budget_id   uuid primary key references budget_definitions (id),
  local_day   date not null,
  timezone    text not null,
  start_date  timestamptz not null,
  days        integer not null,
  totals      numeric[] not null,
  counts      integer[] not null,
  computed_at timestamptz not null default now()
);

-- The profile for p_day: the kept one when it is of that day (and of the budget's zone and start as they
-- are), else summed and kept, unless a later day's is kept already (a forecast as of a past instant).
-- A fresh profile is read without a lock; a stale one is replaced at most once a day.
create function budget_forecast_profile(p_budget_id uuid, p_timezone text, p_start_date timestamptz, p_day date,
  out days integer, out totals numeric[], out counts integer[])
language plpgsql as $$
begin
  select p.days, p.totals, p.counts into days, totals, counts from budget_forecast_profiles p
  where p.budget_id = p_budget_id and p.local_day = p_day and p.timezone = p_timezone and p.start_date = p_start_date;
  if found then return; end if;
  select w.days, w.totals, w.counts into days, totals, counts from budget_weekday_profile(p_budget_id, p_timezone, p_start_date, p_day) w;
  insert into budget_forecast_profiles as p (budget_id, local_day, timezone, start_date, days, totals, counts)
  values (p_budget_id, p_day, p_timezone, p_start_date, days, totals, counts)
  on conflict (budget_id) do update
  set local_day = excluded.local_day, timezone = excluded.timezone, start_date = excluded.start_date,
      days = excluded.days, totals = excluded.totals, counts = excluded.counts, computed_at = now()
  where p.local_day <= excluded.local_day;
end $$;

-- The fewest whole days of history (two of each weekday) a seasonal forecast is made from.
create function budget_forecast_min_days() returns integer language sql immutable parallel safe as $$ select 14 $$;

-- What the budget will have spent when the window [p_period_start, p_period_end) ends, seen at p_at with
-- p_current spent so far: p_current + each remaining local day's weekday rate (its weekday's spend per
-- day over the profile), the current day and a last day cut by the window's end in proportion to the
-- part of them left (a day of 23 or 25 hours counts as one day). With fewer than two weeks of history,
-- or none spent in it, the linear rule. The sum is carried at 20 decimals and rounded once, to 10.
create function budget_forecast(p_budget_id uuid, p_period_start timestamptz, p_period_end timestamptz, p_current numeric, p_at timestamptz)
returns numeric language plpgsql as $$
declare
  b record;
  start_at timestamptz;
  today date;
  last_day date;
  day_start timestamptz;
  next_start timestamptz;
  last_start timestamptz;
  profile record;
  extra numeric := 0;
  full_days integer;
begin
  select d.timezone, d.start_date into b from budget_definitions d where d.id = p_budget_id;
  start_at := greatest(p_period_start, b.start_date);
  if p_at < start_at or p_at >= p_period_end then return p_current; end if;

  today := (p_at at time zone b.timezone)::date;
  select * into profile from budget_forecast_profile(p_budget_id, b.timezone, b.start_date, today);
  if profile.days < budget_forecast_min_days() or (select sum(t) from unnest(profile.totals) t) <= 0 then
    return budget_linear_forecast(p_current, start_at, p_period_end, p_at);
  end if;

  -- weekday d's spend in a day, times the part of the day that counts: weight_us / day_us
  day_start := today::timestamp at time zone b.timezone;
  next_start := (today + 1)::timestamp at time zone b.timezone;
  extra := profile.totals[extract(isodow from today)::integer] * 1.00000000000000000000
           * extract(epoch from least(p_period_end, next_start) - p_at)
           / (profile.counts[extract(isodow from today)::integer] * extract(epoch from next_start - day_start));
  if p_period_end > next_start then
    last_day := (p_period_end at time zone b.timezone)::date;
    last_start := last_day::timestamp at time zone b.timezone;
    full_days := last_day - (today + 1);
    for dow in 1 .. 7 loop
      extra := extra + profile.totals[dow] * 1.00000000000000000000 * budget_weekday_count(today + 1, full_days, dow) / profile.counts[dow];
    end loop;
    if p_period_end > last_start then
      extra := extra + profile.totals[extract(isodow from last_day)::integer] * 1.00000000000000000000
               * extract(epoch from p_period_end - last_start)
               / (profile.counts[extract(isodow from last_day)::integer]
                  * extract(epoch from ((last_day + 1)::timestamp at time zone b.timezone) - last_start));
    end if;
  end if;
  return round(p_current + extra, 10);
end $$;

-- Projected alerts (004) compare the forecast. Only a budget that has a projected alert pays for one,
-- once per update however many projected alerts it has; its history is summed at most once a day.
-- What an alert compares with its threshold: the spend, or for a projected alert the forecast. The alert
-- trigger below and the batch collector (014) both measure through it, so they cannot disagree.
create function budget_alert_measure(p_budget_id uuid, p_current numeric, p_basis text, p_period_start timestamptz, p_period_end timestamptz)
returns numeric language sql volatile as $$
  select case when p_basis = 'projected' then budget_forecast(p_budget_id, p_period_start, p_period_end, p_current, now()) else p_current end
$$;

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
            array(select jsonb_array_elements_text(alert -> 'actions')), round(measured, 10), budget.amount)
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

-- 2. Digests -----------------------------------------------------------------------------------------

-- A budget's digest: how often (a local day or an ISO week from Monday) and to which channels; null: none.
alter table budget_definitions
  add column digest_every text check (digest_every in ('daily', 'weekly')),
  add column digest_channels text[] check (digest_channels is null or cardinality(digest_channels) between 1 and 20),
  add check ((digest_every is null) = (digest_channels is null));
create index budget_definitions_digest on budget_definitions (id) where digest_every is not null and deleted_at is null;

-- One row per budget and digest period: what it said, fixed when it was made. The unique key makes it
-- once across processes; its notifications are queued in the same statement by whichever made it.
create table budget_digests (
  id              uuid primary key default gen_random_uuid(),
  budget_id       uuid not null references budget_definitions (id),
  every           text not null check (every in ('daily', 'weekly')),
  period_start    timestamptz not null,
  period_end      timestamptz not null,
  timezone        text not null,
  spent           numeric(28, 10) not null,
  usage_count     bigint not null,
  window_start    timestamptz not null,
  window_end      timestamptz not null,
  window_spent    numeric(28, 10) not null,
  limit_amount    numeric(28, 10) not null,
  percent_used    numeric not null,
  burn_rate       numeric not null,
  projected_total numeric not null,
  top_models      jsonb not null,
  top_users       jsonb not null,
  created_at      timestamptz not null default now(),
  unique (budget_id, every, period_start)
);

-- The outbox (004) carries digests too: each row is a crossing's or a digest's, one per event and channel.
alter table budget_notification_outbox
  alter column alert_id drop not null,
  add column digest_id uuid references budget_digests (id),
  add constraint budget_notification_outbox_one_event check (num_nonnulls(alert_id, digest_id) = 1),
  add constraint budget_notification_outbox_digest_channel unique (digest_id, channel);
