-- Recording usage outside the gate: one record at a time (the usage API through budget_record_usage_in_trees, a
-- record inserted directly through the per-row trigger), or a batch (POST /usage/batch) through one function,
-- all with the same outcome. Each stores its records here and records the spend through budget_record_spend
-- (spend.sql), as the gate's settlements do (settlements.sql); it locks window rows only, in the lock order
-- (locks.sql).

-- Where usage counts, and at what rate: the lineage of its budget and of each of its other budgets, those
-- whose filters its model and tags match, each once, with its tree and the rate from its currency into theirs
-- in force at p_at (null where none is). Without raising, so the batch finds every record that has no rate
-- before it stores any; budget_usage_targets below keeps the per-row trigger's contract (an error naming the
-- pair), read from here, so both ask one place.
--
-- p_trees: the trees the budgets are in, as the caller knows them; each statement then names one tree, so that
-- on Citus it runs on that tree's node. Not taken on trust (a budget left out would count nothing): when a
-- budget named is in none of them, the trees are read from the budgets' rows (on Citus, every shard), as they
-- are when p_trees is null.
create or replace function budget_usage_reach_in_trees(p_budget_id uuid, p_also uuid[], p_model text, p_tags jsonb, p_currency text, p_at timestamptz,
                                                       p_trees uuid[])
returns table (budget_id uuid, root_id uuid, currency text, exchange_rate numeric) language plpgsql stable as $$
declare
  counted uuid[] := array(select distinct x.id from unnest(array[p_budget_id] || coalesce(p_also, '{}')) as x(id) where x.id is not null);
  trees uuid[] := budget_line_trees(p_trees, counted);
  tree uuid;
  -- each budget counted that is found, with its root
  found_ids uuid[] := '{}'::uuid[];
  found_roots uuid[] := '{}'::uuid[];
  -- their lineages
  ids uuid[] := '{}'::uuid[];
  roots uuid[] := '{}'::uuid[];
  -- those whose filters match, each once
  reached_ids uuid[] := '{}'::uuid[];
  reached_roots uuid[] := '{}'::uuid[];
  currencies text[] := '{}'::text[];
begin
  -- one statement a tree, each naming it (on Citus, one shard's); no walk inside a query over the budgets (on
  -- Citus, a distributed query nested in one)
  foreach tree in array trees loop
    select found_ids || coalesce(array_agg(d.id), '{}'), found_roots || coalesce(array_agg(d.root_id), '{}') into found_ids, found_roots
    from budget_definitions d where d.root_id = tree and d.id = any (counted);
  end loop;
  if p_trees is not null and cardinality(found_ids) < cardinality(counted) then
    return query select * from budget_usage_reach_in_trees(p_budget_id, p_also, p_model, p_tags, p_currency, p_at, null);
    return;
  end if;
  for i in 1 .. cardinality(found_ids) loop
    select ids || array_agg(l.id), roots || array_agg(found_roots[i]) into ids, roots
    from budget_lineage_within(found_roots[i], found_ids[i]) l;
  end loop;
  foreach tree in array budget_line_trees(roots, null) loop
    select reached_ids || coalesce(array_agg(b.id order by b.id), '{}'), reached_roots || coalesce(array_agg(b.root_id order by b.id), '{}'),
           currencies || coalesce(array_agg(b.currency order by b.id), '{}')
    into reached_ids, reached_roots, currencies
    from budget_definitions b
    where b.root_id = tree and b.id = any (array(select distinct x.id from unnest(ids, roots) as x(id, root) where x.root = tree))
      and budget_filters_match(b.filter_models, b.filter_tags, p_model, p_tags);
  end loop;
  -- the rates read apart from the budgets' rows: on Citus those are read on the trees' nodes, the rates are a
  -- reference table
  return query select x.id, x.root, x.currency, budget_exchange_rate(p_currency, x.currency, p_at)
               from unnest(reached_ids, reached_roots, currencies) as x(id, root, currency);
end $$;

-- The same, for a caller that does not know the trees: read from the budgets' rows.
create or replace function budget_usage_reach(p_budget_id uuid, p_also uuid[], p_model text, p_tags jsonb, p_currency text, p_at timestamptz)
returns table (budget_id uuid, currency text, exchange_rate numeric) language sql stable as $$
  select r.budget_id, r.currency, r.exchange_rate from budget_usage_reach_in_trees(p_budget_id, p_also, p_model, p_tags, p_currency, p_at, null) r
$$;

-- budget_usage_reach, with an error naming the pair where no rate is in force (budget_require_rate).
create or replace function budget_usage_targets(p_budget_id uuid, p_also uuid[], p_model text, p_tags jsonb, p_currency text, p_at timestamptz)
returns table (budget_id uuid, exchange_rate numeric) language sql stable as $$
  select r.budget_id, coalesce(r.exchange_rate, budget_require_rate(p_currency, r.currency, p_at))
  from budget_usage_reach(p_budget_id, p_also, p_model, p_tags, p_currency, p_at) r
$$;

-- On every usage insert (not a settlement's or a batch's, which record their own through the same
-- budget_record_spend; not an unbudgeted record, which has no line): the record counts toward each budget
-- it reaches (budget_usage_targets: an error naming the pair where no rate is in force), converted at the
-- rate in force when it is recorded, in the window of its instant. Allocations, window rows (made where
-- new), alert crossings and the lock order are budget_record_spend's (spend.sql). A record that would take
-- an amount or a window past numeric(28,10) fails with 22003, as the single route expects
-- (lib/usage/usage-rules.ts). The recorder refuses a record that the budget it is recorded on does not
-- match (lib/usage/tracker.ts).
create or replace function budget_usage_after_insert() returns trigger language plpgsql as $$
declare
  budgets uuid[];
  rates numeric[];
  refused boolean;
begin
  select array_agg(t.budget_id), array_agg(t.exchange_rate) into budgets, rates
  from budget_usage_targets(new.budget_id, new.also_counts_toward, new.metadata ->> 'modelId', new.metadata -> 'tags', new.currency, new.recorded_at) t;
  if budgets is null then return null; end if;
  select bool_or(s.charged is null) into refused
  from budget_record_spend(array_fill(1::bigint, array[cardinality(budgets)]), array_fill(new.id, array[cardinality(budgets)]), budgets,
                           array_fill(new.amount, array[cardinality(budgets)]), rates,
                           array_fill(new.occurred_at, array[cardinality(budgets)]), '{}', '{}', false) s;
  if refused then
    raise exception using errcode = 'numeric_value_out_of_range', message = 'numeric field overflow',
      detail = 'the usage would take an amount counted toward a budget past numeric(28,10)';
  end if;
  return null;
end $$;
create or replace trigger budget_usage_records_status after insert on budget_usage_records
for each row when (not new.allocated_by_settlement and new.budget_id is not null) execute function budget_usage_after_insert();

-- One record from the usage API, stored and counted in one call, with the per-row trigger's outcome (above):
-- the same reach, the same errors (RB001 naming the pair, 22003), nothing stored under a key already held.
-- The API records through this and not the trigger because on Citus a trigger runs on its record's shard,
-- from where no other tree's budget can be reached. p_record: {budget_id, amount, currency, source,
-- description, metadata, idempotency_key, request_fingerprint, occurred_at, also_counts_toward}, checked by
-- the caller (lib/usage/tracker.ts). p_roots: the trees of its budgets as the caller knows them
-- (budget_usage_reach_in_trees checks them); p_root, the first of them, by which Citus delegates the call
-- (sql/citus/delegate.sql). Returns the stored record, or no row when its key was held.
create or replace function budget_record_usage_in_trees(p_record jsonb, p_roots uuid[], p_root uuid default '00000000-0000-0000-0000-000000000000')
returns table (id uuid, budget_id uuid, amount numeric, currency text, source text, description text, metadata jsonb,
               occurred_at timestamptz, recorded_at timestamptz)
language plpgsql as $$
#variable_conflict use_column
declare
  r record;
  stored record;
  budgets uuid[];
  trees uuid[];
  tree uuid;
  root uuid;
  rates numeric[];
  starts timestamptz[];
  ends timestamptz[];
  w record;
  missing text;
  refused boolean;
begin
  select * into r from jsonb_to_record(p_record) as x(budget_id uuid, amount numeric(28, 10), currency text, source text, description text,
    metadata jsonb, idempotency_key text, request_fingerprint text, occurred_at timestamptz, also_counts_toward uuid[]);
  -- (the pair missing a rate: the first in the reach's order, the one the trigger's error names)
  select array_agg(t.budget_id order by t.n), array_agg(t.root_id order by t.n), array_agg(t.exchange_rate order by t.n),
         (array_agg(r.currency || '/' || t.currency order by t.n) filter (where t.exchange_rate is null))[1]
  into budgets, trees, rates, missing
  from budget_usage_reach_in_trees(r.budget_id, r.also_counts_toward, r.metadata ->> 'modelId', r.metadata -> 'tags', r.currency, now(), p_roots)
    with ordinality as t(budget_id, root_id, currency, exchange_rate, n);

  -- the record under its budget's tree (on Citus the insert is routed by it), allocated here rather than by
  -- the per-row trigger: the tree the reach found it in; for a budget its own filters leave out, found among
  -- the trees named, else read from the budget's row
  root := trees[array_position(budgets, r.budget_id)];
  if root is null then
    foreach tree in array budget_line_trees(p_roots, '{}') loop
      select d.root_id into root from budget_definitions d where d.root_id = tree and d.id = r.budget_id;
      exit when root is not null;
    end loop;
  end if;
  if root is null then
    select d.root_id into root from budget_definitions d where d.id = r.budget_id;
  end if;
  -- (a CTE: Citus 13.2 fails an INSERT ... ON CONFLICT DO NOTHING RETURNING INTO that inserts nothing, "consistency
  -- check on SPI tuple count failed")
  with inserted as (
    insert into budget_usage_records as u (root_id, budget_id, amount, currency, source, description, metadata, idempotency_key,
                                           request_fingerprint, occurred_at, also_counts_toward, allocated_by_settlement)
    select root, r.budget_id, r.amount, r.currency, r.source, r.description, r.metadata, r.idempotency_key,
           r.request_fingerprint, r.occurred_at, coalesce(r.also_counts_toward, '{}'), true
    on conflict do nothing
    returning u.id, u.budget_id, u.amount, u.currency, u.source, u.description, u.metadata, u.occurred_at, u.recorded_at
  )
  select * into stored from inserted;
  if stored is null then return; end if;

  -- as the trigger: the key is looked at before the rate
  if missing is not null then
    raise exception 'no exchange rate from % to % in force at %', split_part(missing, '/', 1), split_part(missing, '/', 2), stored.recorded_at
      using errcode = 'RB001', detail = missing;
  end if;
  if budgets is not null then
    -- each budget's window at the record's instant (null: none), read tree by tree by the budget's columns (on
    -- a shard a row is not of budget_definitions' type)
    starts := array_fill(null::timestamptz, array[cardinality(budgets)]);
    ends := starts;
    foreach tree in array budget_line_trees(trees, null) loop
      for w in
        select i.n, p.period_start, p.period_end
        from unnest(budgets, trees) with ordinality as i(budget_id, root, n)
        join budget_definitions d on d.root_id = tree and d.id = i.budget_id
        cross join lateral budget_period_window(d.period, d.start_date, d.end_date, d.recurring, stored.occurred_at, d.timezone,
                                                d.fiscal_year_start_month, d.period_alignment) p
        where i.root = tree
      loop
        starts[w.n] := w.period_start;
        ends[w.n] := w.period_end;
      end loop;
    end loop;
    -- A window without a row gets one, in the lock order (locks.sql), each row there locked first: then
    -- budget_record_spend finds them all and writes each once. A row made here is inserted at the window's
    -- spend so far (its allocations), as budget_record_spend's own step-wise path counts it: an insert, so no
    -- alert sees that spend before this record's is added (the alerts trigger is on updates). That path reads
    -- rows by id alone, which on Citus a call on one tree's node cannot.
    for w in
      select x.budget_id, x.root, x.period_start, x.period_end from unnest(budgets, trees, starts, ends) as x(budget_id, root, period_start, period_end)
      where x.period_start is not null order by x.root, x.budget_id, x.period_start
    loop
      perform 1 from budget_status_cache c where c.root_id = w.root and c.budget_id = w.budget_id and c.period_start = w.period_start for update;
      if not found then
        insert into budget_status_cache (budget_id, root_id, period_start, period_end, current_amount, usage_count, last_usage_at)
        select w.budget_id, w.root, w.period_start, w.period_end, coalesce(sum(a.amount), 0), count(*), max(a.occurred_at)
        from budget_usage_allocations a
        where a.root_id = w.root and a.budget_id = w.budget_id and a.occurred_at >= w.period_start and a.occurred_at < w.period_end
        on conflict (budget_id, period_start, root_id) do nothing;
        -- made meanwhile by another transaction: locked as it is
        perform 1 from budget_status_cache c where c.root_id = w.root and c.budget_id = w.budget_id and c.period_start = w.period_start for update;
      end if;
    end loop;
    select bool_or(s.charged is null) into refused
    from budget_record_spend(array_fill(1::bigint, array[cardinality(budgets)]), array_fill(stored.id, array[cardinality(budgets)]), budgets,
                             array_fill(stored.amount, array[cardinality(budgets)]), rates,
                             array_fill(stored.occurred_at, array[cardinality(budgets)]), starts, ends, false, null, null, null, trees) s;
    if refused then
      raise exception using errcode = 'numeric_value_out_of_range', message = 'numeric field overflow',
        detail = 'the usage would take an amount counted toward a budget past numeric(28,10)';
    end if;
  end if;
  return query select stored.id, stored.budget_id, stored.amount, stored.currency, stored.source, stored.description, stored.metadata,
                      stored.occurred_at, stored.recorded_at;
end $$;

-- Usage in bulk: a batch's records stored by one statement and counted by one budget_record_spend call
-- (spend.sql), with the same outcome as the per-row trigger above posting them one at a time, in order: the
-- same allocations, the same status cache rows, the same alert crossings, the same refusals.
--
-- Why not the trigger: it would record each record by itself, and a row updated n times in one
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
--   b. the stored records' spend is recorded by budget_record_spend, in the records' order, refusing a
--      record that would take a window past numeric(28,10) as one at a time would; such a record is taken
--      out again (22003). The rows are inserted with allocated_by_settlement, which keeps the per-row
--      trigger off.
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
  on_citus boolean := budget_on_citus();
  ords bigint[];
  usage_ids uuid[];
  budget_ids uuid[];
  amounts numeric[];
  rates numeric[];
  instants timestamptz[];
  trees uuid[];
  tree uuid;
  refused uuid[];
  unrooted uuid[];
  found_ids uuid[];
  found_roots uuid[];
  held_keys text[];
  held_roots uuid[];
  held_ids uuid[];
begin
  -- Each PRAGMA:TABLE below tells plpgsql_check (test/plpgsql-check.test.ts) the columns of a temp table this
  -- function makes, which it cannot see otherwise; run, it selects a constant and does nothing.
  drop table if exists pg_temp.batch_usage, pg_temp.batch_reach;

  -- The records, each with its shape: its budgets, model, tags and currency, all that decides where it
  -- counts and at what rate (every record of the batch is recorded at one instant, now()); and its tree, its
  -- budget's (below).
  create temp table batch_usage on commit drop as
  select r.ord, gen_random_uuid() as id, null::uuid as root_id, r.budget_id, r.amount, r.currency, r.source, r.description, r.metadata,
         r.idempotency_key, r.request_fingerprint, r.occurred_at, r.also_counts_toward,
         jsonb_build_array(r.budget_id, r.also_counts_toward, r.metadata -> 'modelId', r.metadata -> 'tags', r.currency)::text as shape,
         false as stored, null::text as fault, null::text as detail
  from jsonb_to_recordset(p_records) as r(ord integer, budget_id uuid, amount numeric(28, 10), currency text, source text,
       description text, metadata jsonb, idempotency_key text, request_fingerprint text, occurred_at timestamptz,
       also_counts_toward uuid[]);
  perform 'PRAGMA:TABLE: batch_usage (ord integer, id uuid, root_id uuid, budget_id uuid, amount numeric(28, 10), currency text, source text, '
    'description text, metadata jsonb, idempotency_key text, request_fingerprint text, occurred_at timestamptz, also_counts_toward uuid[], '
    'shape text, stored boolean, fault text, detail text)';

  analyze batch_usage; -- a temp table has no statistics else, and the plans below go wrong without them

  -- Where each shape counts (budget_usage_reach_in_trees: each budget with its tree, a null rate where none is
  -- in force), found once per shape.
  create temp table batch_reach on commit drop as
  with shapes as materialized (
    select distinct on (u.shape) u.shape, u.budget_id, u.also_counts_toward, u.metadata ->> 'modelId' as model, u.metadata -> 'tags' as tags,
           u.currency
    from batch_usage u order by u.shape
  )
  select s.shape, s.currency as from_currency, t.budget_id as id, t.root_id as root, t.currency as to_currency, t.exchange_rate as rate
  from shapes s
  cross join lateral budget_usage_reach_in_trees(s.budget_id, s.also_counts_toward, s.model, s.tags, s.currency, now(), null) t;
  perform 'PRAGMA:TABLE: batch_reach (shape text, from_currency text, id uuid, root uuid, to_currency text, rate numeric)';
  analyze batch_reach;

  -- Each record under its budget's tree (on Citus an insert is routed by it, before any trigger runs): the tree
  -- the reach found its budget in; for a budget its own filters leave out, read from the budget's row.
  update batch_usage u set root_id = r.root from batch_reach r where r.shape = u.shape and r.id = u.budget_id;
  unrooted := array(select distinct u.budget_id from batch_usage u where u.root_id is null);
  if cardinality(unrooted) > 0 then
    -- (read apart: on Citus a temp table is not written from a distributed table's rows in one statement)
    select array_agg(d.id), array_agg(d.root_id) into found_ids, found_roots from budget_definitions d where d.id = any (unrooted);
    update batch_usage u set root_id = x.root from unnest(found_ids, found_roots) as x(id, root) where x.id = u.budget_id and u.root_id is null;
  end if;

  -- a. The records without a rate, or whose converted amount overflows, are refused before any is stored:
  -- so a later record under one's key is tried in its place, as it would be one at a time.
  update batch_usage u set fault = 'RB001', detail = missing.pair
  from (select r.shape, min(r.from_currency || '/' || r.to_currency) as pair from batch_reach r where r.rate is null group by r.shape) missing
  where missing.shape = u.shape;
  update batch_usage u set fault = '22003'
  where u.fault is null
    and exists (select 1 from batch_reach r where r.shape = u.shape and u.amount * r.rate > budget_money_max()); -- budget_convert rounds up to the same grid

  -- The others, in key order, so two batches sharing keys wait for each other instead of deadlocking: the
  -- first under each key takes it (the later ones are its replays or conflicts, read by the caller). On Citus,
  -- one statement a tree, the trees in root order (each then runs on its tree's node, and two batches take the
  -- trees in one order too); on plain PostgreSQL one statement takes them all.
  foreach tree in array case when on_citus then array(select distinct u.root_id from batch_usage u where u.fault is null order by 1)
                             else array[null::uuid] end loop
    with inserted as (
      insert into budget_usage_records as u (id, root_id, budget_id, amount, currency, source, description, metadata, idempotency_key,
                                             request_fingerprint, occurred_at, also_counts_toward, recorded_at, allocated_by_settlement)
      select b.id, b.root_id, b.budget_id, b.amount, b.currency, b.source, b.description, b.metadata, b.idempotency_key,
             b.request_fingerprint, b.occurred_at, b.also_counts_toward, now(), true
      from batch_usage b where b.fault is null and (tree is null or b.root_id = tree) order by b.idempotency_key, b.ord
      on conflict do nothing
      returning u.id
    )
    select coalesce(array_agg(i.id), '{}') into usage_ids from inserted i;
    update batch_usage b set stored = true where b.id = any (usage_ids);
  end loop;

  -- A refused record whose key was already held when it came (before the batch, or by an earlier record of
  -- it) is that record's replay or conflict instead: one at a time, the key is looked at before the rate. The
  -- holders are read apart from this function's tables (on Citus they are on the trees' nodes); there a key is
  -- held within its tree only, as the single route finds it.
  held_keys := array(select distinct u.idempotency_key from batch_usage u where u.fault is not null and u.idempotency_key is not null);
  if cardinality(held_keys) > 0 then
    select coalesce(array_agg(r.idempotency_key), '{}'), coalesce(array_agg(r.root_id), '{}'), coalesce(array_agg(r.id), '{}')
    into held_keys, held_roots, held_ids
    from budget_usage_records r where r.idempotency_key = any (held_keys) and r.request_fingerprint is not null;
    update batch_usage u set fault = null, detail = null
    where u.fault is not null and u.idempotency_key is not null
      and exists (select 1 from unnest(held_keys, held_roots, held_ids) as h(key, root, id)
                  where h.key = u.idempotency_key and (not on_citus or h.root = u.root_id)
                    and not exists (select 1 from batch_usage later where later.id = h.id and later.ord > u.ord));
  end if;

  -- b. The stored records' spend, in their order (budget_record_spend: allocations, window rows, crossings,
  -- the lock order), each budget with its tree.
  select array_agg(u.ord::bigint), array_agg(u.id), array_agg(r.id), array_agg(u.amount), array_agg(r.rate), array_agg(u.occurred_at), array_agg(r.root)
  into ords, usage_ids, budget_ids, amounts, rates, instants, trees
  from batch_usage u join batch_reach r on r.shape = u.shape where u.stored;
  select coalesce(array_agg(distinct s.usage_id) filter (where s.charged is null), '{}') into refused
  from budget_record_spend(ords, usage_ids, budget_ids, amounts, rates, instants, '{}', '{}', false, null, null, null, trees) s;
  if cardinality(refused) > 0 then
    trees := array(select distinct u.root_id from batch_usage u where u.id = any (refused));
    delete from budget_usage_records r where r.root_id = any (trees) and r.id = any (refused);
    update batch_usage u set stored = false, fault = '22003' where u.id = any (refused);
  end if;

  return query select b.ord, case when b.stored then b.id end, b.fault, b.detail from batch_usage b order by b.ord;
end $$;
