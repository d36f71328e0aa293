-- Request and token rate limits beside money: a token bucket per rate-limited budget (budget_rate_buckets),
-- shared by every gateway process. A bucket holds up to a minute's allowance and refills continuously at the
-- per-minute rate, so a budget allows its requestsPerMinute and tokensPerMinute over any minute and a burst
-- of at most one minute's worth. Processes take allowance from it (one call's worth, or a slice on a hot
-- budget, lib/gate/rate-limits.ts) and give back what they did not use; what a process holds counts as
-- used, so the limits hold however many processes share the database. Bucket rows are locked in budget id
-- order, and a queue on one hot bucket cannot hold a pooled connection for more than 2 s (lock_timeout),
-- for a give-back as for a take.

-- What a bucket holds at p_at: refilled for the time since it was last written, never past a minute's
-- worth; null for a dimension the budget does not limit. clock_timestamp(), not now(): a statement that
-- waited for another's lock must not refill from an instant before that other's write.
create or replace function budget_rate_level(p_requests numeric, p_tokens numeric, p_refilled_at timestamptz,
                                  p_rpm integer, p_tpm bigint, p_at timestamptz,
                                  out requests numeric, out tokens numeric)
language sql immutable parallel safe as $$
  select least(p_rpm, p_requests + greatest(extract(epoch from p_at - p_refilled_at), 0) * p_rpm / 60.0),
         least(p_tpm, p_tokens + greatest(extract(epoch from p_at - p_refilled_at), 0) * p_tpm / 60.0)
$$;

-- Takes allowance from the budgets' buckets, locked in budget id order. For each budget: when it holds
-- at least the call's need (p_need_*) on every dimension it limits, it grants the need or, up to p_ask_*,
-- an eighth of what it holds (so near the limit allowance goes one call at a time); else it grants
-- nothing. Returns, per budget, what was granted and what is left, for the decision and the 429's headers.
create or replace function budget_rate_take(p_budget_ids uuid[], p_need_requests numeric[], p_need_tokens numeric[],
                                 p_ask_requests numeric[], p_ask_tokens numeric[])
returns table (budget_id uuid, granted_requests numeric, granted_tokens numeric,
               requests_per_minute integer, tokens_per_minute bigint, requests_left numeric, tokens_left numeric)
language plpgsql set lock_timeout = '2s' as $$
declare
  r record;
  level record;
  fits boolean;
begin
  -- a bucket seen for the first time starts full
  insert into budget_rate_buckets (budget_id, root_id, requests, tokens, refilled_at)
  select b.id, b.root_id, coalesce(b.rate_requests_per_minute, 0), coalesce(b.rate_tokens_per_minute, 0), clock_timestamp()
  from unnest(p_budget_ids) as x(id) join budget_definitions b on b.id = x.id
  order by b.id
  on conflict on constraint budget_rate_buckets_pkey do nothing;

  for r in
    select a.id, a.need_r, a.need_t, a.ask_r, a.ask_t, b.rate_requests_per_minute as rpm, b.rate_tokens_per_minute as tpm,
           k.requests, k.tokens, k.refilled_at
    from unnest(p_budget_ids, p_need_requests, p_need_tokens, p_ask_requests, p_ask_tokens) as a(id, need_r, need_t, ask_r, ask_t)
    join budget_definitions b on b.id = a.id
    join budget_rate_buckets k on k.budget_id = a.id
    order by a.id
    for update of k
  loop
    level := budget_rate_level(r.requests, r.tokens, r.refilled_at, r.rpm, r.tpm, clock_timestamp());
    fits := (r.rpm is null or level.requests >= r.need_r) and (r.tpm is null or level.tokens >= r.need_t);
    budget_id := r.id;
    requests_per_minute := r.rpm;
    tokens_per_minute := r.tpm;
    granted_requests := case when not fits or r.rpm is null then 0 else greatest(r.need_r, least(r.ask_r, floor(level.requests / 8))) end;
    granted_tokens := case when not fits or r.tpm is null then 0 else greatest(r.need_t, least(r.ask_t, floor(level.tokens / 8))) end;
    requests_left := level.requests - granted_requests;
    tokens_left := level.tokens - granted_tokens;
    update budget_rate_buckets k
    set requests = coalesce(requests_left, 0), tokens = coalesce(tokens_left, 0), refilled_at = clock_timestamp()
    where k.budget_id = r.id;
    return next;
  end loop;
end $$;

-- Gives allowance back (what a process took and did not use), never past a minute's worth. A negative
-- amount takes more: a call that used more tokens than it reserved.
create or replace function budget_rate_give_back(p_budget_ids uuid[], p_requests numeric[], p_tokens numeric[])
returns void language plpgsql set lock_timeout = '2s' as $$
declare
  r record;
  level record;
begin
  for r in
    select a.id, a.back_r, a.back_t, b.rate_requests_per_minute as rpm, b.rate_tokens_per_minute as tpm, k.requests, k.tokens, k.refilled_at
    from unnest(p_budget_ids, p_requests, p_tokens) as a(id, back_r, back_t)
    join budget_definitions b on b.id = a.id
    join budget_rate_buckets k on k.budget_id = a.id
    order by a.id
    for update of k
  loop
    level := budget_rate_level(r.requests, r.tokens, r.refilled_at, r.rpm, r.tpm, clock_timestamp());
    update budget_rate_buckets k
    set requests = coalesce(least(r.rpm, level.requests + r.back_r), 0), tokens = coalesce(least(r.tpm, level.tokens + r.back_t), 0),
        refilled_at = clock_timestamp()
    where k.budget_id = r.id;
  end loop;
end $$;
