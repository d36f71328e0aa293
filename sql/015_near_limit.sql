-- Near the limit (issue 14): a budget may ask the gate to clamp a call's max_tokens to what it can still
-- afford instead of refusing it. Null follows the gate's nearLimit option.
alter table budget_definitions add column near_limit text check (near_limit in ('refuse', 'clamp'));

-- A call's line (012), with each budget's near-limit policy (null: the gate's).
drop function budget_line(text[], text[], text, text, jsonb);
create function budget_line(p_scope_types text[], p_scope_ids text[], p_currency text, p_model text, p_tags jsonb)
returns table (budget_id uuid, name text, alerts jsonb, scope_matched boolean, scope_rank integer,
               period_start timestamptz, period_end timestamptz, definitions_version bigint,
               rate_requests_per_minute integer, rate_tokens_per_minute bigint, currency text, near_limit text)
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
           b.rate_requests_per_minute, b.rate_tokens_per_minute, b.currency, b.near_limit
    from budget_applicable(p_scope_types, p_scope_ids, p_currency, now(), p_model, p_tags) a
    join budget_definitions b on b.id = a.budget_id
    order by a.scope_matched desc, a.scope_rank, a.budget_id;
end $$;

