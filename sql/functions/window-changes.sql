-- A change of a budget's window (its period, start or end date, recurrence, time zone, fiscal year or
-- alignment) carries its live reservations to the windows of the new definition, in the change's own
-- transaction. Each row goes to the window that holds the instant it will be charged at: a call's hold
-- to the window of its reservation's instant (budget_settle_batch dates it there), a lease to the
-- window of now (its calls are admitted now; budget_settle_leased dates them inside its window). A hold
-- from before the new definition's first window goes to the window of now; a row with no window left
-- (the budget ended) is given back. Each window row's reserved amount moves with its reservations; a
-- window seen for the first time is summed from the allocations (refresh). Window rows the new
-- definition does not have are then deleted: a window that overlaps a new one would never see the
-- settlements dated inside it, and a line still naming it (a process that has not heard of the change)
-- finds it gone and reloads, instead of holding on a window nobody counts.

-- The carry-over locks only rows it can take without waiting on the gate. It locks the budget's
-- reservation rows, then its window rows (the lock order, locks.sql: all of one tree). A hold that commits between
-- the two (budget_hold_batch locks the window rows, inserts its reservations and commits, and the
-- window lock waits for it) leaves a reservation the first statement did not lock. Waiting for it is a
-- deadlock: its settlement locks it and waits for the window rows this trigger holds. (An earlier
-- version did wait: PostgreSQL killed one of them as 40P01, and when it was the change, the admin's PUT
-- answered 500, seen under gated load on a parent and its child about 4 runs in 11.)
--
-- Once the window rows are locked no hold can add a reservation on them (a hold takes them first), so
-- the reservations that exist then are all there will be until the change commits. Those committed
-- after the first lock are locked without waiting (NOWAIT). When one cannot be (a settlement or a lease
-- statement has it and waits for the window rows), the change lets go of the window rows (a
-- subtransaction rolled back), pauses a few milliseconds while that statement goes through, and locks
-- them again, up to 10 times; then it ends with 40001, having changed nothing the gate can see, and the
-- registry runs it again (lib/budgets/registry.ts). The loop carries exactly the rows locked, never a
-- row read later.
create or replace function budget_carry_reservations() returns trigger language plpgsql as $$
declare
  moving record;
  made timestamptz[] := '{}'::timestamptz[];
  locked uuid[];
  newcomers uuid[];
begin
  -- A what-if replay's proposal (rolled back, and the replay reads no reservation nor window row) carries
  -- nothing: carrying would lock the rows the live gate holds and settles on, for the whole replay.
  if current_setting('relaycore_budgets.simulating', true) = 'on' then return null; end if;
  -- the lock order: the budget's reservation rows by (id, budget_id), then its window rows by period_start
  locked := array(select r.id from budget_reservations r where r.root_id = new.root_id and r.budget_id = new.id order by r.id, r.budget_id for update);
  for attempt in 1 .. 10 loop
    begin
      perform 1 from budget_status_cache c where c.root_id = new.root_id and c.budget_id = new.id order by c.budget_id, c.period_start for update;
      -- reservations committed by holds that held the window rows while the first statement ran
      newcomers := array(select r.id from budget_reservations r where r.root_id = new.root_id and r.budget_id = new.id and r.id <> all (locked)
                         order by r.id, r.budget_id for update nowait);
      exit;
    exception when lock_not_available then
      -- Rolling back this block lets go of the window rows it locked (row locks taken after a savepoint go
      -- with it), so the settlement that has the new reservation and waits for them goes through; then again.
      if attempt = 10 then
        raise exception 'budget % changed its window while settlements kept holding its new reservations', new.id
          using errcode = '40001', hint = 'Run the change again: the settlements it met go through first.';
      end if;
      perform pg_sleep(0.002 * attempt);
    end;
  end loop;
  locked := locked || newcomers;

  for moving in
    select r.id, r.period_start as old_start, r.amount,
           case when charged_at.period_start is not null then charged_at.period_start else at_now.period_start end as new_start,
           case when charged_at.period_start is not null then charged_at.period_end else at_now.period_end end as new_end
    from budget_reservations r
    join budget_status_cache old_row on old_row.root_id = r.root_id and old_row.budget_id = r.budget_id and old_row.period_start = r.period_start
    -- by the budget's columns: on Citus this runs on the tree's shard, whose row is not of budget_definitions' type
    left join lateral budget_period_window(new.period, new.start_date, new.end_date, new.recurring, case when r.lease then now() else r.created_at end,
                                           new.timezone, new.fiscal_year_start_month, new.period_alignment) charged_at on true
    left join lateral budget_period_window(new.period, new.start_date, new.end_date, new.recurring, now(),
                                           new.timezone, new.fiscal_year_start_month, new.period_alignment) at_now on true
    where r.root_id = new.root_id and r.budget_id = new.id and r.id = any (locked)
    order by r.id
  loop
    if moving.new_start is null then
      update budget_status_cache c set reserved_amount = greatest(c.reserved_amount - moving.amount, 0)
      where c.root_id = new.root_id and c.budget_id = new.id and c.period_start = moving.old_start;
      delete from budget_reservations r where r.root_id = new.root_id and r.id = moving.id and r.budget_id = new.id;
      continue;
    end if;
    if not (moving.new_start = any (made)) then
      perform refresh_budget_status_cache_in_tree(new.id, moving.new_start, moving.new_end, new.root_id);
      made := made || moving.new_start;
    end if;
    if moving.new_start <> moving.old_start then
      update budget_status_cache c set reserved_amount = greatest(c.reserved_amount - moving.amount, 0)
      where c.root_id = new.root_id and c.budget_id = new.id and c.period_start = moving.old_start;
      update budget_status_cache c set reserved_amount = c.reserved_amount + moving.amount
      where c.root_id = new.root_id and c.budget_id = new.id and c.period_start = moving.new_start;
      update budget_reservations r set period_start = moving.new_start where r.root_id = new.root_id and r.id = moving.id and r.budget_id = new.id;
    end if;
  end loop;

  delete from budget_status_cache c
  where c.root_id = new.root_id and c.budget_id = new.id and c.reserved_amount = 0
    and not exists (select 1 from budget_period_window(new.period, new.start_date, new.end_date, new.recurring, c.period_start,
                                                       new.timezone, new.fiscal_year_start_month, new.period_alignment) w
                    where w.period_start = c.period_start and w.period_end = c.period_end)
    and not exists (select 1 from budget_reservations r where r.root_id = c.root_id and r.budget_id = c.budget_id and r.period_start = c.period_start);
  return null;
end $$;

create or replace trigger budget_definitions_window_changed after update of period, start_date, end_date, recurring, timezone,
  fiscal_year_start_month, period_alignment on budget_definitions
for each row when (old.period is distinct from new.period or old.start_date is distinct from new.start_date
  or old.end_date is distinct from new.end_date or old.recurring is distinct from new.recurring
  or old.timezone is distinct from new.timezone or old.fiscal_year_start_month is distinct from new.fiscal_year_start_month
  or old.period_alignment is distinct from new.period_alignment)
execute function budget_carry_reservations();
