-- Request and token rate limits beside money: a token bucket per rate-limited budget (budget_rate_buckets),
-- shared by every gateway process. A bucket holds up to a minute's allowance and refills continuously at the
-- per-minute rate, so a budget allows its requestsPerMinute and tokensPerMinute over any minute and a burst
-- of at most one minute's worth. Processes take allowance from it (one call's worth, or a slice on a hot
-- budget, lib/gate/rate-limits.ts) and give back what they did not use; what a process holds counts as
-- used, so the limits hold however many processes share the database. Bucket rows are locked tree by tree in
-- the order of their roots, and by budget id within a tree, and a queue on one hot bucket cannot hold a pooled
-- connection for more than 2 s (lock_timeout), for a give-back as for a take.
--
-- Each statement names the trees of its budgets (p_roots, each budget's root beside its id: the caller's lines
-- know them; null, as the version before calls them: read from the budgets) and reads or writes one tree's
-- rows at a time. On Citus a call runs on the node of p_root's tree (sql/citus/delegate.sql), so a call on
-- one tree's budgets runs whole there; p_root chooses the node only, and defaults to the nil root, never to
-- null (delegate.sql says why).

-- What a bucket holds at p_at: refilled for the time since it was last written, never past a minute's
-- worth; null for a dimension the budget does not limit. Read at clock_timestamp() once its row is locked,
-- not at now(): a statement that waited for another's lock must not refill from an instant before that
-- other's write. (Kept in a variable: Citus refuses a volatile function in an UPDATE.)
create or replace function budget_rate_level(p_requests numeric, p_tokens numeric, p_refilled_at timestamptz,
                                  p_rpm integer, p_tpm bigint, p_at timestamptz,
                                  out requests numeric, out tokens numeric)
language sql immutable parallel safe as $$
  select least(p_rpm, p_requests + greatest(extract(epoch from p_at - p_refilled_at), 0) * p_rpm / 60.0),
         least(p_tpm, p_tokens + greatest(extract(epoch from p_at - p_refilled_at), 0) * p_tpm / 60.0)
$$;

-- Each budget's tree, beside its id: as p_roots names it, else (no p_roots, or a null in it) read from the
-- budget (on Citus, on every shard).
create or replace function budget_rate_roots(p_budget_ids uuid[], p_roots uuid[]) returns uuid[]
language plpgsql stable as $$
begin
  if p_roots is not null and array_position(p_roots, null) is null then return p_roots; end if;
  return array(select coalesce(p_roots[x.n], (select b.root_id from budget_definitions b where b.id = x.id))
               from unnest(p_budget_ids) with ordinality as x(id, n) order by x.n);
end $$;

-- Takes allowance from the budgets' buckets, locked in the order above. For each budget: when it holds
-- at least the call's need (p_need_*) on every dimension it limits, it grants the need or, up to p_ask_*,
-- an eighth of what it holds (so near the limit allowance goes one call at a time); else it grants
-- nothing. Returns, per budget, what was granted and what is left, for the decision and the 429's headers.
drop function if exists budget_rate_take(uuid[], numeric[], numeric[], numeric[], numeric[]);
create or replace function budget_rate_take(p_budget_ids uuid[], p_need_requests numeric[], p_need_tokens numeric[],
                                 p_ask_requests numeric[], p_ask_tokens numeric[],
                                 p_roots uuid[] default null, p_root uuid default '00000000-0000-0000-0000-000000000000')
returns table (budget_id uuid, granted_requests numeric, granted_tokens numeric,
               requests_per_minute integer, tokens_per_minute bigint, requests_left numeric, tokens_left numeric)
language plpgsql set lock_timeout = '2s' as $$
declare
  roots uuid[] := budget_rate_roots(p_budget_ids, p_roots);
  tree uuid;
  at timestamptz;
  r record;
  level record;
  fits boolean;
begin
  for tree in select distinct x.root from unnest(roots) as x(root) where x.root is not null order by x.root loop
    -- a bucket seen for the first time starts full
    at := clock_timestamp();
    insert into budget_rate_buckets (budget_id, root_id, requests, tokens, refilled_at)
    select b.id, b.root_id, coalesce(b.rate_requests_per_minute, 0), coalesce(b.rate_tokens_per_minute, 0), at
    from unnest(p_budget_ids, roots) as x(id, root) join budget_definitions b on b.root_id = tree and b.id = x.id
    where x.root = tree
    order by b.id
    on conflict on constraint budget_rate_buckets_pkey do nothing;

    for r in
      select a.id, a.need_r, a.need_t, a.ask_r, a.ask_t, b.rate_requests_per_minute as rpm, b.rate_tokens_per_minute as tpm,
             k.requests, k.tokens, k.refilled_at
      from unnest(p_budget_ids, p_need_requests, p_need_tokens, p_ask_requests, p_ask_tokens, roots) as a(id, need_r, need_t, ask_r, ask_t, root)
      join budget_definitions b on b.root_id = tree and b.id = a.id
      join budget_rate_buckets k on k.root_id = tree and k.budget_id = a.id
      where a.root = tree
      order by a.id
      for update of k
    loop
      at := clock_timestamp();
      level := budget_rate_level(r.requests, r.tokens, r.refilled_at, r.rpm, r.tpm, at);
      fits := (r.rpm is null or level.requests >= r.need_r) and (r.tpm is null or level.tokens >= r.need_t);
      budget_id := r.id;
      requests_per_minute := r.rpm;
      tokens_per_minute := r.tpm;
      granted_requests := case when not fits or r.rpm is null then 0 else greatest(r.need_r, least(r.ask_r, floor(level.requests / 8))) end;
      granted_tokens := case when not fits or r.tpm is null then 0 else greatest(r.need_t, least(r.ask_t, floor(level.tokens / 8))) end;
      requests_left := level.requests - granted_requests;
      tokens_left := level.tokens - granted_tokens;
      update budget_rate_buckets k
      set requests = coalesce(requests_left, 0), tokens = coalesce(tokens_left, 0), refilled_at = at
      where k.root_id = tree and k.budget_id = r.id;
      return next;
    end loop;
  end loop;
end $$;

-- Gives allowance back (what a process took and did not use), never past a minute's worth. A negative
-- amount takes more: a call that used more tokens than it reserved.
drop function if exists budget_rate_give_back(uuid[], numeric[], numeric[]);
create or replace function budget_rate_give_back(p_budget_ids uuid[], p_requests numeric[], p_tokens numeric[],
                                      p_roots uuid[] default null, p_root uuid default '00000000-0000-0000-0000-000000000000')
returns void language plpgsql set lock_timeout = '2s' as $$
declare
  roots uuid[] := budget_rate_roots(p_budget_ids, p_roots);
  tree uuid;
  at timestamptz;
  r record;
  level record;
begin
  for tree in select distinct x.root from unnest(roots) as x(root) where x.root is not null order by x.root loop
    for r in
      select a.id, a.back_r, a.back_t, b.rate_requests_per_minute as rpm, b.rate_tokens_per_minute as tpm, k.requests, k.tokens, k.refilled_at
      from unnest(p_budget_ids, p_requests, p_tokens, roots) as a(id, back_r, back_t, root)
      join budget_definitions b on b.root_id = tree and b.id = a.id
      join budget_rate_buckets k on k.root_id = tree and k.budget_id = a.id
      where a.root = tree
      order by a.id
      for update of k
    loop
      at := clock_timestamp();
      level := budget_rate_level(r.requests, r.tokens, r.refilled_at, r.rpm, r.tpm, at);
      update budget_rate_buckets k
      set requests = coalesce(least(r.rpm, level.requests + r.back_r), 0), tokens = coalesce(least(r.tpm, level.tokens + r.back_t), 0),
          refilled_at = at
      where k.root_id = tree and k.budget_id = r.id;
    end loop;
  end loop;
end $$;
