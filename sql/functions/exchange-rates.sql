-- Exchange rates that admins manage (the table: budget_exchange_rates in the baseline).

-- The rate from one currency into another in force at an instant: 1 for the same currency, null when none
-- is. Among rates set for the same instant, the one set last (the highest id).
create or replace function budget_exchange_rate(p_from text, p_to text, p_at timestamptz) returns numeric
language sql stable parallel safe as $$
  select case when p_from = p_to then 1::numeric else (
    select r.rate from budget_exchange_rates r
    where r.from_currency = p_from and r.to_currency = p_to and r.effective_from <= p_at
    order by r.effective_from desc, r.id desc limit 1) end
$$;

-- The rate, or an error that names the pair (SQLSTATE RB001, detail 'FROM/TO'; lib/kernel/errors.ts maps it to a 400).
create or replace function budget_require_rate(p_from text, p_to text, p_at timestamptz) returns numeric
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
