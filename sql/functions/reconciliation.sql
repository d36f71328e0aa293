-- Reconciliation with the provider's bill (the tables: sql/migrations/007_reconciliation.sql): the provider's
-- amount for a mapped budget and UTC day beside the spend the gate recorded for it, the drift alerted once,
-- and the true-up that writes the difference into the budget as one correction.

-- One line per mapped (provider, budget) and UTC day on which the provider's report has buckets, from p_from
-- to p_to (inclusive), optionally one provider's or one budget's, in the order (day, provider, budget name, id):
--   provider_amount  the mapped buckets of that day, in the budget's currency at the rate in force at noon UTC
--                    of the day (budget_exchange_rate), rounded up to the money scale as every conversion is
--                    (budget_convert's rule); null when a rate is missing, and missing_rate names the currency;
--   recorded_amount  what counts toward the budget from usage that occurred that UTC day, the budget's own
--                    corrections left out (they are what a true-up moves); a correction written for another
--                    budget (a descendant's, passed up to this one) counts, as the usage it corrects does, so a
--                    parent trued up after its child does not write the child's difference a second time;
--   correction       what a true-up wrote for the day (null: none);
--   difference       provider_amount - recorded_amount: the correction a true-up writes;
--   ratio            difference / recorded_amount to 6 decimal places, rounded half away from zero (null when
--                    nothing was recorded);
--   bucketed         whether a bucket of a dimension mapped to the budget is among the day's: without one, the
--                    line's amount of 0 is no bill (a mistyped mapping value, say), and a true-up to it would
--                    wipe out the day's recorded spend;
--   root_id          the budget's tree.
-- Which report is trusted: a provider's collector over a CSV for the same provider and day (a CSV is for
-- providers without one). A bucket that two mappings of one budget both match counts once.
-- Read scope by scope, each statement naming the budget's tree (on Citus, one shard's), and the buckets and
-- rates apart from the budgets' rows (reference tables): as every reader of a budget table, PL/pgSQL.
-- Its result's columns changed (bucketed, root_id): dropped and made again.
drop function if exists budget_recon_report(date, date, text, uuid);
create or replace function budget_recon_report(p_from date, p_to date, p_provider text, p_budget_id uuid)
returns table (day date, provider text, budget_id uuid, budget_name text, currency text, true_up boolean, filtered boolean,
               provider_amount numeric, recorded_amount numeric, correction numeric, difference numeric, ratio numeric, missing_rate text,
               bucketed boolean, root_id uuid)
language plpgsql stable as $$
#variable_conflict use_column
declare
  range_start timestamptz := p_from::timestamp at time zone 'UTC';
  range_end timestamptz := (p_to + 1)::timestamp at time zone 'UTC';
  scope record;
  budget record;
  -- the report's days of the scope's provider, with the source trusted on each (0: a collector's, 1: a CSV's);
  -- read once a provider (the scopes come by provider)
  days_of text;
  days date[];
  ranks integer[];
  -- the scope's mapped buckets of those days, summed by day and currency
  billed_days date[];
  billed_currencies text[];
  billed_amounts numeric[];
  -- what the gate recorded toward the budget, and the corrections written, by day
  recorded_days date[];
  recorded_amounts numeric[];
  corrected_days date[];
  corrected_amounts numeric[];
  -- each scope's lines, a jsonb array a scope (appended in place: one jsonb grown scope by scope would be
  -- copied whole at each scope)
  scope_lines jsonb;
  lines jsonb[] := '{}'::jsonb[];
begin
  for scope in
    select m.provider, m.budget_id, m.root_id, bool_or(m.true_up) as true_up
    from budget_recon_mappings m
    where (p_provider is null or m.provider = p_provider) and (p_budget_id is null or m.budget_id = p_budget_id)
    group by m.provider, m.budget_id, m.root_id
    order by m.provider
  loop
    select b.name, b.currency, (b.filter_models is not null or b.filter_tags is not null) as filtered into budget
    from budget_definitions b where b.root_id = scope.root_id and b.id = scope.budget_id and b.deleted_at is null;
    continue when not found;
    if days_of is distinct from scope.provider then
      select coalesce(array_agg(p.bucket_date order by p.bucket_date), '{}'), coalesce(array_agg(p.rank order by p.bucket_date), '{}') into days, ranks
      from (select c.bucket_date, min(case when c.source = 'csv' then 1 else 0 end) as rank
            from budget_provider_costs c where c.provider = scope.provider and c.bucket_date between p_from and p_to
            group by c.bucket_date) p;
      days_of := scope.provider;
    end if;
    continue when cardinality(days) = 0;
    select coalesce(array_agg(x.bucket_date), '{}'), coalesce(array_agg(x.currency), '{}'), coalesce(array_agg(x.amount), '{}')
    into billed_days, billed_currencies, billed_amounts
    from (select b.bucket_date, b.currency, sum(b.amount) as amount
          from (select distinct c.id, c.bucket_date, c.currency, c.amount
                from budget_recon_mappings m
                join budget_provider_costs c on c.provider = m.provider and (case m.kind when 'account' then c.account else c.project end) = m.value
                join unnest(days, ranks) as p(bucket_date, rank) on p.bucket_date = c.bucket_date and (case when c.source = 'csv' then 1 else 0 end) = p.rank
                where m.root_id = scope.root_id and m.budget_id = scope.budget_id and m.provider = scope.provider) b
          group by b.bucket_date, b.currency) x;
    select coalesce(array_agg(r.day), '{}'), coalesce(array_agg(r.amount), '{}') into recorded_days, recorded_amounts
    from (select (a.occurred_at at time zone 'UTC')::date as day, sum(a.amount) as amount
          from budget_usage_allocations a
          where a.root_id = scope.root_id and a.budget_id = scope.budget_id and a.occurred_at >= range_start and a.occurred_at < range_end
            and not exists (select 1 from budget_usage_records u
                            where u.root_id = scope.root_id and u.id = a.usage_id and u.correction and u.budget_id = scope.budget_id)
          group by 1) r;
    select coalesce(array_agg(c.day), '{}'), coalesce(array_agg(c.amount), '{}') into corrected_days, corrected_amounts
    from budget_recon_corrections c
    where c.root_id = scope.root_id and c.provider = scope.provider and c.budget_id = scope.budget_id and c.day between p_from and p_to;

    -- the scope's lines, from the arrays and the rates alone
    select jsonb_agg(jsonb_build_object(
             'day', l.day, 'provider', scope.provider, 'budget_id', scope.budget_id, 'root_id', scope.root_id, 'budget_name', budget.name,
             'currency', budget.currency, 'true_up', scope.true_up, 'filtered', budget.filtered,
             'total', l.total, 'missing', l.missing, 'bucketed', l.bucketed, 'recorded', l.recorded, 'correction', l.correction))
    into scope_lines
    from (select d.day,
                 round(budget_convert_unbounded(coalesce(sum(x.amount * x.rate), 0), 1), 10) as total,
                 min(x.currency) filter (where x.rate is null and x.currency is not null) as missing,
                 count(x.currency) > 0 as bucketed,
                 coalesce((select r.amount from unnest(recorded_days, recorded_amounts) as r(day, amount) where r.day = d.day), 0) as recorded,
                 (select c.amount from unnest(corrected_days, corrected_amounts) as c(day, amount) where c.day = d.day) as correction
          from unnest(days) as d(day)
          left join lateral (
            select b.currency, b.amount, budget_exchange_rate(b.currency, budget.currency, (d.day::timestamp + interval '12 hours') at time zone 'UTC') as rate
            from unnest(billed_days, billed_currencies, billed_amounts) as b(day, currency, amount) where b.day = d.day
          ) x on true
          group by d.day) l;
    lines := array_append(lines, scope_lines);
  end loop;

  return query
  select l.day, l.provider, l.budget_id, l.budget_name, l.currency, l.true_up, l.filtered,
         case when l.missing is null then l.total end,
         l.recorded,
         l.correction,
         case when l.missing is null then round(l.total - l.recorded, 10) end,
         case when l.missing is null and l.recorded <> 0 then round((l.total - l.recorded) / l.recorded, 6) end,
         l.missing, l.bucketed, l.root_id
  from unnest(lines) as scope(lines)
  cross join lateral jsonb_to_recordset(scope.lines) as l(day date, provider text, budget_id uuid, root_id uuid, budget_name text, currency text, true_up boolean,
                                      filtered boolean, total numeric, missing text, bucketed boolean, recorded numeric, correction numeric)
  order by l.day, l.provider, l.budget_name, l.budget_id;
end $$;

-- Whether a line drifts past the tolerance (a fraction: 0.05 is 5%): |difference| > tolerance x recorded,
-- compared exactly; anything billed on a day the gate recorded nothing drifts.
create or replace function budget_recon_drifts_past(p_difference numeric, p_recorded numeric, p_tolerance numeric) returns boolean
language sql immutable parallel safe as $$
  select p_difference is not null and p_difference <> 0 and (p_recorded = 0 or abs(p_difference) > p_tolerance * p_recorded)
$$;

-- Records each drift past p_tolerance on the days from p_from to the day before p_today (today's buckets are
-- not final), once per provider, day and budget, with its notifications for the channels the budget's alerts
-- name; returns the drifts recorded now (none that was recorded before). Each drift is written by statements
-- that name its budget's tree.
create or replace function budget_recon_evaluate(p_tolerance numeric, p_from date, p_today date)
returns table (drift_id uuid, provider text, day date, budget_id uuid)
language plpgsql as $$
#variable_conflict use_column
declare
  line record;
  recorded uuid;
begin
  for line in
    select r.* from budget_recon_report(p_from, p_today - 1, null, null) r
    where budget_recon_drifts_past(r.difference, r.recorded_amount, p_tolerance)
      -- A line whose amounts do not fit budget_recon_drifts' numeric(28,10) (a bill past 10^18) is left out
      -- here, so it cannot stop every other budget's drift from being recorded; the report still shows it.
      and abs(r.provider_amount) < 1e18 and abs(r.recorded_amount) < 1e18 and abs(r.difference) < 1e18
    order by r.provider, r.day, r.budget_id
  loop
    insert into budget_recon_drifts as d (provider, day, budget_id, root_id, currency, provider_amount, recorded_amount, difference, ratio, tolerance)
    values (line.provider, line.day, line.budget_id, line.root_id, line.currency, line.provider_amount, line.recorded_amount, line.difference, line.ratio, p_tolerance)
    on conflict (provider, day, budget_id, root_id) do nothing
    returning d.id into recorded;
    continue when recorded is null;
    insert into budget_notification_outbox (root_id, drift_id, channel)
    select distinct b.root_id, recorded, channel.name
    from budget_definitions b
    cross join lateral jsonb_array_elements(b.alerts) alert
    cross join lateral jsonb_array_elements_text(coalesce(alert -> 'notificationChannels', '[]'::jsonb)) as channel(name)
    where b.root_id = line.root_id and b.id = line.budget_id
    on conflict (drift_id, channel, root_id) do nothing;
    return query select recorded, line.provider, line.day, line.budget_id;
  end loop;
end $$;

-- The report's bucket check now rides on its lines (budget_recon_report's bucketed).
drop function if exists budget_recon_has_bucket(text, date, uuid);

-- Writes p_amount (in the budget's currency) into budget p_budget_id of tree p_root_id as one correction usage
-- record at noon UTC of p_day, marked correction (never a hold), through budget_record_spend, the one owner of
-- a window's spend (spend.sql): its money range, its crossing rule and its lock order, as for any usage record.
-- A first correction counts toward the budget and its ancestors as its usage does (budget_usage_targets); an
-- adjustment of one (p_adjusts, that correction's first record) counts toward the budgets that record counts
-- toward, at its rates, so a correction stays one amount on one set of budgets however often it moves.
-- Returns the record's id. 22003 when it would take a window past numeric(28,10).
drop function if exists budget_recon_write_correction(text, date, uuid, numeric, uuid);
create or replace function budget_recon_write_correction(p_provider text, p_day date, p_root_id uuid, p_budget_id uuid, p_amount numeric, p_adjusts uuid)
returns uuid language plpgsql as $$
declare
  at timestamptz := (p_day::timestamp + interval '12 hours') at time zone 'UTC';
  budget_currency text;
  written uuid;
  budgets uuid[];
  rates numeric[];
  refused boolean;
begin
  select b.currency into budget_currency from budget_definitions b where b.root_id = p_root_id and b.id = p_budget_id;
  insert into budget_usage_records (budget_id, root_id, amount, currency, source, description, metadata, occurred_at, allocated_by_settlement, correction)
  values (p_budget_id, p_root_id, p_amount, budget_currency, 'reconciliation',
          case when p_adjusts is null then 'true-up to the ' else 'true-up adjusted to the ' end || p_provider || ' bill of ' || p_day::text,
          jsonb_build_object('provider', p_provider, 'day', p_day::text, 'correction', true)
            || case when p_adjusts is null then '{}'::jsonb else jsonb_build_object('adjusts', p_adjusts) end,
          at, true, true)
  returning id into written;
  if p_adjusts is null then
    select array_agg(t.budget_id), array_agg(t.exchange_rate) into budgets, rates
    from budget_usage_targets(p_budget_id, '{}', null, null, budget_currency, at) t;
  else
    -- the first record's allocations: its budget's and its ancestors', all of its tree
    select array_agg(a.budget_id order by a.budget_id), array_agg(a.exchange_rate order by a.budget_id) into budgets, rates
    from budget_usage_allocations a where a.root_id = p_root_id and a.usage_id = p_adjusts;
  end if;
  select bool_or(s.charged is null) into refused
  from budget_record_spend(array_fill(1::bigint, array[cardinality(budgets)]), array_fill(written, array[cardinality(budgets)]), budgets,
                           array_fill(p_amount, array[cardinality(budgets)]), rates,
                           array_fill(at, array[cardinality(budgets)]), '{}', '{}', false, p_trees => array[p_root_id]) s;
  if refused then
    raise exception using errcode = 'numeric_value_out_of_range', message = 'numeric field overflow',
      detail = 'the correction would take an amount counted toward a budget past numeric(28,10)';
  end if;
  return written;
end $$;

-- Moves a correction written before to p_amount: the change is written as one more correction record that
-- adjusts the first (budget_recon_write_correction), so the records of a correction always sum to it, each
-- window is written once by the owner of its spend, and no record already counted is rewritten. The caller
-- holds the day's true-up lock and has marked the transaction a true-up's (budget_recon_correcting).
drop function if exists budget_recon_move_correction(bigint, uuid, numeric);
create or replace function budget_recon_move_correction(p_root_id uuid, p_correction_id bigint, p_usage_id uuid, p_amount numeric) returns void
language plpgsql as $$
declare
  correction record;
  moved_at timestamptz;
begin
  select c.provider, c.day, c.budget_id, c.amount into correction from budget_recon_corrections c where c.root_id = p_root_id and c.id = p_correction_id;
  perform budget_recon_write_correction(correction.provider, correction.day, p_root_id, correction.budget_id, p_amount - correction.amount, p_usage_id);
  -- a value, not a call: Citus runs no volatile function in an update of a distributed table
  moved_at := clock_timestamp();
  update budget_recon_corrections c set amount = p_amount, updated_at = moved_at where c.root_id = p_root_id and c.id = p_correction_id;
end $$;

-- A correction reaches the budget's ancestors (as any of its spend does), and an ancestor's recorded amount
-- counts it: an ancestor trued up before would now count it twice. So after a budget's correction is written
-- or moved, each ancestor that has a correction for the day (of any provider: the ancestor's own) and may be
-- trued up (a mapping with trueUp, no model or tag filters, a bucket of its dimension that day) is trued up
-- again, nearest first, so a moved ancestor's change has reached the ones above it before they are read.
-- Each ends at its own invoice whatever order the budgets were trued up in. The caller holds the day's
-- true-up lock (which every true-up of the day takes first) and has marked the transaction a true-up's (budget_recon_correcting). Returns
-- the corrections moved, for the audit log. A missing rate is RB001, as for the budget's own true-up.
drop function if exists budget_recon_true_up_ancestors(date, uuid);
create or replace function budget_recon_true_up_ancestors(p_day date, p_root_id uuid, p_budget_id uuid)
returns table (budget_id uuid, provider text, usage_id uuid, amount numeric, previous numeric)
language plpgsql as $$
#variable_conflict use_column
declare
  ancestor record;
  existing record;
  line record;
begin
  for ancestor in select l.id from budget_lineage_within(p_root_id, p_budget_id) l where l.depth > 1 order by l.depth loop
    for existing in
      select c.id, c.provider, c.usage_id, c.amount from budget_recon_corrections c
      where c.root_id = p_root_id and c.budget_id = ancestor.id and c.day = p_day
        and exists (select 1 from budget_recon_mappings m
                    where m.root_id = p_root_id and m.provider = c.provider and m.budget_id = c.budget_id and m.true_up)
      order by c.provider
      for update
    loop
      select * into line from budget_recon_report(p_day, p_day, existing.provider, ancestor.id) r;
      continue when not found or line.filtered or not line.bucketed;
      if line.missing_rate is not null then
        raise exception 'no exchange rate from % to % in force at %', line.missing_rate, line.currency, (p_day::timestamp + interval '12 hours') at time zone 'UTC'
          using errcode = 'RB001', detail = line.missing_rate || '/' || line.currency;
      end if;
      continue when line.difference = existing.amount;
      perform budget_recon_move_correction(p_root_id, existing.id, existing.usage_id, line.difference);
      return query select ancestor.id, existing.provider, existing.usage_id, line.difference, existing.amount;
    end loop;
  end loop;
end $$;

-- Marks the rest of the transaction as a true-up's (on) or not (off): the alert trigger (alerts.sql) leaves an
-- ended window's alerts as they were while it is on. On Citus that trigger runs on the tree's worker, so the
-- mark goes there too: a SET LOCAL, which Citus sends to the workers of the transaction when told to.
create or replace function budget_recon_correcting(p_on boolean) returns void language plpgsql as $$
begin
  if budget_on_citus() then
    set local citus.propagate_set_commands = 'local';
  end if;
  if p_on then
    set local relaycore_budgets.correcting = 'on';
  else
    set local relaycore_budgets.correcting = 'off';
  end if;
end $$;

-- Writes the invoice's difference for one provider, UTC day and budget as ONE correction at noon UTC of the
-- day (a usage record marked correction, never a hold), or moves the one written before to the new difference
-- (budget_recon_move_correction: one more record for the change). So a true-up run twice stores nothing new,
-- and a corrected bucket moves the correction. The correction counts in its own day's window, and may take a hard budget past its limit (it
-- is the invoice). An ended window's alerts stay as they were: the alert trigger (alerts.sql) skips an ended
-- window while this runs. Then the ancestors trued up before for the day are trued up again
-- (budget_recon_true_up_ancestors): one row each (status 'ancestor') follows the budget's own row.
-- Status: 'created', 'adjusted', 'unchanged' (the correction was already the difference, or there is none
-- to write), 'no-report' (the provider's report has no buckets that day), or 'no-bucket' (it has, but none
-- of the mapped dimension's). Each row names its correction's provider. Errors: RB001 naming the pair
-- when a rate is missing; 22003 when the correction would take a window past numeric(28,10).
-- Its result's columns changed (provider): a function's row type cannot be replaced, only dropped and made again.
drop function if exists budget_recon_true_up(text, date, uuid);
create or replace function budget_recon_true_up(p_provider text, p_day date, p_budget_id uuid)
returns table (status text, budget_id uuid, provider text, usage_id uuid, amount numeric, previous numeric)
language plpgsql as $$
#variable_conflict use_column
declare
  line record;
  existing record;
  at timestamptz := (p_day::timestamp + interval '12 hours') at time zone 'UTC';
  new_usage uuid;
begin
  -- Every true-up of one day waits for the others: a true-up moves its ancestors' corrections of the day
  -- (of any provider), so two of one tree must not read each other's half-written state, and this lock,
  -- taken before any row, keeps them from locking each other's windows in opposite orders.
  perform pg_advisory_xact_lock(hashtextextended('relaycore-budgets:true-up:' || p_day::text, 0));
  select * into line from budget_recon_report(p_day, p_day, p_provider, p_budget_id) r;
  if not found then
    return query select 'no-report'::text, p_budget_id, p_provider, null::uuid, null::numeric, null::numeric;
    return;
  end if;
  if not line.bucketed then
    return query select 'no-bucket'::text, p_budget_id, p_provider, null::uuid, null::numeric, null::numeric;
    return;
  end if;
  if line.missing_rate is not null then
    raise exception 'no exchange rate from % to % in force at %', line.missing_rate, line.currency, at
      using errcode = 'RB001', detail = line.missing_rate || '/' || line.currency;
  end if;
  select c.id, c.usage_id, c.amount into existing from budget_recon_corrections c
  where c.root_id = line.root_id and c.provider = p_provider and c.day = p_day and c.budget_id = p_budget_id for update;

  perform budget_recon_correcting(true);
  if existing.id is null then
    if line.difference = 0 then
      perform budget_recon_correcting(false);
      return query select 'unchanged'::text, p_budget_id, p_provider, null::uuid, 0::numeric, null::numeric;
      return;
    end if;
    new_usage := budget_recon_write_correction(p_provider, p_day, line.root_id, p_budget_id, line.difference, null);
    insert into budget_recon_corrections (provider, day, budget_id, root_id, usage_id, amount)
    values (p_provider, p_day, p_budget_id, line.root_id, new_usage, line.difference);
    return query select 'created'::text, p_budget_id, p_provider, new_usage, line.difference, null::numeric;
  elsif existing.amount = line.difference then
    perform budget_recon_correcting(false);
    return query select 'unchanged'::text, p_budget_id, p_provider, existing.usage_id, existing.amount, existing.amount;
    return;
  else
    perform budget_recon_move_correction(line.root_id, existing.id, existing.usage_id, line.difference);
    return query select 'adjusted'::text, p_budget_id, p_provider, existing.usage_id, line.difference, existing.amount;
  end if;
  return query select 'ancestor'::text, a.budget_id, a.provider, a.usage_id, a.amount, a.previous
               from budget_recon_true_up_ancestors(p_day, line.root_id, p_budget_id) a;
  perform budget_recon_correcting(false);
end $$;
