-- The forecast: what a budget will have spent when its window ends, from what it spent on each weekday
-- (in its own time zone) over the last four weeks, day by day; the linear rule when there is not enough
-- history. One implementation, budget_forecast(), read by the status's projectedTotal, by projected
-- alerts (alerts.sql) and by digests.

-- How many of p_days consecutive days from p_first fall on ISO weekday p_dow (1 Monday .. 7 Sunday).
create or replace function budget_weekday_count(p_first date, p_days integer, p_dow integer) returns integer
language sql immutable parallel safe as $$
  select greatest(p_days, 0) / 7
       + case when ((p_dow - extract(isodow from p_first)::integer) % 7 + 7) % 7 < greatest(p_days, 0) % 7 then 1 else 0 end
$$;

-- The time a window's spend is spread over: from the later of its start and the budget's (p_start) to p_at,
-- in microseconds, never less than one hour, so a window's first second does not divide by nothing. The one
-- place the floor lives: the linear forecast (projected alerts measure it under the window's lock) and the
-- burn rate (the status's, the digests') both divide by it.
create or replace function budget_burn_elapsed_us(p_start timestamptz, p_at timestamptz) returns numeric
language sql immutable parallel safe as $$
  select greatest(extract(epoch from p_at - p_start) * 1000000, 3600000000)
$$;

-- The linear rule: spend + spend per elapsed time x time left, the elapsed time counted from
-- the later of the window's start and the budget's (budget_burn_elapsed_us); nothing left to project outside
-- [that start, the window's end). Exact: money in units of 10^-10, one division rounded half up.
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
-- status or a digest reads both in one statement.
create or replace function budget_burn_rate(p_budget_id uuid, p_period_start timestamptz, p_period_end timestamptz, p_current numeric, p_at timestamptz)
returns numeric language plpgsql stable parallel safe as $$
declare
  start_at timestamptz;
  elapsed_us numeric;
begin
  -- PL/pgSQL: Citus cannot plan a parameterized SQL-language function's query on a distributed table
  select greatest(p_period_start, d.start_date) into start_at from budget_definitions d where d.id = p_budget_id;
  if not found then return null; end if;
  if p_at < start_at then return 0::numeric; end if;
  elapsed_us := budget_burn_elapsed_us(start_at, least(p_at, p_period_end));
  return div(round(p_current * 10000000000) * 86400000000 * 2 + elapsed_us, elapsed_us * 2) * 0.0000000001;
end $$;

-- A budget's spend on each ISO weekday (totals[1] Monday .. totals[7] Sunday) over the whole local days
-- (in p_timezone) before p_day: at most 28 of them, none before the budget's first whole day. counts[d]
-- is how many of those days were weekday d; days how many there were. One range read of the allocations'
-- (budget_id, occurred_at) index, which includes the amount. In the budget's tree p_root_id, which the read
-- names (on Citus, one shard's).
create or replace function budget_weekday_profile_in_tree(p_root_id uuid, p_budget_id uuid, p_timezone text, p_start_date timestamptz, p_day date,
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
    where days > 0 and a.root_id = p_root_id and a.budget_id = p_budget_id
      and a.occurred_at >= (from_day::timestamp at time zone p_timezone) and a.occurred_at < (p_day::timestamp at time zone p_timezone)
    group by 1
  ) s on s.dow = d.dow;
end $$;

-- The same for a caller that knows only the budget: its root is read first.
create or replace function budget_weekday_profile(p_budget_id uuid, p_timezone text, p_start_date timestamptz, p_day date,
  out days integer, out totals numeric[], out counts integer[])
language plpgsql stable as $$
begin
  select w.days, w.totals, w.counts into days, totals, counts
  from budget_weekday_profile_in_tree((select d.root_id from budget_definitions d where d.id = p_budget_id), p_budget_id, p_timezone, p_start_date, p_day) w;
end $$;

-- The profile for p_day: the kept one when it is of that day (and of the budget's zone and start as they
-- are) and no backdated allocation came after it, else summed and kept (with the snapshot it was summed
-- under), unless a later day's is kept already (a forecast as of a past instant). A kept profile is
-- replaced only by one summed under a snapshot no older (by xmin), so the marks below the kept one's xmin,
-- visible to it and to any later sum, can go. Only the kept one's: when a later day's profile stays, a
-- mark below this sum's xmin may be one that profile did not see, and it must stay to make it summed again.
-- Who may write a budget's kept profile row (budget_forecast_profiles): the transaction holding this key's
-- advisory lock, taken only by pg_try_advisory_xact_lock, never waited for. A recording of spend takes
-- several budgets' profiles while it holds their window rows, in an order that follows its records (a
-- walked window first, then the others), so two recordings could wait for each other's profile rows;
-- a writer that cannot have the key at once leaves the row as it is (a forecast still returns its sum,
-- only not kept), so no profile row is ever waited for. (A collision of two budgets' keys only skips a
-- keep.)
create or replace function budget_forecast_profile_key(p_budget_id uuid) returns bigint
language sql immutable parallel safe as $$ select hashtextextended('budget_forecast_profiles:' || p_budget_id::text, 0) $$;

-- In the budget's tree p_root_id, which every statement names (on Citus, each is then one shard's).
drop function if exists budget_forecast_profile(uuid, text, timestamptz, date);
create or replace function budget_forecast_profile_in_tree(p_root_id uuid, p_budget_id uuid, p_timezone text, p_start_date timestamptz, p_day date,
  out days integer, out totals numeric[], out counts integer[])
language plpgsql as $$
declare
  summed_under pg_snapshot;
  kept pg_snapshot;
begin
  select p.days, p.totals, p.counts into days, totals, counts from budget_forecast_profiles p
  where p.root_id = p_root_id and p.budget_id = p_budget_id and p.local_day = p_day and p.timezone = p_timezone and p.start_date = p_start_date
    and p.snapshot is not null
    and not exists (select 1 from budget_forecast_backdated m
                    where m.root_id = p_root_id and m.budget_id = p_budget_id and m.xact >= pg_snapshot_xmin(p.snapshot) and not pg_visible_in_snapshot(m.xact, p.snapshot));
  if found then return; end if;
  -- One statement: the sum and the snapshot it read under are the same one.
  select w.days, w.totals, w.counts, pg_current_snapshot() into days, totals, counts, summed_under
  from budget_weekday_profile_in_tree(p_root_id, p_budget_id, p_timezone, p_start_date, p_day) w;
  -- kept only by the transaction that can have the profile's key at once (budget_forecast_profile_key)
  if not pg_try_advisory_xact_lock(budget_forecast_profile_key(p_budget_id)) then return; end if;
  -- (computed_at from the row inserted: Citus takes no function but an immutable one in a DO UPDATE SET)
  insert into budget_forecast_profiles as p (budget_id, root_id, local_day, timezone, start_date, days, totals, counts, snapshot, computed_at)
  values (p_budget_id, p_root_id, p_day, p_timezone, p_start_date, days, totals, counts, summed_under, now())
  on conflict (budget_id, root_id) do update
  set local_day = excluded.local_day, timezone = excluded.timezone, start_date = excluded.start_date,
      days = excluded.days, totals = excluded.totals, counts = excluded.counts, snapshot = excluded.snapshot, computed_at = excluded.computed_at
  where p.local_day < excluded.local_day
     or (p.local_day = excluded.local_day and (p.snapshot is null or pg_snapshot_xmin(p.snapshot) <= pg_snapshot_xmin(excluded.snapshot)));
  -- the profile kept now (this sum's, or a later day's that stayed, or another session's)
  select p.snapshot into kept from budget_forecast_profiles p where p.root_id = p_root_id and p.budget_id = p_budget_id;
  -- Marks the kept profile and every snapshot from now on see; skip locked: another sum pruning the same
  -- ones may have them.
  delete from budget_forecast_backdated m
  where m.root_id = p_root_id
    and m.ctid = any (array(select x.ctid from budget_forecast_backdated x
                            where x.root_id = p_root_id and x.budget_id = p_budget_id
                              and x.xact < least(pg_snapshot_xmin(summed_under), pg_snapshot_xmin(kept))
                            for update skip locked));
end $$;

-- The fewest whole days of history (two of each weekday) a seasonal forecast is made from.
create or replace function budget_forecast_min_days() returns integer language sql immutable parallel safe as $$ select 14 $$;

-- What the budget will have spent when the window [p_period_start, p_period_end) ends, seen at p_at with
-- p_current spent so far: p_current + each remaining local day's weekday rate (its weekday's spend per
-- day over the profile), the current day and a last day cut by the window's end in proportion to the
-- part of them left (a day of 23 or 25 hours counts as one day). With fewer than two weeks of history,
-- or none spent in it, the linear rule. The sum is carried at 20 decimals and rounded once, to 10.
-- budget_forecast_in_tree: with the budget's root, every statement naming it (on Citus, one shard's; the alert
-- trigger measures a projected alert on the tree's shard, where nothing else can be reached).
-- budget_forecast, with the budget alone: its root is read first.
create or replace function budget_forecast(p_budget_id uuid, p_period_start timestamptz, p_period_end timestamptz, p_current numeric, p_at timestamptz)
returns numeric language plpgsql as $$
begin
  return budget_forecast_in_tree((select d.root_id from budget_definitions d where d.id = p_budget_id), p_budget_id,
                                 p_period_start, p_period_end, p_current, p_at);
end $$;
create or replace function budget_forecast_in_tree(p_root uuid, p_budget_id uuid, p_period_start timestamptz, p_period_end timestamptz,
  p_current numeric, p_at timestamptz)
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
  extra numeric := 0::numeric;
  full_days integer;
begin
  select d.root_id, d.timezone, d.start_date into b from budget_definitions d where d.root_id = p_root and d.id = p_budget_id;
  start_at := greatest(p_period_start, b.start_date);
  if p_at < start_at or p_at >= p_period_end then return p_current; end if;

  today := (p_at at time zone b.timezone)::date;
  select * into profile from budget_forecast_profile_in_tree(b.root_id, p_budget_id, b.timezone, b.start_date, today);
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

-- Marks each budget that an inserted allocation dated before the day it is stored on reaches (the table
-- budget_forecast_backdated says why). "Dated before the day it is stored on" is judged with a minute's
-- margin (clock_timestamp() + 1 minute, in the budget's zone): a transaction that stores usage in the last
-- minute of a local day and commits after midnight, once the next day's profile has been summed without
-- it, is still caught. One statement a budget, naming its root, on the earliest of its allocations: on Citus the
-- trigger runs on the tree's shard, where a statement reaches other rows only by naming the root, and a
-- transition table is read alone.
create or replace function budget_forecast_mark_backdated() returns trigger language plpgsql as $$
declare
  allocated record;
begin
  for allocated in select a.root_id, a.budget_id, min(a.occurred_at) as earliest from added a group by a.root_id, a.budget_id loop
    insert into budget_forecast_backdated (budget_id, root_id, xact)
    select d.id, d.root_id, pg_current_xact_id() from budget_definitions d
    where d.root_id = allocated.root_id and d.id = allocated.budget_id
      and allocated.earliest < (date_trunc('day', (clock_timestamp() + interval '1 minute') at time zone d.timezone) at time zone d.timezone)
    on conflict do nothing;
  end loop;
  return null;
end $$;

create or replace trigger budget_usage_allocations_backdated after insert on budget_usage_allocations
referencing new table as added for each statement execute function budget_forecast_mark_backdated();
