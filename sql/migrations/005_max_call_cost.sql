-- A budget's cap on the cost of one call (maxCallCost, in the budget's currency): a call whose worst case,
-- converted into the budget's currency as its hold is, costs more does not fit the budget, whatever its
-- room or its enforcement (budget_within_cap, sql/functions/holds.sql). Null: no cap. The same precision
-- as the budget's amount, and never zero or below: a cap of zero would refuse every call, which block-all says.
alter table budget_definitions add column if not exists max_call_cost numeric(28, 10);
do $$
begin
  if not exists (select 1 from pg_constraint where conname = 'budget_definitions_max_call_cost_check') then
    alter table budget_definitions add constraint budget_definitions_max_call_cost_check check (max_call_cost > 0);
  end if;
end $$;
