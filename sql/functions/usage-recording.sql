-- Recording usage outside the gate: one record at a time through a per-row trigger, or a batch
-- (POST /usage/batch) through one function with the same outcome. (The gate's settlements record their
-- own, settlements.sql.) Both lock window rows only, by (budget_id, period_start): the lock order,
-- settlements.sql.

-- Where usage counts, and at what rate: the lineage of its budget and of each of its other budgets, those
-- whose filters its model and tags match, each once, with the rate from its currency into theirs in force
-- at p_at (null where none is). Without raising, so the batch finds every record that has no rate before it
-- stores any; budget_usage_targets below keeps the per-row trigger's contract (an error naming the pair),
-- read from here, so both ask one place.
create or replace function budget_usage_reach(p_budget_id uuid, p_also uuid[], p_model text, p_tags jsonb, p_currency text, p_at timestamptz)
returns table (budget_id uuid, currency text, exchange_rate numeric) language sql stable as $$
  select matched.id, matched.currency, budget_exchange_rate(p_currency, matched.currency, p_at)
  from (
    select distinct l.id, b.currency
    from unnest(array[p_budget_id] || p_also) as counted(id)
    cross join lateral budget_lineage(counted.id) l
    join budget_definitions b on b.id = l.id
    where budget_matches(b, p_model, p_tags)
  ) matched
$$;

-- budget_usage_reach, with an error naming the pair where no rate is in force (budget_require_rate).
create or replace function budget_usage_targets(p_budget_id uuid, p_also uuid[], p_model text, p_tags jsonb, p_currency text, p_at timestamptz)
returns table (budget_id uuid, exchange_rate numeric) language sql stable as $$
  select r.budget_id, coalesce(r.exchange_rate, budget_require_rate(p_currency, r.currency, p_at))
  from budget_usage_reach(p_budget_id, p_also, p_model, p_tags, p_currency, p_at) r
$$;

-- On every usage insert (not a settlement's or a batch's, which allocate their own; not an unbudgeted
-- record, which has no line): allocate it to each budget it counts toward (budget_usage_targets), converted
-- into each budget's currency at the rate in force when it is recorded, and add the converted amount to
-- each one's window row. Rows are visited in budget id order, the lock order, so concurrent recorders and
-- the gate queue instead of deadlocking. A window row that does not exist yet is created by a refresh
-- (which already includes the new allocation). The recorder refuses a record that the budget it is
-- recorded on does not match (lib/usage/tracker.ts).
create or replace function budget_usage_after_insert() returns trigger language plpgsql as $$
declare
  budget record;
  created boolean;
begin
  insert into budget_usage_allocations (budget_id, usage_id, amount, occurred_at, exchange_rate)
  select t.budget_id, new.id, budget_convert(new.amount, t.exchange_rate), new.occurred_at, t.exchange_rate
  from budget_usage_targets(new.budget_id, new.also_counts_toward, new.metadata ->> 'modelId', new.metadata -> 'tags', new.currency, new.recorded_at) t;

  for budget in
    select b.id, w.period_start, w.period_end, a.amount
    from budget_usage_allocations a
    join budget_definitions b on b.id = a.budget_id
    cross join lateral budget_window(b, new.occurred_at) w
    where a.usage_id = new.id
    order by b.id
  loop
    created := null;
    insert into budget_status_cache (budget_id, period_start, period_end)
    values (budget.id, budget.period_start, budget.period_end)
    on conflict (budget_id, period_start) do nothing
    returning true into created;
    if created then
      perform refresh_budget_status_cache(budget.id, budget.period_start, budget.period_end);
    else
      update budget_status_cache c
      set current_amount = c.current_amount + budget.amount, usage_count = c.usage_count + 1,
          last_usage_at = greatest(c.last_usage_at, new.occurred_at), updated_at = now()
      where c.budget_id = budget.id and c.period_start = budget.period_start;
    end if;
  end loop;
  return null;
end $$;
create or replace trigger budget_usage_records_status after insert on budget_usage_records
for each row when (not new.allocated_by_settlement and new.budget_id is not null) execute function budget_usage_after_insert();

-- Usage in bulk: a batch's records stored by one statement and counted by a few set-based ones, with the
-- same outcome as the per-row trigger above posting them one at a time, in order: the same allocations,
-- the same status cache rows, the same alert crossings, the same refusals.
--
-- Why not the trigger: it updates a budget's cache row once per record, and a row updated n times in one
-- transaction costs O(n) per update (each new version waits on the chain of the ones before it), so a
-- batch of thousands spent a millisecond a record. And one record without a rate, or past
-- numeric(28,10), must not fail the statement, or the collector would store the batch again a record at
-- a time, each record rewriting its ancestors' cache rows: quadratic, with the hot rows locked all along.
--
-- In one pass:
--   a. the records without a rate, or whose converted amount overflows, are refused (the code the single
--      route maps: RB001 with the pair, 22003) and the others inserted, the first under each key taking it (a
--      key held when a record comes stores nothing and refuses nothing, as for a single record, where the
--      key is looked at before the rate);
--   b. the allocations are made and inserted, and each window's running sums (per record, in order) are
--      computed, all before any cache row is locked;
--   c. then, last, the windows are locked in the lock order (budget id, window start); only what needs
--      their values runs under the locks: a record that would take a window past numeric(28,10) is taken
--      out (found in order, as one at a time would find it), and each row is written once, plus once for
--      each record at which an alert threshold is first reached (the alert trigger, alerts.sql, sees the
--      spend of that record, as it would one record at a time).
-- A window the batch opens is made here at the spend it had before the batch (its allocations from
-- elsewhere), then grows by the batch's records like any other: the same value and crossings as the
-- trigger's refresh at its first record. The rows are inserted with allocated_by_settlement, which keeps
-- the per-row trigger off.
--
-- p_records: a JSON array of {ord, budget_id, amount, currency, source, description, metadata,
-- idempotency_key, request_fingerprint, occurred_at, also_counts_toward}, checked by the caller
-- (lib/usage/collector.ts), in the order they came, several under one key if so. Returns every record:
-- stored (usage_id), refused (fault: RB001 with detail 'FROM/TO', or 22003), or neither (its key was held
-- when it came, before the batch or by an earlier record of it: the caller reads the holder).
create or replace function budget_record_usage_batch(p_records jsonb)
returns table (ord integer, usage_id uuid, fault text, detail text) language plpgsql as $$
#variable_conflict use_column
declare
  steps integer;
  window_row record;
  created boolean;
  at_risk boolean;
  sums numeric[];
  record_row record;
  fits boolean;
  refused uuid[] := '{}'::uuid[];
begin
  -- Each PRAGMA:TABLE below tells plpgsql_check (test/plpgsql-check.test.ts) the columns of a temp table this
  -- function makes, which it cannot see otherwise; run, it selects a constant and does nothing.
  drop table if exists pg_temp.batch_usage, pg_temp.batch_reach, pg_temp.batch_allocations, pg_temp.batch_running,
                       pg_temp.batch_windows, pg_temp.batch_steps;

  -- The records, each with its shape: its budgets, model, tags and currency, all that decides where it
  -- counts and at what rate (every record of the batch is recorded at one instant, now()).
  create temp table batch_usage on commit drop as
  select r.ord, gen_random_uuid() as id, r.budget_id, r.amount, r.currency, r.source, r.description, r.metadata,
         r.idempotency_key, r.request_fingerprint, r.occurred_at, r.also_counts_toward,
         jsonb_build_array(r.budget_id, r.also_counts_toward, r.metadata -> 'modelId', r.metadata -> 'tags', r.currency)::text as shape,
         false as stored, null::text as fault, null::text as detail
  from jsonb_to_recordset(p_records) as r(ord integer, budget_id uuid, amount numeric(28, 10), currency text, source text,
       description text, metadata jsonb, idempotency_key text, request_fingerprint text, occurred_at timestamptz,
       also_counts_toward uuid[]);
  perform 'PRAGMA:TABLE: batch_usage (ord integer, id uuid, budget_id uuid, amount numeric(28, 10), currency text, source text, '
    'description text, metadata jsonb, idempotency_key text, request_fingerprint text, occurred_at timestamptz, also_counts_toward uuid[], '
    'shape text, stored boolean, fault text, detail text)';

  analyze batch_usage; -- a temp table has no statistics else, and the plans below go wrong without them

  -- Where each shape counts (budget_usage_reach: a null rate where none is in force), found once per shape.
  create temp table batch_reach on commit drop as
  with shapes as materialized (
    select distinct on (u.shape) u.shape, u.budget_id, u.also_counts_toward, u.metadata ->> 'modelId' as model, u.metadata -> 'tags' as tags,
           u.currency
    from batch_usage u order by u.shape
  )
  select s.shape, s.currency as from_currency, t.budget_id as id, t.currency as to_currency, t.exchange_rate as rate
  from shapes s
  cross join lateral budget_usage_reach(s.budget_id, s.also_counts_toward, s.model, s.tags, s.currency, now()) t;
  perform 'PRAGMA:TABLE: batch_reach (shape text, from_currency text, id uuid, to_currency text, rate numeric)';
  analyze batch_reach;

  -- a. The records without a rate, or whose converted amount overflows, are refused before any is stored:
  -- so a later record under one's key is tried in its place, as it would be one at a time.
  update batch_usage u set fault = 'RB001', detail = missing.pair
  from (select r.shape, min(r.from_currency || '/' || r.to_currency) as pair from batch_reach r where r.rate is null group by r.shape) missing
  where missing.shape = u.shape;
  update batch_usage u set fault = '22003'
  where u.fault is null
    and exists (select 1 from batch_reach r where r.shape = u.shape and u.amount * r.rate > budget_money_max()); -- budget_convert rounds up to the same grid

  -- The others, in key order, so two batches sharing keys wait for each other instead of deadlocking: the
  -- first under each key takes it (the later ones are its replays or conflicts, read by the caller).
  with inserted as (
    insert into budget_usage_records as u (id, budget_id, amount, currency, source, description, metadata, idempotency_key,
                                           request_fingerprint, occurred_at, also_counts_toward, recorded_at, allocated_by_settlement)
    select b.id, b.budget_id, b.amount, b.currency, b.source, b.description, b.metadata, b.idempotency_key,
           b.request_fingerprint, b.occurred_at, b.also_counts_toward, now(), true
    from batch_usage b where b.fault is null order by b.idempotency_key, b.ord
    on conflict do nothing
    returning u.id
  )
  update batch_usage b set stored = true from inserted i where i.id = b.id;

  -- A refused record whose key was already held when it came (before the batch, or by an earlier record of
  -- it) is that record's replay or conflict instead: one at a time, the key is looked at before the rate.
  update batch_usage u set fault = null, detail = null
  where u.fault is not null and u.idempotency_key is not null
    and exists (select 1 from budget_usage_records r
                where r.idempotency_key = u.idempotency_key and r.request_fingerprint is not null
                  and not exists (select 1 from batch_usage later where later.id = r.id and later.ord > u.ord));

  -- b. Each record's allocations, converted at its rate, in the window each counts in (each budget's window
  -- found once per instant); then inserted, before any cache row is locked.
  create temp table batch_allocations on commit drop as
  with windowed as materialized (
    select x.id, x.occurred_at, w.period_start, w.period_end
    from (select distinct r.id, u.occurred_at from batch_usage u join batch_reach r on r.shape = u.shape where u.stored) x
    join budget_definitions d on d.id = x.id
    left join lateral budget_window(d, x.occurred_at) w on true
  )
  select u.ord, r.id as budget_id, u.id as usage_id, budget_convert(u.amount, r.rate) as amount, u.occurred_at, r.rate,
         w.period_start, w.period_end
  from batch_usage u
  join batch_reach r on r.shape = u.shape
  join windowed w on w.id = r.id and w.occurred_at = u.occurred_at
  where u.stored;
  perform 'PRAGMA:TABLE: batch_allocations (ord integer, budget_id uuid, usage_id uuid, amount numeric, occurred_at timestamptz, rate numeric, '
    'period_start timestamptz, period_end timestamptz)';
  analyze batch_allocations;
  insert into budget_usage_allocations (budget_id, usage_id, amount, occurred_at, exchange_rate)
  select a.budget_id, a.usage_id, a.amount, a.occurred_at, a.rate from batch_allocations a;

  -- What the batch adds to each window after each of its records.
  create temp table batch_running (budget_id uuid, period_start timestamptz, ord integer, added numeric, calls bigint,
                                   last_at timestamptz, last boolean) on commit drop;
  perform 'PRAGMA:TABLE: batch_running (budget_id uuid, period_start timestamptz, ord integer, added numeric, calls bigint, '
    'last_at timestamptz, last boolean)';
  create index on batch_running (budget_id, period_start, ord);
  insert into batch_running
  select a.budget_id, a.period_start, a.ord, sum(a.amount) over running, count(*) over running, max(a.occurred_at) over running,
         row_number() over (partition by a.budget_id, a.period_start order by a.ord desc) = 1
  from batch_allocations a where a.period_start is not null
  window running as (partition by a.budget_id, a.period_start order by a.ord);
  analyze batch_running;

  create temp table batch_windows on commit drop as
  select a.budget_id, a.period_start, min(a.period_end) as period_end, sum(a.amount) as total, count(*) as calls, true as existed,
         0::numeric as base_amount, 0::bigint as base_calls, null::timestamptz as base_last_at,
         null::timestamptz as row_start, null::timestamptz as row_end
  from batch_allocations a where a.period_start is not null
  group by a.budget_id, a.period_start;
  perform 'PRAGMA:TABLE: batch_windows (budget_id uuid, period_start timestamptz, period_end timestamptz, total numeric, calls bigint, '
    'existed boolean, base_amount numeric, base_calls bigint, base_last_at timestamptz, row_start timestamptz, row_end timestamptz)';

  -- c. The windows, locked last, in the gate's order: a window without a row gets one (locked as it is
  -- inserted), the others are locked. One order for every writer, so concurrent batches, single records and
  -- the gate queue instead of deadlocking.
  for window_row in select * from batch_windows w order by w.budget_id, w.period_start loop
    created := null;
    insert into budget_status_cache (budget_id, period_start, period_end)
    values (window_row.budget_id, window_row.period_start, window_row.period_end)
    on conflict (budget_id, period_start) do nothing
    returning true into created;
    if created then
      update batch_windows w set existed = false where w.budget_id = window_row.budget_id and w.period_start = window_row.period_start;
    else
      perform 1 from budget_status_cache c where c.budget_id = window_row.budget_id and c.period_start = window_row.period_start for update;
    end if;
  end loop;

  -- Each window's spend before the batch: its row's, or for a window opened here, its allocations from elsewhere.
  update batch_windows w set base_amount = c.current_amount, base_calls = c.usage_count, base_last_at = c.last_usage_at,
                             row_start = c.period_start, row_end = c.period_end
  from budget_status_cache c where w.existed and c.budget_id = w.budget_id and c.period_start = w.period_start;
  -- (the batch's own allocations are in the sum: taken off again; the latest instant stays the latest)
  update batch_windows w set base_amount = s.current_amount - w.total, base_calls = s.usage_count - w.calls, base_last_at = s.last_usage_at,
                             row_start = w.period_start, row_end = w.period_end
  from batch_windows x cross join lateral calculate_budget_status(x.budget_id, x.period_start, x.period_end) s
  where not w.existed and x.budget_id = w.budget_id and x.period_start = w.period_start;

  -- A window the batch would take past numeric(28,10): its records are taken one at a time, in order, and
  -- each that would take one of them past is refused, as the trigger would refuse it. Only those windows'
  -- records are walked; a batch that fits (every real one) skips this.
  select exists (select 1 from batch_windows w where w.base_amount + w.total > budget_money_max()) into at_risk;
  if at_risk then
    create temp table batch_risky on commit drop as
    select row_number() over (order by w.budget_id, w.period_start)::integer as slot, w.budget_id, w.period_start, w.base_amount
    from batch_windows w where w.base_amount + w.total > budget_money_max();
    perform 'PRAGMA:TABLE: batch_risky (slot integer, budget_id uuid, period_start timestamptz, base_amount numeric)';
    select array_agg(k.base_amount order by k.slot) into sums from batch_risky k;
    for record_row in
      select a.usage_id, array_agg(k.slot) as slots, array_agg(a.amount) as amounts
      from batch_allocations a join batch_risky k on k.budget_id = a.budget_id and k.period_start = a.period_start
      group by a.usage_id, a.ord order by a.ord
    loop
      fits := true;
      for i in 1 .. cardinality(record_row.slots) loop
        if sums[record_row.slots[i]] + record_row.amounts[i] > budget_money_max() then fits := false; exit; end if;
      end loop;
      if fits then
        for i in 1 .. cardinality(record_row.slots) loop
          sums[record_row.slots[i]] := sums[record_row.slots[i]] + record_row.amounts[i];
        end loop;
      else
        refused := refused || record_row.usage_id;
      end if;
    end loop;
    drop table batch_risky;

    delete from budget_usage_allocations a where a.usage_id = any(refused);
    delete from budget_usage_records r where r.id = any(refused);
    update batch_usage u set stored = false, fault = '22003' where u.id = any(refused);
    delete from batch_allocations a where a.usage_id = any(refused);
    truncate batch_running;
    insert into batch_running
    select a.budget_id, a.period_start, a.ord, sum(a.amount) over running, count(*) over running, max(a.occurred_at) over running,
           row_number() over (partition by a.budget_id, a.period_start order by a.ord desc) = 1
    from batch_allocations a where a.period_start is not null
    window running as (partition by a.budget_id, a.period_start order by a.ord);
    -- a window left with none of the batch's records: a row opened for it here goes again, as it would
    -- with the statement that failed one at a time
    delete from budget_status_cache c using batch_windows w
    where not w.existed and c.budget_id = w.budget_id and c.period_start = w.period_start
      and not exists (select 1 from batch_running r where r.budget_id = w.budget_id and r.period_start = w.period_start);
    delete from batch_windows w where not exists (select 1 from batch_running r where r.budget_id = w.budget_id and r.period_start = w.period_start);
  end if;

  -- A window opened here starts at its spend from elsewhere (as the trigger's refresh would find it).
  update budget_status_cache c
  set current_amount = w.base_amount, usage_count = w.base_calls, last_usage_at = w.base_last_at, updated_at = now()
  from batch_windows w
  where not w.existed and w.base_calls > 0 and c.budget_id = w.budget_id and c.period_start = w.period_start;

  -- The steps to write: each record at which an alert threshold is first reached (in ascending order), and
  -- the last. Spend only grows record by record, so a threshold on spend is first reached at the first record
  -- whose running sum gets there; a projected one is measured per record (budget_alert_measure, as the trigger does).
  create temp table batch_steps on commit drop as
  with thresholds as (
    select w.budget_id, w.period_start, w.base_amount, w.row_start, w.row_end, b.amount as limit_amount,
           (alert ->> 'threshold')::numeric as threshold, coalesce(alert ->> 'basis', 'current') as basis
    from batch_windows w
    join budget_definitions b on b.id = w.budget_id
    cross join lateral jsonb_array_elements(b.alerts) alert
  ),
  crossings as (
    select t.budget_id, t.period_start, (
      select r.ord from batch_running r
      where r.budget_id = t.budget_id and r.period_start = t.period_start and (t.base_amount + r.added) * 100 >= t.threshold * t.limit_amount
      order by r.ord limit 1
    ) as ord
    from thresholds t where t.basis = 'current'
    union all
    select t.budget_id, t.period_start, (
      select r.ord from batch_running r
      where r.budget_id = t.budget_id and r.period_start = t.period_start
        and budget_alert_measure(t.budget_id, t.base_amount + r.added, 'projected', t.row_start, t.row_end) * 100 >= t.threshold * t.limit_amount
      order by r.ord limit 1
    )
    from thresholds t where t.basis = 'projected'
  )
  select r.budget_id, r.period_start, w.base_amount + r.added as spent, w.base_calls + r.calls as calls,
         greatest(w.base_last_at, r.last_at) as last_usage_at,
         row_number() over (partition by r.budget_id, r.period_start order by r.ord)::integer as step
  from batch_running r
  join batch_windows w on w.budget_id = r.budget_id and w.period_start = r.period_start
  where r.last or exists (select 1 from crossings x where x.budget_id = r.budget_id and x.period_start = r.period_start and x.ord = r.ord);
  perform 'PRAGMA:TABLE: batch_steps (budget_id uuid, period_start timestamptz, spent numeric, calls bigint, last_usage_at timestamptz, '
    'step integer)';

  select coalesce(max(s.step), 0) into steps from batch_steps s;
  for step_number in 1 .. steps loop
    update budget_status_cache c
    set current_amount = s.spent, usage_count = s.calls, last_usage_at = s.last_usage_at, updated_at = now()
    from batch_steps s
    where s.step = step_number and c.budget_id = s.budget_id and c.period_start = s.period_start;
  end loop;

  return query select b.ord, case when b.stored then b.id end, b.fault, b.detail from batch_usage b order by b.ord;
end $$;
