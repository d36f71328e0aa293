-- Several currencies (issue 13): budgets in any ISO 4217 currency, usage and gated calls counted toward
-- every applicable budget whatever its currency, converted at an exchange rate that admins manage.
--
-- The rule, everywhere money crosses currencies: an amount in currency A counts toward a budget in B
-- as amount x rate(A -> B) in force at that moment, rounded UP to the money scale (10 decimals), so a
-- conversion can never let a hard budget spend more than its limit. The rate used is stored with the
-- allocation (and with a gated call's reservation), so history never changes when rates do. A missing
-- rate refuses; nothing is ever converted at 1 unless the currencies are the same.

create table budget_exchange_rates (
  from_currency  text not null check (from_currency ~ '^[A-Z]{3}$'),
  to_currency    text not null check (to_currency ~ '^[A-Z]{3}$'),
  -- one unit of from_currency is `rate` units of to_currency, from this instant on (until the next one)
  effective_from timestamptz not null,
  rate           numeric not null check (rate > 0),
  set_by         text,
  set_at         timestamptz not null default now(),
  primary key (from_currency, to_currency, effective_from),
  check (from_currency <> to_currency)
);

-- The rate from one currency into another in force at an instant: 1 for the same currency, null when none is.
create function budget_exchange_rate(p_from text, p_to text, p_at timestamptz) returns numeric
language sql stable parallel safe as $$
  select case when p_from = p_to then 1::numeric else (
    select r.rate from budget_exchange_rates r
    where r.from_currency = p_from and r.to_currency = p_to and r.effective_from <= p_at
    order by r.effective_from desc limit 1) end
$$;

-- An amount at a rate, rounded up to the money scale; null without a rate.
create function budget_convert(p_amount numeric, p_rate numeric) returns numeric
language sql immutable parallel safe as $$
  select (ceil(p_amount * p_rate * 10000000000) / 10000000000)::numeric(28, 10)
$$;

-- The rate, or an error that names the pair (SQLSTATE RB001, detail 'FROM/TO'; lib/kernel/errors.ts maps it to a 400).
create function budget_require_rate(p_from text, p_to text, p_at timestamptz) returns numeric
language plpgsql stable as $$
declare
  found numeric := budget_exchange_rate(p_from, p_to, p_at);
begin
  if found is null then
    raise exception 'no exchange rate from % to % in force at %', p_from, p_to, p_at
      using errcode = 'RB001', detail = p_from || '/' || p_to;
  end if;
  return found;
end $$;

-- The rate each allocation was converted at (1: the usage was in the budget's currency).
alter table budget_usage_allocations add column exchange_rate numeric not null default 1;
-- A gated call's hold on a budget in another currency: the estimate in the call's currency and the rate
-- its hold was converted at; the settlement charges the budget at the same rate.
alter table budget_reservations add column call_amount numeric;
alter table budget_reservations add column exchange_rate numeric not null default 1;

-- Where usage recorded outside the gate counts, and at what rate: the lineage of its budget and of each of
-- its other budgets, those whose filters its model and tags match, each once, with the rate from its
-- currency into theirs in force at p_at (an error naming the pair where none is). The usage trigger and
-- the batch collector (014) both ask here.
create function budget_usage_targets(p_budget_id uuid, p_also uuid[], p_model text, p_tags jsonb, p_currency text, p_at timestamptz)
returns table (budget_id uuid, exchange_rate numeric) language sql stable as $$
  select matched.id, budget_require_rate(p_currency, matched.currency, p_at)
  from (
    select distinct l.id, b.currency
    from unnest(array[p_budget_id] || p_also) as counted(id)
    cross join lateral budget_lineage(counted.id) l
    join budget_definitions b on b.id = l.id
    where budget_matches(b, p_model, p_tags)
  ) matched
$$;

-- Usage recorded outside the gate (007), converted into each budget's currency at the rate in force when
-- it is recorded; the status cache grows by the converted amount.
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

-- Every budget applies to a call whatever its currency (007 kept only the gate's currency): p_currency
-- stays in the signature; what a budget in another currency holds is converted where it is held.
create or replace function budget_applicable(p_scope_types text[], p_scope_ids text[], p_currency text, p_at timestamptz, p_model text, p_tags jsonb)
returns table (budget_id uuid, scope_matched boolean, scope_rank integer, period_start timestamptz, period_end timestamptz)
language sql stable as $$
  select l.id, bool_or(l.depth = 1), min(s.rank * 100 + l.depth)::integer, w.period_start, w.period_end
  from unnest(p_scope_types, p_scope_ids) with ordinality as s(scope_type, scope_id, rank)
  join budget_definitions m on m.scope_type = s.scope_type and m.scope_id = s.scope_id and m.deleted_at is null
  cross join lateral budget_lineage(m.id) l
  join budget_definitions b on b.id = l.id and b.deleted_at is null
  cross join lateral budget_window(b, p_at) w
  where budget_matches(b, p_model, p_tags)
  group by l.id, w.period_start, w.period_end
$$;

-- A call's line (008), with each budget's currency: the gate leases only lines in its own currency.
drop function budget_line(text[], text[], text, text, jsonb);
create function budget_line(p_scope_types text[], p_scope_ids text[], p_currency text, p_model text, p_tags jsonb)
returns table (budget_id uuid, name text, alerts jsonb, scope_matched boolean, scope_rank integer,
               period_start timestamptz, period_end timestamptz, definitions_version bigint,
               rate_requests_per_minute integer, rate_tokens_per_minute bigint, currency text)
language plpgsql as $$
declare
  window_row record;
begin
  for window_row in
    select a.budget_id, a.period_start, a.period_end from budget_applicable(p_scope_types, p_scope_ids, p_currency, now(), p_model, p_tags) a
    where not exists (select 1 from budget_status_cache c where c.budget_id = a.budget_id and c.period_start = a.period_start
                      and c.period_end = a.period_end)
    order by a.budget_id
  loop
    perform refresh_budget_status_cache(window_row.budget_id, window_row.period_start, window_row.period_end);
  end loop;
  return query
    select a.budget_id, b.name, b.alerts, a.scope_matched, a.scope_rank, a.period_start, a.period_end, budget_definitions_version(),
           b.rate_requests_per_minute, b.rate_tokens_per_minute, b.currency
    from budget_applicable(p_scope_types, p_scope_ids, p_currency, now(), p_model, p_tags) a
    join budget_definitions b on b.id = a.budget_id
    order by a.scope_matched desc, a.scope_rank, a.budget_id;
end $$;

-- Holds (006), each budget's share converted into its currency at the rate in force now, rounded up; a
-- call with a budget that has no rate in force holds nothing (its rows say so: held and exchange_rate null).
drop function budget_hold_batch(uuid[], numeric[], text[], text, interval, integer[], uuid[], timestamptz[], timestamptz[], boolean[], integer[], boolean, boolean);
create function budget_hold_batch(
  p_reservation_ids uuid[], p_amounts numeric[], p_request_ids text[], p_currency text, p_ttl interval,
  p_row_calls integer[], p_row_budgets uuid[], p_row_starts timestamptz[], p_row_ends timestamptz[],
  p_row_matched boolean[], p_row_ranks integer[], p_need_approvals boolean, p_need_projected boolean
) returns table (call_index integer, budget_id uuid, amount numeric, enforcement text, current_amount numeric,
                 reserved_amount numeric, fits boolean, is_current boolean, is_reserved boolean,
                 approved_through numeric, projected_actions text[], definitions_version bigint,
                 held numeric, exchange_rate numeric)
language plpgsql as $$
#variable_conflict use_column
declare
  keys uuid[]; starts timestamptz[]; limits numeric[]; enforcements text[]; currents numeric[]; reserveds numeric[]; added numeric[];
  rates numeric[]; row_held numeric[];
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
  for ci in 1 .. calls loop
    call_fits := true;
    for ri in 1 .. rows_count loop
      continue when p_row_calls[ri] <> ci;
      w := row_window[ri];
      if w is null then call_current[ci] := false; continue; end if;
      row_reserved_before[ri] := reserveds[w] + added[w];
      -- the estimate in the budget's currency, rounded up; a budget without a rate in force holds nothing
      row_held[ri] := budget_convert(p_amounts[ci], rates[w]);
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
           budget_definitions_version(), r.held, rates[r.w]
    from unnest(p_row_calls, p_row_budgets, p_row_starts, row_window, row_reserved_before, row_fits, row_held) as r(call, b, s, w, before, fits, held)
    where r.w is not null;
end $$;

alter function budget_hold_batch(uuid[], numeric[], text[], text, interval, integer[], uuid[], timestamptz[], timestamptz[], boolean[], integer[], boolean, boolean)
  set lock_timeout = '2s';

-- Settlements (006): each budget charged in its currency at its hold's rate, rounded up.
create or replace function budget_settle_batch(p_ids uuid[], p_actuals numeric[], p_sources text[], p_descriptions text[], p_metadata jsonb[])
returns table (reservation_id uuid, usage_id uuid, definitions_version bigint) language sql as $$
  -- Asynchronous commit: the batch's locks go at commit, not once the WAL is on disk. A PostgreSQL
  -- crash can lose the last batches whole; their reservations come back and are swept at their
  -- estimate, so nothing goes uncounted. (set_config with is_local lasts to the end of the transaction.)
  select set_config('synchronous_commit', 'off', true);
  with input as (
    select * from unnest(p_ids, p_actuals, p_sources, p_descriptions, p_metadata) as i(reservation_id, actual, source, description, metadata)
  ),
  ended as (
    delete from budget_reservations r using input i where r.id = i.reservation_id
    returning r.id, r.budget_id, r.period_start, r.amount, r.scope_matched, r.scope_rank, r.currency, r.request_id, r.created_at, r.exchange_rate
  ),
  calls as (
    select e.id as reservation_id, gen_random_uuid() as usage_id, min(e.currency) as currency, min(e.request_id) as request_id,
           min(e.created_at) as reserved_at,
           coalesce(array_agg(e.budget_id order by e.scope_rank, e.budget_id) filter (where e.scope_matched),
                    array_agg(e.budget_id order by e.scope_rank, e.budget_id)) as held_by
    from ended e group by e.id
  ),
  recorded as (
    insert into budget_usage_records as u (id, budget_id, amount, currency, source, description, metadata, idempotency_key,
                                           also_counts_toward, occurred_at, allocated_by_settlement)
    select c.usage_id, c.held_by[1], i.actual, c.currency, i.source, i.description,
           coalesce(i.metadata, '{}'::jsonb) || jsonb_build_object('requestId', c.request_id), c.request_id, c.held_by[2:], c.reserved_at, true
    from calls c join input i on i.reservation_id = c.reservation_id
    where i.actual > 0
    on conflict (budget_id, idempotency_key) do nothing
    returning u.id, u.amount, u.occurred_at
  ),
  charged as (
    select c.reservation_id, r.id as usage_id, r.amount, r.occurred_at from calls c join recorded r on r.id = c.usage_id
  ),
  -- each budget is charged in its own currency, at the rate its hold was taken at, rounded up
  converted as (
    select e.budget_id, e.period_start, e.amount as held, ch.usage_id, ch.occurred_at, e.exchange_rate,
           budget_convert(ch.amount, e.exchange_rate) as amount
    from ended e left join charged ch on ch.reservation_id = e.id
  ),
  allocated as (
    insert into budget_usage_allocations (budget_id, usage_id, amount, occurred_at, exchange_rate)
    select v.budget_id, v.usage_id, v.amount, v.occurred_at, v.exchange_rate from converted v where v.usage_id is not null
  ),
  deltas as (
    select v.budget_id, v.period_start, sum(v.held) as released, coalesce(sum(v.amount), 0) as spent,
           count(v.usage_id) as calls, max(v.occurred_at) as last_usage_at
    from converted v
    group by v.budget_id, v.period_start
  ),
  locked as (
    select c.budget_id from budget_status_cache c join deltas d on d.budget_id = c.budget_id and d.period_start = c.period_start
    order by c.budget_id for update of c
  ),
  moved as (
    update budget_status_cache c
    set reserved_amount = greatest(c.reserved_amount - d.released, 0), current_amount = c.current_amount + d.spent,
        usage_count = c.usage_count + d.calls, last_usage_at = greatest(c.last_usage_at, d.last_usage_at),
        updated_at = case when d.calls > 0 then now() else c.updated_at end
    from deltas d
    -- the scalar subquery runs first, once: every row is locked, in order, before any is written
    where (select count(*) from locked) >= 0 and c.budget_id = d.budget_id and c.period_start = d.period_start
  )
  select c.reservation_id, ch.usage_id, budget_definitions_version() from calls c left join charged ch on ch.reservation_id = c.reservation_id;
$$;

-- The sweeper counts an expired call at its estimate, in the call's currency (converted per budget by the settlement).
create or replace function budget_sweep_expired(p_limit integer) returns integer language plpgsql as $$
declare
  ids uuid[];
  amounts numeric[];
begin
  select array_agg(x.id), array_agg(x.amount) into ids, amounts
  from (
    select r.id, max(coalesce(r.call_amount, r.amount)) as amount
    from (select r.id, r.amount, r.call_amount from budget_reservations r where r.expires_at < now() order by r.id limit p_limit for update skip locked) r
    group by r.id
  ) x;
  if ids is null then return 0; end if;
  perform budget_settle_batch(ids, amounts, array_fill('expired-reservation'::text, array[array_length(ids, 1)]),
    array_fill('The gateway did not settle this call before its reservation expired; counted at its estimate'::text, array[array_length(ids, 1)]),
    array_fill(jsonb_build_object('outcome', 'unknown'), array[array_length(ids, 1)]));
  return array_length(ids, 1);
end $$;
