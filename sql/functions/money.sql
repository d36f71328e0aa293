-- Money in SQL: numeric(28, 10), exact (lib/kernel/money.ts is the TypeScript side).

-- The largest amount a money column (numeric(28, 10)) holds.
create or replace function budget_money_max() returns numeric language sql immutable parallel safe as $$
  select 999999999999999999.9999999999::numeric
$$;

-- An amount at a rate, rounded up to the money scale; null without a rate. The rule everywhere money
-- crosses currencies: an amount in currency A counts toward a budget in B as amount x rate(A -> B),
-- rounded UP, so a conversion can never let a hard budget spend more than its limit.
create or replace function budget_convert(p_amount numeric, p_rate numeric) returns numeric
language sql immutable parallel safe as $$
  select budget_convert_unbounded(p_amount, p_rate)::numeric(28, 10)
$$;

-- The same, past the money range too (not cast): recording spend (spend.sql) refuses or clamps an amount
-- that no money column can hold instead of failing on it.
create or replace function budget_convert_unbounded(p_amount numeric, p_rate numeric) returns numeric
language sql immutable parallel safe as $$
  -- times 10^-10, not divided by 10^10: a numeric product is exact, while a quotient is rounded to nearest at
  -- a scale PostgreSQL picks from the operands' sizes (8 decimals for an amount near 10^11), which can round down
  select ceil(p_amount * p_rate * 10000000000) * 0.0000000001
$$;
