-- Periods: a budget's window at an instant, in its own calendar. Windows are half-open,
-- [period_start, period_end), and computed from the anchor (start_date) each time, never stepped from
-- the previous window. Nothing here depends on the session's TimeZone: arithmetic runs on wall-clock
-- timestamps in the budget's zone (or UTC), so a custom period of '31 days' cannot move by an hour
-- across a daylight-saving change, and budget_period_window is as immutable as it is declared.

-- The start, as a wall-clock time, of the calendar window that holds p_local: the day, the ISO week
-- (from Monday), the month, the fiscal quarter or the fiscal year that begins in p_fiscal_month.
create or replace function budget_calendar_start(p_period text, p_local timestamp, p_fiscal_month integer)
returns timestamp language sql immutable parallel safe as $$
  select case p_period
    when 'daily' then date_trunc('day', p_local)
    when 'weekly' then date_trunc('week', p_local)
    when 'monthly' then date_trunc('month', p_local)
    when 'quarterly' then date_trunc('month', p_local)
      - make_interval(months => ((extract(month from p_local)::integer - p_fiscal_month + 12) % 3))
    when 'annual' then date_trunc('month', p_local)
      - make_interval(months => ((extract(month from p_local)::integer - p_fiscal_month + 12) % 12))
  end
$$;

-- The wall-clock start of window n after p_anchor, computed from the anchor each time (so monthly
-- from Jan 31 gives Feb 29, then Mar 31).
create or replace function budget_window_step(p_period text, p_anchor timestamp, p_n bigint)
returns timestamp language sql immutable parallel safe as $$
  select case p_period
    when 'daily' then p_anchor + make_interval(days => p_n::integer)
    when 'weekly' then p_anchor + make_interval(days => 7 * p_n::integer)
    when 'monthly' then p_anchor + make_interval(months => p_n::integer)
    when 'quarterly' then p_anchor + make_interval(months => 3 * p_n::integer)
    when 'annual' then p_anchor + make_interval(months => 12 * p_n::integer)
  end
$$;

-- The period window at p_at: the one implementation of periods (the gate, status, history, alerts
-- and the usage trigger all call it, through budget_window below).
--
-- Calendar periods step on the wall clock of the budget's zone and are turned into instants with
-- AT TIME ZONE, so a daily window across a daylight-saving change lasts 23 or 25 hours. A wall-clock
-- boundary that a change skips (a gap) or repeats (an overlap) is the instant PostgreSQL gives it:
-- in a gap, read with the offset before the change; in an overlap, the later instant. Where that
-- moves a boundary across p_at, the neighbouring window is the one that holds it. The first window
-- never starts after startDate. Custom periods are exact lengths of time, in no zone.
--
-- With alignment 'start' the windows step from startDate's wall-clock time; with 'calendar' from the
-- start of the calendar window that holds startDate (the budget applies from startDate on).
-- A non-recurring budget has only its first window; an end date cuts the last one.
create or replace function budget_period_window(
  p_period text, p_start timestamptz, p_end timestamptz, p_recurring boolean, p_at timestamptz,
  p_timezone text, p_fiscal_month integer, p_alignment text,
  out period_start timestamptz, out period_end timestamptz
) returns setof record language plpgsql immutable parallel safe as $$
declare
  anchor  timestamp;
  instant timestamp;
  step_us bigint;
  months  integer;
  n       bigint;
begin
  if p_at is null or p_start is null or p_at < p_start then return; end if;
  if p_period = 'custom' then
    -- A custom period is exactly as long as its dates say, in microseconds.
    anchor := p_start at time zone 'UTC';
    step_us := (extract(epoch from (p_end - p_start)) * 1000000)::bigint;
    n := floor((extract(epoch from (p_at - p_start)) * 1000000) / step_us)::bigint;
    period_start := (anchor + (step_us * n)::double precision * interval '1 microsecond') at time zone 'UTC';
    period_end := (anchor + (step_us * (n + 1))::double precision * interval '1 microsecond') at time zone 'UTC';
  else
    anchor := p_start at time zone p_timezone;
    instant := p_at at time zone p_timezone;
    if p_alignment = 'calendar' then anchor := budget_calendar_start(p_period, anchor, p_fiscal_month); end if;
    -- n from the wall clock; a gap or overlap can put it one off, the loop below corrects that
    if p_period in ('daily', 'weekly') then
      n := floor(extract(epoch from instant - anchor) / (case p_period when 'daily' then 86400 else 604800 end))::bigint;
    else
      months := case p_period when 'monthly' then 1 when 'quarterly' then 3 when 'annual' then 12 end;
      n := ((extract(year from instant) - extract(year from anchor)) * 12 + extract(month from instant) - extract(month from anchor))::bigint;
      if anchor + make_interval(months => n::integer) > instant then n := n - 1; end if;
      n := floor(n::numeric / months)::bigint;
    end if;
    n := greatest(n, 0);
    for attempt in 1..3 loop
      period_start := budget_window_step(p_period, anchor, n) at time zone p_timezone;
      if n = 0 then period_start := least(period_start, p_start); end if;
      period_end := budget_window_step(p_period, anchor, n + 1) at time zone p_timezone;
      exit when period_start <= p_at and p_at < period_end;
      n := case when p_at < period_start then n - 1 else n + 1 end;
    end loop;
    if not (period_start <= p_at and p_at < period_end) then
      raise exception 'no % window of % holds % in %', p_period, p_start, p_at, p_timezone;
    end if;
  end if;
  if n > 0 and not p_recurring then return; end if;
  if p_end is not null and p_period <> 'custom' then
    if p_at >= p_end then return; end if;
    period_end := least(period_end, p_end);
  end if;
  return next;
end $$;

-- A budget's window at p_at, from its row: what every caller uses, so no caller can forget a setting.
create or replace function budget_window(b budget_definitions, p_at timestamptz, out period_start timestamptz, out period_end timestamptz)
returns setof record language sql immutable parallel safe as $$
  select * from budget_period_window(b.period, b.start_date, b.end_date, b.recurring, p_at,
                                     b.timezone, b.fiscal_year_start_month, b.period_alignment)
$$;

-- The window a budget's status speaks of at each instant: the current one while active, the first one before
-- it starts, the last one after it ends; and that state ('active', 'scheduled', 'ended'). p_budget_ids[i] at
-- p_ats[i]; a budget not found has no row (ord: its position). The budgets are read in one statement, by id
-- (on Citus a read of every shard), and the windows computed on their columns alone: a query that joined the
-- windows to the table would run on the shards, where Citus takes no union of table functions.
create or replace function budget_status_windows(p_budget_ids uuid[], p_ats timestamptz[])
returns table (ord integer, period_start timestamptz, period_end timestamptz, state text)
language plpgsql stable as $$
declare
  b record;
  w record;
begin
  for b in select x.ord::integer as ord, x.at, d.period, d.start_date, d.end_date, d.recurring, d.timezone, d.fiscal_year_start_month, d.period_alignment
           from unnest(p_budget_ids, p_ats) with ordinality as x(budget_id, at, ord)
           join (select d.id, d.period, d.start_date, d.end_date, d.recurring, d.timezone, d.fiscal_year_start_month, d.period_alignment
                 from budget_definitions d where d.id = any (p_budget_ids)) d on d.id = x.budget_id
           order by x.ord loop
    select y.ordinal, y.period_start, y.period_end into w
    from (select 0 as ordinal, * from budget_period_window(b.period, b.start_date, b.end_date, b.recurring, greatest(b.at, b.start_date), b.timezone, b.fiscal_year_start_month, b.period_alignment)
          union all
          select 1, * from budget_period_window(b.period, b.start_date, b.end_date, b.recurring, b.end_date - interval '1 microsecond', b.timezone, b.fiscal_year_start_month, b.period_alignment)
          union all
          select 2, * from budget_period_window(b.period, b.start_date, b.end_date, b.recurring, b.start_date, b.timezone, b.fiscal_year_start_month, b.period_alignment)
          order by ordinal limit 1) y;
    continue when not found;
    ord := b.ord;
    period_start := w.period_start;
    period_end := w.period_end;
    state := case when b.at < b.start_date then 'scheduled' when w.ordinal = 0 then 'active' else 'ended' end;
    return next;
  end loop;
end $$;
