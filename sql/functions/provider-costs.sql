-- Provider cost buckets (the tables: sql/migrations/006_provider_costs.sql).

-- Stores a set of buckets (a collector's page, or a whole CSV file) in the caller's transaction: a bucket
-- not seen before is inserted; one stored with the same amount is left as it is (numeric equality: 1.50 is
-- 1.5); one stored with another amount takes the new amount, and the audit log records the change as
-- p_actor's (correct-provider-cost, before and after). p_rows: a JSON array of objects with the columns of
-- the natural key and amount as a decimal string; the caller gives each key once. Rows are taken in key
-- order, so two writers of overlapping sets lock them in the same order.
create or replace function budget_provider_costs_store(p_rows jsonb, p_actor text, p_request_id text)
returns table (inserted integer, corrected integer, unchanged integer)
language plpgsql set lock_timeout = '5s' as $$
declare
  r record;
  v_id bigint;
  v_amount numeric;
  v_inserted integer := 0;
  v_corrected integer := 0;
  v_unchanged integer := 0;
  -- a value, not a call: Citus runs no volatile function in an update of a table it holds
  v_now timestamptz;
begin
  for r in
    select * from jsonb_to_recordset(p_rows) as x(source text, provider text, account text, bucket_date date, project text, line_item text,
      model text, cost_type text, token_type text, service_tier text, context_window text, currency text, amount numeric)
    order by source, provider, account, bucket_date, project, line_item, model, cost_type, token_type, service_tier, context_window, currency
  loop
    insert into budget_provider_costs (source, provider, account, bucket_date, project, line_item, model, cost_type, token_type, service_tier, context_window, currency, amount)
    values (r.source, r.provider, r.account, r.bucket_date, r.project, r.line_item, r.model, r.cost_type, r.token_type, r.service_tier, r.context_window, r.currency, r.amount)
    on conflict on constraint budget_provider_costs_bucket do nothing
    returning id into v_id;
    if v_id is not null then
      v_inserted := v_inserted + 1;
      continue;
    end if;
    -- Stored before (or by a writer that committed while this one waited on the key): compare under its lock.
    select c.id, c.amount into v_id, v_amount from budget_provider_costs c
    where (c.source, c.provider, c.account, c.bucket_date, c.project, c.line_item, c.model, c.cost_type, c.token_type, c.service_tier, c.context_window, c.currency)
        = (r.source, r.provider, r.account, r.bucket_date, r.project, r.line_item, r.model, r.cost_type, r.token_type, r.service_tier, r.context_window, r.currency)
    for update;
    if v_amount = r.amount then
      v_unchanged := v_unchanged + 1;
      continue;
    end if;
    v_now := clock_timestamp();
    update budget_provider_costs set amount = r.amount, collected_at = v_now, corrected_at = v_now where id = v_id;
    -- an entry of no budget, with the nil root (Citus routes the insert by it)
    insert into budget_audit_log (budget_id, root_id, action, changes, before, after, actor, request_id)
    values (null, '00000000-0000-0000-0000-000000000000', 'correct-provider-cost', array['amount'],
      jsonb_build_object('id', v_id::text, 'source', r.source, 'provider', r.provider, 'account', r.account, 'date', r.bucket_date, 'project', r.project,
        'lineItem', r.line_item, 'model', r.model, 'costType', r.cost_type, 'tokenType', r.token_type, 'serviceTier', r.service_tier,
        'contextWindow', r.context_window, 'currency', r.currency, 'amount', v_amount::text),
      jsonb_build_object('id', v_id::text, 'source', r.source, 'provider', r.provider, 'account', r.account, 'date', r.bucket_date, 'project', r.project,
        'lineItem', r.line_item, 'model', r.model, 'costType', r.cost_type, 'tokenType', r.token_type, 'serviceTier', r.service_tier,
        'contextWindow', r.context_window, 'currency', r.currency, 'amount', r.amount::text),
      p_actor, p_request_id);
    v_corrected := v_corrected + 1;
  end loop;
  return query select v_inserted, v_corrected, v_unchanged;
end
$$;
