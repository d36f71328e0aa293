-- Usage in bulk (POST /usage/batch): a batch's records stored by one statement and counted by a few
-- set-based ones, with the same outcome as 012's per-row trigger (budget_usage_after_insert) posting them
-- one at a time, in order: the same allocations, the same status cache rows, the same alert crossings.
--
-- Why not the trigger: it updates a budget's cache row once per record, and a row updated n times in one
-- transaction costs O(n) per update (each new version waits on the chain of the ones before it), so a
-- batch of thousands spent a millisecond a record. Here each cache row is updated once, plus once more
-- for each record at which one of its alert thresholds is first reached: the alert trigger (013) sees
-- the spend of that very record, and records the crossing with it, as it would have one record at a time.
--
-- The rows are inserted with allocated_by_settlement (006), which is what keeps the per-row trigger off:
-- like a settlement, the statement that stores them allocates them itself.

-- p_records: a JSON array of {ord, budget_id, amount, currency, source, description, metadata,
-- idempotency_key, occurred_at, also_counts_toward}, checked by the caller (lib/usage/collector.ts)
-- and free of repeated (budget_id, idempotency_key). Returns the stored ones; a record whose key was
-- used before on its budget is not stored (the caller reads the first one).
create function budget_record_usage_batch(p_records jsonb)
returns table (ord integer, usage_id uuid) language plpgsql as $$
#variable_conflict use_column
declare
  steps integer;
  window_row record;
  created boolean;
begin
  drop table if exists pg_temp.batch_usage, pg_temp.batch_allocations, pg_temp.batch_windows, pg_temp.batch_steps;

  -- The records, each with its shape: its budgets, model, tags and currency, all the trigger reads to find
  -- where it counts and at what rate (every record of the batch is recorded at one instant, now()).
  create temp table batch_usage on commit drop as
  select r.ord, gen_random_uuid() as id, r.budget_id, r.amount, r.currency, r.source, r.description, r.metadata,
         r.idempotency_key, r.occurred_at, r.also_counts_toward,
         jsonb_build_array(r.budget_id, r.also_counts_toward, r.metadata -> 'modelId', r.metadata -> 'tags', r.currency)::text as shape
  from jsonb_to_recordset(p_records) as r(ord integer, budget_id uuid, amount numeric(28, 10), currency text, source text,
       description text, metadata jsonb, idempotency_key text, occurred_at timestamptz, also_counts_toward uuid[]);

  -- 1. The records, in order; a key used before on the same budget stores nothing.
  with stored as (
    insert into budget_usage_records as u (id, budget_id, amount, currency, source, description, metadata, idempotency_key,
                                           occurred_at, also_counts_toward, recorded_at, allocated_by_settlement)
    select b.id, b.budget_id, b.amount, b.currency, b.source, b.description, b.metadata, b.idempotency_key,
           b.occurred_at, b.also_counts_toward, now(), true
    from batch_usage b order by b.ord
    on conflict (budget_id, idempotency_key) do nothing
    returning u.id
  )
  delete from batch_usage b where not exists (select 1 from stored s where s.id = b.id);
  analyze batch_usage; -- a temp table has no statistics else, and the plans below go wrong without them

  -- 2. Each record's allocations, as the trigger makes them: its budget's and its other budgets' lineages,
  -- those whose filters it matches, converted at the rate in force when it was recorded; and the window
  -- (status cache row) each one counts in. The budgets and rates are found once per shape.
  create temp table batch_allocations on commit drop as
  with shapes as materialized (
    select distinct on (u.shape) u.shape, u.budget_id, u.also_counts_toward, u.metadata ->> 'modelId' as model, u.metadata -> 'tags' as tags,
           u.currency
    from batch_usage u order by u.shape
  ),
  reached as materialized (
    select s.shape, t.budget_id as id, t.exchange_rate as rate
    from shapes s
    cross join lateral budget_usage_targets(s.budget_id, s.also_counts_toward, s.model, s.tags, s.currency, now()) t  -- 012's, as the trigger asks
  ),
  -- and each budget's window once per instant
  windowed as materialized (
    select x.id, x.occurred_at, w.period_start, w.period_end
    from (select distinct r.id, u.occurred_at from batch_usage u join reached r on r.shape = u.shape) x
    join budget_definitions d on d.id = x.id
    left join lateral budget_window(d, x.occurred_at) w on true
  )
  select u.ord, r.id as budget_id, u.id as usage_id, budget_convert(u.amount, r.rate) as amount, u.occurred_at, r.rate,
         w.period_start, w.period_end, false as opens
  from batch_usage u
  join reached r on r.shape = u.shape
  join windowed w on w.id = r.id and w.occurred_at = u.occurred_at;
  analyze batch_allocations;

  -- The windows the batch counts in, taken in the gate's order (budget id, then window), as the trigger
  -- takes them: a window without a row gets one (locked as it is inserted), and is opened by its first
  -- record (step 3); the others are locked. One order for every writer, so concurrent batches, single
  -- records and the gate queue instead of deadlocking.
  create temp table batch_windows on commit drop as
  select a.budget_id, a.period_start, min(a.period_end) as period_end, min(a.ord) as first_ord, true as existed
  from batch_allocations a where a.period_start is not null
  group by a.budget_id, a.period_start;
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
  update batch_allocations a set opens = true from batch_windows w
  where not w.existed and w.budget_id = a.budget_id and w.period_start = a.period_start and w.first_ord = a.ord;

  -- 3. Open the new windows: their first allocations go in, then each row is summed from the allocations
  -- (006's refresh), as the trigger does for a window's first record; the rest go in after.
  insert into budget_usage_allocations (budget_id, usage_id, amount, occurred_at, exchange_rate)
  select a.budget_id, a.usage_id, a.amount, a.occurred_at, a.rate from batch_allocations a
  where a.opens or a.period_start is null
     or exists (select 1 from batch_windows w where w.existed and w.budget_id = a.budget_id and w.period_start = a.period_start);
  perform refresh_budget_status_cache(w.budget_id, w.period_start, w.period_end)
  from (select * from batch_windows w where not w.existed order by w.budget_id, w.period_start) w;
  insert into budget_usage_allocations (budget_id, usage_id, amount, occurred_at, exchange_rate)
  select a.budget_id, a.usage_id, a.amount, a.occurred_at, a.rate from batch_allocations a
  join batch_windows w on w.budget_id = a.budget_id and w.period_start = a.period_start
  where not w.existed and not a.opens;

  -- 4. The other allocations, added to their rows: the spend after each record, and the steps to write,
  -- each record at which an alert threshold is first reached (in ascending order) and the last.
  create temp table batch_steps on commit drop as
  with added as (
    select a.budget_id, a.period_start, a.ord, a.occurred_at,
           c.current_amount + sum(a.amount) over running as spent,
           c.usage_count + count(*) over running as calls,
           greatest(c.last_usage_at, max(a.occurred_at) over running) as last_usage_at,
           row_number() over (partition by a.budget_id, a.period_start order by a.ord desc) = 1 as last,
           c.period_start as row_start, c.period_end as row_end
    from batch_allocations a
    join budget_status_cache c on c.budget_id = a.budget_id and c.period_start = a.period_start
    where a.period_start is not null and not a.opens
    window running as (partition by a.budget_id, a.period_start order by a.ord)
  ),
  crossings as (
    select r.budget_id, r.period_start, min(r.ord) as ord
    from added r
    join budget_definitions b on b.id = r.budget_id
    cross join lateral jsonb_array_elements(b.alerts) alert
    where budget_alert_measure(r.budget_id, r.spent, coalesce(alert ->> 'basis', 'current'), r.row_start, r.row_end) * 100  -- 013's, as the trigger measures
          >= (alert ->> 'threshold')::numeric * b.amount
    group by r.budget_id, r.period_start, alert
  )
  select r.budget_id, r.period_start, r.spent, r.calls, r.last_usage_at,
         row_number() over (partition by r.budget_id, r.period_start order by r.ord)::integer as step
  from added r
  where r.last or exists (select 1 from crossings x where x.budget_id = r.budget_id and x.period_start = r.period_start and x.ord = r.ord);

  select coalesce(max(s.step), 0) into steps from batch_steps s;
  for step_number in 1 .. steps loop
    update budget_status_cache c
    set current_amount = s.spent, usage_count = s.calls, last_usage_at = s.last_usage_at, updated_at = now()
    from batch_steps s
    where s.step = step_number and c.budget_id = s.budget_id and c.period_start = s.period_start;
  end loop;

  return query select b.ord, b.id from batch_usage b order by b.ord;
end $$;
