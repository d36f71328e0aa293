-- Recording spend: the one owner of "allocations, then window-row deltas, then alert crossings, in the
-- lock order". The usage API's record, the usage trigger and the batch collector (usage-recording.sql) and both
-- settlements (settlements.sql) store their usage records, then hand the records' allocations here; a settlement also
-- hands what its window rows release (reserved_amount down), which is not spend but is written in the same
-- update of the row, so a settled window row is written once.
--
-- budget_record_spend takes one row per (usage record, budget) as parallel arrays:
--   p_ords          the order the records count in (one value per record; several records of one window
--                   take their steps, and under p_clamp what is left, in this order);
--   p_usage_ids, p_budget_ids;
--   p_amounts       the record's amount in its own currency, and p_rates the rate into the budget's
--                   (budget_convert's rule: rounded up to the money scale);
--   p_occurred_at   when the spend happened;
--   p_period_starts, p_period_ends
--                   the window row it is charged to (a settlement's hold names it); empty (or null) to
--                   find the budget's window at p_occurred_at (budget_window). Each allocation is dated
--                   inside its window, as the settlements have always dated a hold carried to another
--                   window (window-changes.sql).
--   p_clamp         what a window that cannot store the spend (money is below 10^18) does: true (the
--                   settlements, which must not fail for other calls' sake) charges what is left, the
--                   calls of a window in p_ords order; false (usage recorded on request) refuses the
--                   record whole, in order, as one-at-a-time recording would have refused it;
--   p_release_budgets, p_release_starts, p_released
--                   what each named window row gives up of its reserved amount (down to 0 at most), with
--                   the spend: a settlement's holds. Null for usage recorded on request;
--   p_trees         the trees of every budget named (spend and release), as the caller knows them (a
--                   settlement's reservation rows name them); null: read from the budgets. In the common case
--                   each statement then reads or writes one tree's rows, so that on Citus a settlement of one
--                   tree runs on that tree's node alone (settlements.sql).
-- Returns each row: its cost in the budget's currency and what was charged (null: its record was refused,
-- and nothing of it is stored here; the caller takes the record out or raises).
--
-- The window rows are locked here, in the lock order (locks.sql), every one named (spend and release) at
-- once when they all exist, as they always do for a settlement (its hold made them). Then, in the common
-- case, each window row is written ONCE (spend up, reserved down) and the allocations inserted, after a check
-- on the rows read under the lock that the one write is what recording the records one at a time would
-- leave: every window row there, nothing past the money range, no threshold on spend first reached before
-- the window's last record, and no projected alert on the window (its forecast is measured record by record,
-- each seeing the allocations before it only), unless that crossing is active already, when recording it
-- again would do nothing. Otherwise nothing is written and the step-wise path below runs, the rare one:
--   1. each allocation's window (found once per budget and instant) and cost; under !p_clamp a record
--      whose cost alone is past the money range is refused;
--   2. the allocations inserted, before any window row is locked; those of a budget with a projected
--      alert later, record by record (5), so each record's forecast sees the records before it only, as
--      one at a time;
--   3. the window rows locked in the lock order, one at a time so the order holds across rows that exist
--      and rows made here. A window without a row gets one, starting at its spend from elsewhere (its
--      allocations other than this call's: a row made here never counts them twice, nor a record refused
--      below). This replaces the trigger's old refresh, with the same value;
--   4. only where a window would pass the money range: the records clamped or refused, in order;
--   5. each window row written once per step: at each record where one of its alert thresholds is first
--      reached (budget_alert_reached; the alert trigger, alerts.sql, then sees the spend at that
--      record, as it would one record at a time) and at its last. A row written here gets
--      updated_at = now(); a row this call charged nothing to is not written for spend. Then the release.
-- Several records on one window are summed per row (window functions over p_ords), never one update per
-- record: a row updated n times in one transaction costs O(n) per update.
drop function if exists budget_record_spend(bigint[], uuid[], uuid[], numeric[], numeric[], timestamptz[], timestamptz[], timestamptz[], boolean,
                                            uuid[], timestamptz[], numeric[]);
create or replace function budget_record_spend(
  p_ords bigint[], p_usage_ids uuid[], p_budget_ids uuid[], p_amounts numeric[], p_rates numeric[],
  p_occurred_at timestamptz[], p_period_starts timestamptz[], p_period_ends timestamptz[], p_clamp boolean,
  p_release_budgets uuid[] default null, p_release_starts timestamptz[] default null, p_released numeric[] default null,
  p_trees uuid[] default null
) returns table (usage_id uuid, budget_id uuid, cost numeric, charged numeric)
language plpgsql as $$
#variable_conflict use_column
declare
  starts timestamptz[] := p_period_starts;
  ends timestamptz[] := p_period_ends;
  -- each allocation's root (its budget's), read in one statement: the common case's insert names it without
  -- a lookup per row, which kept its plan from being reused
  roots uuid[];
  -- the trees, and each named budget's root (def_ids[k] is in tree def_roots[k])
  trees uuid[];
  tree uuid;
  def_ids uuid[];
  def_roots uuid[];
  -- the windows found for (budget, instant), and the window rows there, each by a text key (budget|instant)
  found_keys text[] := '{}'::text[];
  found_starts timestamptz[] := '{}'::timestamptz[];
  found_ends timestamptz[] := '{}'::timestamptz[];
  existing_keys text[] := '{}'::text[];
  a_root uuid[];
  w record;
  missing boolean := false;
  -- one element per allocation, in (ord, budget_id) order
  a_ord bigint[];
  a_usage uuid[];
  a_budget uuid[];
  a_rate numeric[];
  a_at timestamptz[];
  a_start timestamptz[];
  a_end timestamptz[];
  a_cost numeric[];
  a_charged numeric[];
  -- one element per window, in the lock order
  w_budget uuid[];
  w_start timestamptz[];
  w_end timestamptz[];
  w_root uuid[];
  w_created boolean[];
  w_last_cost numeric[];
  w_released numeric[];
  w_limit numeric[];
  w_alerts jsonb[];
  simple boolean;
  written_at timestamptz := now();
  w_base numeric[];
  w_calls bigint[];
  w_last timestamptz[];
  w_total numeric[];
  created boolean;
  at_risk boolean;
  refused uuid[] := '{}'::uuid[];
  walked text[];
  sums numeric[];
  record_row record;
  fits boolean;
  slot integer;
  walk record;
  running_row record;
  pending numeric[];
  measured numeric;
  step_ords bigint[] := '{}'::bigint[];
  step_budgets uuid[] := '{}'::uuid[];
  step_starts timestamptz[] := '{}'::timestamptz[];
  steps integer;
  step_numbers integer[];
begin
  if coalesce(cardinality(p_usage_ids), 0) = 0 and coalesce(cardinality(p_released), 0) = 0 then return; end if;

  -- each named budget's root (def_ids[k] is in tree def_roots[k]): in one read when the trees are not named,
  -- else tree by tree; every statement after names its tree (on Citus, one shard's)
  if p_trees is null then
    select array_agg(d.id), array_agg(d.root_id) into def_ids, def_roots
    from budget_definitions d where d.id = any (coalesce(p_budget_ids, '{}') || coalesce(p_release_budgets, '{}'));
  else
    foreach tree in array array(select distinct x.root from unnest(p_trees) as x(root) order by x.root) loop
      select def_ids || array_agg(d.id), def_roots || array_agg(d.root_id) into def_ids, def_roots
      from budget_definitions d where d.root_id = tree and d.id = any (coalesce(p_budget_ids, '{}') || coalesce(p_release_budgets, '{}'));
    end loop;
    -- a budget in none of the trees named (a caller that named them wrong): all are read by id
    if exists (select 1 from unnest(coalesce(p_budget_ids, '{}') || coalesce(p_release_budgets, '{}')) as i(id)
               where i.id is not null and not (i.id = any (coalesce(def_ids, '{}')))) then
      select array_agg(d.id), array_agg(d.root_id) into def_ids, def_roots
      from budget_definitions d where d.id = any (coalesce(p_budget_ids, '{}') || coalesce(p_release_budgets, '{}'));
    end if;
  end if;
  trees := coalesce((select array_agg(distinct x.root order by x.root) from unnest(def_roots) as x(root)), '{}');
  select array_agg(x.root order by i.n) into roots
  from unnest(p_budget_ids) with ordinality as i(budget_id, n) left join unnest(def_ids, def_roots) as x(id, root) on x.id = i.budget_id;

  -- Each allocation's window: named by the caller, or found here (once per budget and instant). A call that
  -- spends nothing (a settlement that only releases what was held) finds none: on Citus that read would run on
  -- every shard.
  if coalesce(cardinality(starts), 0) = 0 and coalesce(cardinality(p_budget_ids), 0) > 0 then
    foreach tree in array trees loop
      select found_keys || coalesce(array_agg(x.budget_id::text || '|' || x.occurred_at::text), '{}'),
             found_starts || coalesce(array_agg(w.period_start), '{}'), found_ends || coalesce(array_agg(w.period_end), '{}')
      into found_keys, found_starts, found_ends
      from (select distinct i.budget_id, i.occurred_at from unnest(p_budget_ids, p_occurred_at, roots) as i(budget_id, occurred_at, root_id)
            where i.root_id = tree) x
      join budget_definitions d on d.root_id = tree and d.id = x.budget_id
      -- by the budget's columns: on Citus this runs on the shards, whose rows are not of budget_definitions' type
      left join lateral budget_period_window(d.period, d.start_date, d.end_date, d.recurring, x.occurred_at,
                                             d.timezone, d.fiscal_year_start_month, d.period_alignment) w on true;
    end loop;
    select array_agg(f.period_start order by i.n), array_agg(f.period_end order by i.n) into starts, ends
    from unnest(p_budget_ids, p_occurred_at) with ordinality as i(budget_id, occurred_at, n)
    left join unnest(found_keys, found_starts, found_ends) as f(key, period_start, period_end)
      on f.key = i.budget_id::text || '|' || i.occurred_at::text;
    -- a window with no row yet is made in the lock order by the step-wise path (3); nothing is locked before it
    foreach tree in array trees loop
      select existing_keys || coalesce(array_agg(c.budget_id::text || '|' || c.period_start::text), '{}') into existing_keys
      from budget_status_cache c
      join unnest(p_budget_ids, starts, roots) as i(budget_id, period_start, root_id) on c.budget_id = i.budget_id and c.period_start = i.period_start
      where c.root_id = tree and i.root_id = tree;
    end loop;
    missing := exists (select 1 from unnest(p_budget_ids, starts) as i(budget_id, period_start)
                       where i.period_start is not null and not (i.budget_id::text || '|' || i.period_start::text = any (existing_keys)));
  end if;

  if not missing then
    -- the lock order (locks.sql): every window row named, spend and release
    perform budget_lock_windows(array_agg(k.budget_id), array_agg(k.period_start), null, trees)
    from (select i.budget_id, i.period_start from unnest(p_budget_ids, starts) as i(budget_id, period_start)
          union
          select r.budget_id, r.period_start from unnest(p_release_budgets, p_release_starts) as r(budget_id, period_start)) k;

    -- The common case: see the top of this file for what `simple` checks. Each window named, spend and
    -- release: its root, its spend before this call (null: no row) and its budget's limit and alerts, read
    -- under the lock above; what this call adds to it; then whether one write per row is what one record at
    -- a time would leave. The checks and sums run on these arrays, apart from the tables: on Citus the rows
    -- are read on their trees' nodes, a statement each, which a query joining them to the calls' rows is not.
    with a as (
      select i.budget_id, i.period_start, i.ord,
             case when i.period_start is null then i.occurred_at
                  else greatest(i.period_start, least(i.occurred_at, i.period_end - interval '1 microsecond')) end as occurred_at,
             budget_convert_unbounded(i.amount, i.rate) as cost
      from unnest(p_ords, p_usage_ids, p_budget_ids, p_amounts, p_rates, p_occurred_at, starts, ends)
        as i(ord, usage_id, budget_id, amount, rate, occurred_at, period_start, period_end)
      where i.usage_id is not null
    ),
    spent as (
      select a.budget_id, a.period_start, sum(a.cost) as total, count(*) as calls, max(a.occurred_at) as last_at,
             (array_agg(a.cost order by a.ord desc))[1] as last_cost
      from a where a.period_start is not null group by a.budget_id, a.period_start
    ),
    released as (
      select r.budget_id, r.period_start, sum(r.amount) as amount
      from unnest(p_release_budgets, p_release_starts, p_released) as r(budget_id, period_start, amount)
      group by r.budget_id, r.period_start
    )
    select array_agg(coalesce(s.budget_id, r.budget_id)), array_agg(coalesce(s.period_start, r.period_start)),
           array_agg(coalesce(s.total, 0)), array_agg(coalesce(s.calls, 0)), array_agg(s.last_at), array_agg(s.last_cost), array_agg(r.amount),
           coalesce((select max(a.cost) from a), 0) <= budget_money_max()
    into w_budget, w_start, w_total, w_calls, w_last, w_last_cost, w_released, simple
    from spent s full join released r on r.budget_id = s.budget_id and r.period_start = s.period_start;

    -- each window in its place (n), read tree by tree; one that has no row stays null
    w_root := array_fill(null::uuid, array[coalesce(cardinality(w_budget), 0)]);
    w_base := array_fill(null::numeric, array[coalesce(cardinality(w_budget), 0)]);
    w_limit := w_base;
    w_alerts := array_fill(null::jsonb, array[coalesce(cardinality(w_budget), 0)]);
    foreach tree in array trees loop
      for w in
        select x.n, c.root_id, c.current_amount, d.amount, d.alerts
        from unnest(w_budget, w_start) with ordinality as x(budget_id, period_start, n)
        join budget_status_cache c on c.root_id = tree and c.budget_id = x.budget_id and c.period_start = x.period_start
        left join budget_definitions d on d.root_id = tree and d.id = c.budget_id
      loop
        w_root[w.n] := w.root_id; w_base[w.n] := w.current_amount; w_limit[w.n] := w.amount; w_alerts[w.n] := w.alerts;
      end loop;
    end loop;

    select simple and coalesce(bool_and(
             w.calls = 0
             or (w.base is not null and w.base + w.total <= budget_money_max()
                 and not exists (
                   select 1 from jsonb_array_elements(w.alerts) alert
                   where (alert ->> 'basis' = 'projected'
                          or (w.calls > 1 and budget_alert_reached(w.base + w.total - w.last_cost, (alert ->> 'threshold')::numeric, w.limit_amount)))
                     and not budget_alert_active(w.root_id, w.budget_id, w.period_start, (alert ->> 'threshold')::numeric,
                                                 coalesce(alert ->> 'basis', 'current'))))), true)
    into simple
    from unnest(w_budget, w_root, w_start, w_base, w_total, w_calls, w_last_cost, w_limit, w_alerts)
      as w(budget_id, root_id, period_start, base, total, calls, last_cost, limit_amount, alerts);

    if simple then
      insert into budget_usage_allocations (budget_id, root_id, usage_id, amount, occurred_at, exchange_rate)
      select i.budget_id, i.root_id, i.usage_id, budget_convert_unbounded(i.amount, i.rate),
             case when i.period_start is null then i.occurred_at
                  else greatest(i.period_start, least(i.occurred_at, i.period_end - interval '1 microsecond')) end,
             i.rate
      from unnest(p_usage_ids, p_budget_ids, p_amounts, p_rates, p_occurred_at, starts, ends, roots)
        as i(usage_id, budget_id, amount, rate, occurred_at, period_start, period_end, root_id)
      where i.usage_id is not null;

      foreach tree in array trees loop
        update budget_status_cache c
        set current_amount = c.current_amount + w.total, usage_count = c.usage_count + w.calls,
            last_usage_at = greatest(c.last_usage_at, w.last_at),
            reserved_amount = case when w.released is null then c.reserved_amount else greatest(c.reserved_amount - w.released, 0) end,
            -- now(), as a value: Citus evaluates no function of the statement's time inside a CASE on the nodes
            updated_at = case when w.calls > 0 then written_at else c.updated_at end
        from unnest(w_root, w_budget, w_start, w_total, w_calls, w_last, w_released) as w(root_id, budget_id, period_start, total, calls, last_at, released)
        where c.root_id = tree and w.root_id = tree and c.budget_id = w.budget_id and c.period_start = w.period_start;
      end loop;

      return query
        select i.usage_id, i.budget_id, budget_convert_unbounded(i.amount, i.rate), budget_convert_unbounded(i.amount, i.rate)
        from unnest(p_usage_ids, p_budget_ids, p_amounts, p_rates) as i(usage_id, budget_id, amount, rate)
        where i.usage_id is not null;
      return;
    end if;
  end if;

  ---- The step-wise path (the top of this file, 1 to 5).
  -- 1. Windows and costs.
  with resolved as (
    select i.ord, i.usage_id, i.budget_id, i.root_id, i.rate, i.occurred_at, i.period_start, i.period_end,
           budget_convert_unbounded(i.amount, i.rate) as cost
    from unnest(p_ords, p_usage_ids, p_budget_ids, p_amounts, p_rates, p_occurred_at, starts, ends, roots)
      as i(ord, usage_id, budget_id, amount, rate, occurred_at, period_start, period_end, root_id)
    where i.usage_id is not null
  ),
  -- !p_clamp: a record with a cost past the money range is refused whole (nothing could store it)
  overflowing as (
    select distinct r.usage_id from resolved r where not p_clamp and r.cost > budget_money_max()
  )
  select array_agg(r.ord order by r.ord, r.budget_id), array_agg(r.usage_id order by r.ord, r.budget_id),
         array_agg(r.budget_id order by r.ord, r.budget_id), array_agg(r.root_id order by r.ord, r.budget_id), array_agg(r.rate order by r.ord, r.budget_id),
         array_agg(case when r.period_start is null then r.occurred_at
                        else greatest(r.period_start, least(r.occurred_at, r.period_end - interval '1 microsecond')) end
                   order by r.ord, r.budget_id),
         array_agg(r.period_start order by r.ord, r.budget_id), array_agg(r.period_end order by r.ord, r.budget_id),
         array_agg(r.cost order by r.ord, r.budget_id),
         array_agg(case when o.usage_id is not null then null else least(r.cost, budget_money_max()) end order by r.ord, r.budget_id)
  into a_ord, a_usage, a_budget, a_root, a_rate, a_at, a_start, a_end, a_cost, a_charged
  from resolved r left join overflowing o on o.usage_id = r.usage_id;

  -- The windows, in the lock order (locks.sql: by root, budget and start), and each one's budget's limit and
  -- alerts, read tree by tree.
  select array_agg(w.budget_id order by w.root_id, w.budget_id, w.period_start),
         array_agg(w.period_start order by w.root_id, w.budget_id, w.period_start),
         array_agg(w.period_end order by w.root_id, w.budget_id, w.period_start),
         array_agg(w.root_id order by w.root_id, w.budget_id, w.period_start)
  into w_budget, w_start, w_end, w_root
  from (select a.budget_id, a.root_id, a.period_start, min(a.period_end) as period_end
        from unnest(a_budget, a_root, a_start, a_end, a_charged) as a(budget_id, root_id, period_start, period_end, charged)
        where a.period_start is not null and a.charged is not null
        group by a.budget_id, a.root_id, a.period_start) w;
  w_limit := array_fill(null::numeric, array[coalesce(cardinality(w_budget), 0)]);
  w_alerts := array_fill(null::jsonb, array[coalesce(cardinality(w_budget), 0)]);
  foreach tree in array trees loop
    for w in
      select x.n, d.amount, d.alerts
      from unnest(w_budget, w_root) with ordinality as x(budget_id, root_id, n)
      join budget_definitions d on d.root_id = tree and d.id = x.budget_id
      where x.root_id = tree
    loop
      w_limit[w.n] := w.amount; w_alerts[w.n] := w.alerts;
    end loop;
  end loop;

  -- The windows whose records are measured one by one (5): a projected alert without an active crossing.
  select coalesce(array_agg(distinct w.budget_id::text || '|' || w.period_start::text), '{}') into walked
  from unnest(w_budget, w_root, w_start, w_alerts) as w(budget_id, root_id, period_start, alerts)
  where exists (select 1 from jsonb_array_elements(w.alerts) alert
                where alert ->> 'basis' = 'projected'
                  and not budget_alert_active(w.root_id, w.budget_id, w.period_start, (alert ->> 'threshold')::numeric, 'projected'));

  -- 2. The allocations, before any window row is locked (a walked window's in 5).
  insert into budget_usage_allocations (budget_id, root_id, usage_id, amount, occurred_at, exchange_rate)
  select a.budget_id, a.root_id, a.usage_id, a.charged, a.occurred_at, a.rate
  from unnest(a_budget, a_root, a_usage, a_charged, a_at, a_rate, a_start) as a(budget_id, root_id, usage_id, charged, occurred_at, rate, period_start)
  where a.charged is not null and (a.period_start is null or not (a.budget_id::text || '|' || a.period_start::text = any (walked)));

  -- 3. The window rows, locked in the lock order: one made where there is none.
  w_created := array_fill(false, array[coalesce(cardinality(w_budget), 0)]);
  for i in 1 .. coalesce(cardinality(w_budget), 0) loop
    created := null;
    insert into budget_status_cache (budget_id, root_id, period_start, period_end)
    values (w_budget[i], w_root[i], w_start[i], w_end[i])
    on conflict (budget_id, period_start, root_id) do nothing
    returning true into created;
    if created then
      w_created[i] := true;
    else
      perform 1 from budget_status_cache c where c.root_id = w_root[i] and c.budget_id = w_budget[i] and c.period_start = w_start[i] for update;
    end if;
  end loop;

  -- Each window's spend before this call, and what this call adds to it: a row that was there has it; a
  -- row made here, the window's allocations other than this call's (whichever of them are stored yet).
  -- Window by window, each statement naming its tree.
  w_base := array_fill(null::numeric, array[coalesce(cardinality(w_budget), 0)]);
  w_calls := array_fill(null::bigint, array[coalesce(cardinality(w_budget), 0)]);
  w_last := array_fill(null::timestamptz, array[coalesce(cardinality(w_budget), 0)]);
  for i in 1 .. coalesce(cardinality(w_budget), 0) loop
    if w_created[i] then
      select coalesce(sum(x.amount), 0) as current_amount, count(*) as usage_count, max(x.occurred_at) as last_usage_at into w
      from budget_usage_allocations x
      where x.root_id = w_root[i] and x.budget_id = w_budget[i] and x.occurred_at >= w_start[i] and x.occurred_at < w_end[i]
        and x.usage_id <> all (a_usage);
    else
      select c.current_amount, c.usage_count, c.last_usage_at into w
      from budget_status_cache c where c.root_id = w_root[i] and c.budget_id = w_budget[i] and c.period_start = w_start[i];
    end if;
    w_base[i] := coalesce(w.current_amount, 0);
    w_calls[i] := coalesce(w.usage_count, 0);
    w_last[i] := w.last_usage_at;
  end loop;
  select array_agg(coalesce(own.total, 0) order by w.n) into w_total
  from unnest(w_budget, w_start) with ordinality as w(budget_id, period_start, n)
  left join (select a.budget_id, a.period_start, sum(a.charged) as total
             from unnest(a_budget, a_start, a_charged) as a(budget_id, period_start, charged)
             where a.period_start is not null and a.charged is not null
             group by a.budget_id, a.period_start) own on own.budget_id = w.budget_id and own.period_start = w.period_start;
  -- 4. A window this call would take past the money range (no real one does).
  select coalesce(bool_or(w.base + w.total > budget_money_max()), false) into at_risk
  from unnest(w_base, w_total) as w(base, total);
  if at_risk then
    if p_clamp then
      -- what each charge can still take: the window's room less the costs before it, in p_ords order
      select array_agg(x.charged order by x.n) into a_charged
      from (
        select a.n, case when a.charged is null or a.period_start is null then a.charged
                         else greatest(least(a.cost, budget_money_max() - w.base
                                                     - coalesce(sum(a.cost) over (partition by a.budget_id, a.period_start order by a.ord
                                                                                  rows between unbounded preceding and 1 preceding), 0)), 0) end as charged
        from unnest(a_budget, a_start, a_ord, a_cost, a_charged) with ordinality as a(budget_id, period_start, ord, cost, charged, n)
        left join unnest(w_budget, w_start, w_base) as w(budget_id, period_start, base) on w.budget_id = a.budget_id and w.period_start = a.period_start
      ) x;
      foreach tree in array trees loop
        update budget_usage_allocations t set amount = a.charged
        from unnest(a_budget, a_root, a_usage, a_charged) as a(budget_id, root_id, usage_id, charged)
        where t.root_id = tree and a.root_id = tree and t.budget_id = a.budget_id and t.usage_id = a.usage_id and t.amount <> a.charged;
      end loop;
    else
      -- one record at a time, in order, over the windows at risk only: a record that would take one of
      -- them past is refused, and adds to none
      sums := w_base;
      for record_row in
        select a.usage_id, array_agg(w.n::integer) as slots, array_agg(a.charged) as amounts
        from unnest(a_budget, a_start, a_usage, a_ord, a_charged) as a(budget_id, period_start, usage_id, ord, charged)
        join unnest(w_budget, w_start, w_base, w_total) with ordinality as w(budget_id, period_start, base, total, n)
          on w.budget_id = a.budget_id and w.period_start = a.period_start and w.base + w.total > budget_money_max()
        where a.charged is not null
        group by a.usage_id, a.ord order by a.ord
      loop
        fits := true;
        for i in 1 .. cardinality(record_row.slots) loop
          slot := record_row.slots[i];
          if sums[slot] + record_row.amounts[i] > budget_money_max() then fits := false; exit; end if;
        end loop;
        if fits then
          for i in 1 .. cardinality(record_row.slots) loop
            slot := record_row.slots[i];
            sums[slot] := sums[slot] + record_row.amounts[i];
          end loop;
        else
          refused := refused || record_row.usage_id;
        end if;
      end loop;
      foreach tree in array trees loop
        delete from budget_usage_allocations t using unnest(a_budget, a_root, a_usage) as a(budget_id, root_id, usage_id)
        where t.root_id = tree and a.root_id = tree and a.usage_id = any (refused) and t.budget_id = a.budget_id and t.usage_id = a.usage_id;
      end loop;
      select array_agg(case when a.usage_id = any (refused) then null else a.charged end order by a.n) into a_charged
      from unnest(a_usage, a_charged) with ordinality as a(usage_id, charged, n);
      -- a window left with none of this call's records: a row made for it here goes again
      for i in 1 .. coalesce(cardinality(w_budget), 0) loop
        if w_created[i] and not exists (select 1 from unnest(a_budget, a_start, a_charged) as a(budget_id, period_start, charged)
                                        where a.budget_id = w_budget[i] and a.period_start = w_start[i] and a.charged is not null) then
          delete from budget_status_cache c where c.root_id = w_root[i] and c.budget_id = w_budget[i] and c.period_start = w_start[i];
        end if;
      end loop;
    end if;
  end if;

  -- 5. The steps: per window, each record at which an alert threshold is first reached, and the last. Spend
  -- only grows record by record, so a threshold on spend is first reached at the first record whose running
  -- sum gets there (for every window at once).
  select coalesce(array_agg(x.ord), '{}'), coalesce(array_agg(x.budget_id), '{}'), coalesce(array_agg(x.period_start), '{}')
  into step_ords, step_budgets, step_starts
  from (
    select t.budget_id, t.period_start, min(r.ord) as ord
    from (select w.budget_id, w.period_start, w.base, (alert ->> 'threshold')::numeric as threshold, w.limit_amount
          from unnest(w_budget, w_start, w_base, w_limit, w_alerts) as w(budget_id, period_start, base, limit_amount, alerts)
          cross join lateral jsonb_array_elements(w.alerts) alert
          where coalesce(alert ->> 'basis', 'current') = 'current') t
    join (select r.budget_id, r.period_start, r.ord, sum(r.charged) over (partition by r.budget_id, r.period_start order by r.ord) as added
          from unnest(a_budget, a_start, a_ord, a_charged) as r(budget_id, period_start, ord, charged)
          where r.period_start is not null and r.charged is not null) r
      on r.budget_id = t.budget_id and r.period_start = t.period_start
    where budget_alert_reached(t.base + r.added, t.threshold, t.limit_amount)
    group by t.budget_id, t.period_start, t.threshold
  ) x;

  -- A walked window (a projected alert not crossed yet): its records one by one, as one at a time would
  -- record them. Each record's allocation is stored, then its forecast measured (budget_alert_measure, as
  -- the trigger does), so a forecast sees this call's records up to it and none after; the row is written at
  -- each step (a threshold on spend first reached, a projected one first reached, the last record).
  for walk in
    select w.budget_id, w.root_id, w.period_start, w.period_end, w.base, w.calls, w.last, w.limit_amount,
           array(select (alert ->> 'threshold')::numeric from jsonb_array_elements(w.alerts) alert where alert ->> 'basis' = 'projected') as thresholds
    from unnest(w_budget, w_root, w_start, w_end, w_base, w_calls, w_last, w_limit, w_alerts) with ordinality
      as w(budget_id, root_id, period_start, period_end, base, calls, last, limit_amount, alerts, n)
    where w.budget_id::text || '|' || w.period_start::text = any (walked)
    order by w.n
  loop
    pending := walk.thresholds;
    for running_row in
      select r.ord, r.usage_id, r.charged, r.occurred_at, r.rate, sum(r.charged) over o as added, count(*) over o as calls,
             max(r.occurred_at) over o as last_at, r.ord = max(r.ord) over () as last
      from unnest(a_budget, a_start, a_ord, a_usage, a_charged, a_at, a_rate) as r(budget_id, period_start, ord, usage_id, charged, occurred_at, rate)
      where r.budget_id = walk.budget_id and r.period_start = walk.period_start and r.charged is not null
      window o as (order by r.ord)
      order by r.ord
    loop
      insert into budget_usage_allocations (budget_id, root_id, usage_id, amount, occurred_at, exchange_rate)
      values (walk.budget_id, walk.root_id, running_row.usage_id, running_row.charged, running_row.occurred_at, running_row.rate);
      -- A backdated allocation (marked by its trigger, forecast.sql) changes the budget's weekday profile. The kept
      -- profile cannot tell this transaction's marks made after it was summed from those before (the
      -- transaction sees its own), so it is dropped and the next forecast sums it again. Only under the
      -- profile's key (budget_forecast_profile_key, forecast.sql), never waited for: when another transaction
      -- has it, no profile was kept by this one, and the kept one is stale to it anyway (it sees this
      -- transaction in progress, and its marks with it).
      if exists (select 1 from budget_forecast_backdated m where m.root_id = walk.root_id and m.budget_id = walk.budget_id and m.xact = pg_current_xact_id())
         and pg_try_advisory_xact_lock(budget_forecast_profile_key(walk.budget_id)) then
        delete from budget_forecast_profiles p where p.root_id = walk.root_id and p.budget_id = walk.budget_id;
      end if;
      measured := null;
      if cardinality(pending) > 0 then
        measured := budget_alert_measure_in_tree(walk.root_id, walk.budget_id, walk.base + running_row.added, 'projected', walk.period_start, walk.period_end);
      end if;
      if running_row.last
         or exists (select 1 from unnest(pending) as t(threshold) where budget_alert_reached(measured, t.threshold, walk.limit_amount))
         or exists (select 1 from unnest(step_budgets, step_starts, step_ords) as x(budget_id, period_start, ord)
                    where x.budget_id = walk.budget_id and x.period_start = walk.period_start and x.ord = running_row.ord) then
        update budget_status_cache c
        set current_amount = walk.base + running_row.added, usage_count = walk.calls + running_row.calls,
            last_usage_at = greatest(walk.last, running_row.last_at), updated_at = written_at
        where c.root_id = walk.root_id and c.budget_id = walk.budget_id and c.period_start = walk.period_start;
      end if;
      if measured is not null then
        pending := array(select t from unnest(pending) as t where not budget_alert_reached(measured, t, walk.limit_amount));
      end if;
    end loop;
  end loop;

  -- The other windows' steps, each row written once per step.
  with running as (
    select r.budget_id, r.period_start, r.ord, sum(r.charged) over w as added, count(*) over w as calls, max(r.occurred_at) over w as last_at,
           row_number() over (partition by r.budget_id, r.period_start order by r.ord desc) = 1 as last
    from unnest(a_budget, a_start, a_ord, a_charged, a_at) as r(budget_id, period_start, ord, charged, occurred_at)
    where r.period_start is not null and r.charged is not null
      and not (r.budget_id::text || '|' || r.period_start::text = any (walked))
    window w as (partition by r.budget_id, r.period_start order by r.ord)
  ),
  stepped as (
    select r.budget_id, w.root_id, r.period_start, w.base + r.added as spent, w.calls + r.calls as calls, greatest(w.last, r.last_at) as last_usage_at,
           row_number() over (partition by r.budget_id, r.period_start order by r.ord)::integer as step
    from running r
    join unnest(w_budget, w_root, w_start, w_base, w_calls, w_last) as w(budget_id, root_id, period_start, base, calls, last)
      on w.budget_id = r.budget_id and w.period_start = r.period_start
    where r.last or exists (select 1 from unnest(step_budgets, step_starts, step_ords) as x(budget_id, period_start, ord)
                            where x.budget_id = r.budget_id and x.period_start = r.period_start and x.ord = r.ord)
  )
  select array_agg(s.step), array_agg(s.budget_id), array_agg(s.root_id), array_agg(s.period_start), array_agg(s.spent), array_agg(s.calls), array_agg(s.last_usage_at)
  into step_numbers, step_budgets, w_root, step_starts, w_base, w_calls, w_last
  from stepped s;

  select coalesce(max(s), 0) into steps from unnest(step_numbers) as s;
  for step_number in 1 .. steps loop
    foreach tree in array trees loop
      update budget_status_cache c
      set current_amount = s.spent, usage_count = s.calls, last_usage_at = s.last_usage_at, updated_at = written_at
      from unnest(step_numbers, step_budgets, w_root, step_starts, w_base, w_calls, w_last) as s(step, budget_id, root_id, period_start, spent, calls, last_usage_at)
      where c.root_id = tree and s.root_id = tree and s.step = step_number and c.budget_id = s.budget_id and c.period_start = s.period_start;
    end loop;
  end loop;

  -- A settlement's release, after its spend (the rows are locked: all of them exist, and were locked first).
  foreach tree in array trees loop
    update budget_status_cache c set reserved_amount = greatest(c.reserved_amount - r.amount, 0)
    from (select r.budget_id, r.period_start, sum(r.amount) as amount
          from unnest(p_release_budgets, p_release_starts, p_released) as r(budget_id, period_start, amount)
          join unnest(def_ids, def_roots) as d(id, root_id) on d.id = r.budget_id and d.root_id = tree
          group by r.budget_id, r.period_start) r
    where c.root_id = tree and c.budget_id = r.budget_id and c.period_start = r.period_start;
  end loop;

  return query
    select a.usage_id, a.budget_id, a.cost, a.charged
    from unnest(a_usage, a_budget, a_cost, a_charged) as a(usage_id, budget_id, cost, charged);
end $$;
