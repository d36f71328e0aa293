-- The sweeper: reservations left by a process that died mid-call, or that outlived their TTL.

-- Settles expired reservations through the one batch settlement (settlements.sql). Their outcome is
-- unknown: the request may well have reached the provider and been charged, so each is counted as spent
-- at its estimate (the most the call could cost; a lease's unused slice and all), in the call's currency,
-- never silently released: a budget may end up over-counted by a crash, never overspent. Rows are locked
-- in the lock order (settlements.sql), SKIP LOCKED: every gateway process sweeps without waiting on
-- another.
create or replace function budget_sweep_expired(p_limit integer) returns integer language plpgsql set lock_timeout = '5s' as $$
declare
  ids uuid[];
  amounts numeric[];
begin
  select array_agg(x.id), array_agg(x.amount) into ids, amounts
  from (
    select r.id, max(coalesce(r.call_amount, r.amount)) as amount
    from (select r.id, r.amount, r.call_amount from budget_reservations r where r.expires_at < now()
          order by r.id, r.budget_id limit p_limit for update skip locked) r
    group by r.id
  ) x;
  if ids is null then return 0; end if;
  perform budget_settle_batch(ids, amounts, array_fill('expired-reservation'::text, array[array_length(ids, 1)]),
    array_fill('The gateway did not settle this call before its reservation expired; counted at its estimate'::text, array[array_length(ids, 1)]),
    array_fill(jsonb_build_object('outcome', 'unknown'), array[array_length(ids, 1)]));
  return array_length(ids, 1);
end $$;
