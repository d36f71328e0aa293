-- Leases: a process that calls on a hot line holds a slice of the line's room as one reservation (a row
-- per budget, like any call's) and admits calls from it in memory; their settlements move money from the
-- lease to settled spend in batches (settlements.sql). The escrow rule holds because the slice counts as
-- reserved until it is spent or returned. A slice is at most an eighth of the room left on the line's
-- tightest budget, so slices shrink as budgets fill and the last part is held call by call; and never
-- reaches a threshold whose alert does more than notify, so no such action can come into force inside a
-- lease. A lease whose process dies expires like any reservation and is counted as spent, unused part
-- and all (sweeper.sql): a crash over-counts by at most a slice, never under-counts.
--
-- A LEASE ROW LIVES UNTIL ITS PROCESS ENDS IT. A settlement draws a lease down to nothing at most and
-- never deletes it: calls admitted from the lease may still be running, and their settlements must find
-- it. A charge above what the lease holds is recorded whole; the window's settled spend takes all of it
-- and its reserved amount gives up what the lease held (the excess is an over-estimate, reported as such
-- by the gate). The lease's process ends the row with a final return once every call it admitted has
-- settled; a process that dies leaves it to expire and be swept.
--
-- Both functions take the lease's rows, then its window rows, in the lock order (locks.sql), and
-- wait for them no longer than their lock_timeout.
--
-- Each reads or writes one tree's rows at a time, the trees of the lease's line: for a take, those p_roots
-- names (the process's line knows them; a window in none of them refuses the take), else those of its
-- budgets (budget_line_trees, locks.sql); for a return or a renewal, those of the lease's rows
-- (budget_reservation_trees, locks.sql). On Citus a call runs on the node of p_root's tree
-- (sql/citus/delegate.sql), so a lease on a one-tree line runs whole there; p_root chooses the node only, and
-- defaults to the nil root, never to null (delegate.sql says why).

-- Takes (or adds to) a lease on a line's windows; refuses (takes nothing) when the line is out of date: a
-- window not current, or the lease's rows carried by a window change to other windows than the line names;
-- and a top-up whose line is not the lease's (a window it has no row in).
drop function if exists budget_lease_take(uuid, text, interval, numeric, numeric, uuid[], timestamptz[], timestamptz[], boolean[], integer[]);
create or replace function budget_lease_take(
  p_lease_id uuid, p_currency text, p_ttl interval, p_wanted numeric, p_least numeric,
  p_budgets uuid[], p_starts timestamptz[], p_ends timestamptz[], p_matched boolean[], p_ranks integer[],
  p_roots uuid[] default null, p_root uuid default '00000000-0000-0000-0000-000000000000'
) returns table (granted numeric, budget_id uuid, amount numeric, enforcement text, current_amount numeric, reserved_amount numeric,
                 definitions_version bigint)
language plpgsql set lock_timeout = '2s' as $$
#variable_conflict use_column
declare
  trees uuid[] := budget_line_trees(p_roots, p_budgets);
  tree uuid;
  w record;
  windows integer;
  room numeric;
  slice numeric;
  held_budgets uuid[];
  held_starts timestamptz[];
  -- the line's windows, in its order: each one's root, limit, enforcement, alerts and numbers
  roots uuid[];
  limits numeric[];
  enforcements text[];
  alerts jsonb[];
  currents numeric[];
  reserveds numeric[];
begin
  -- the lock order (locks.sql): the lease's rows, then the window rows
  perform budget_lock_reservations(array[p_lease_id], null, trees);
  foreach tree in array trees loop
    select held_budgets || array_agg(r.budget_id), held_starts || array_agg(r.period_start) into held_budgets, held_starts
    from budget_reservations r where r.root_id = tree and r.id = p_lease_id;
  end loop;
  if exists (select 1 from unnest(held_budgets, held_starts) as h(b, s)
             where not exists (select 1 from unnest(p_budgets, p_starts) as x(b, s) where x.b = h.b and x.s = h.s)) then
    return; -- a window change moved the lease (budget_carry_reservations): its line is out of date
  end if;
  -- a lease's line is the one of its first take: a top-up on another line would add rows that its returns
  -- (numbered from the first take), its trees list and its process know nothing of
  if cardinality(held_budgets) > 0 and exists (select 1 from unnest(p_budgets, p_starts) as x(b, s)
                                               where not exists (select 1 from unnest(held_budgets, held_starts) as h(b, s) where h.b = x.b and h.s = x.s)) then
    return;
  end if;
  select budget_lock_windows(array_agg(x.b), array_agg(x.s), array_agg(x.e), trees) into windows
  from unnest(p_budgets, p_starts, p_ends) as x(b, s, e) where x.s <= now() and now() < x.e;
  if windows < coalesce(array_length(p_budgets, 1), 0) then return; end if; -- the line is out of date

  -- each window in the line's place (n), tree by tree
  windows := coalesce(array_length(p_budgets, 1), 0);
  roots := array_fill(null::uuid, array[windows]); limits := array_fill(null::numeric, array[windows]);
  enforcements := array_fill(null::text, array[windows]); alerts := array_fill(null::jsonb, array[windows]);
  currents := limits; reserveds := limits;
  foreach tree in array trees loop
    for w in
      select x.n, c.root_id, d.amount, d.enforcement, d.alerts, c.current_amount, c.reserved_amount
      from unnest(p_budgets, p_starts) with ordinality as x(b, s, n)
      join budget_status_cache c on c.root_id = tree and c.budget_id = x.b and c.period_start = x.s
      join budget_definitions d on d.root_id = tree and d.id = c.budget_id
    loop
      roots[w.n] := w.root_id; limits[w.n] := w.amount; enforcements[w.n] := w.enforcement; alerts[w.n] := w.alerts;
      currents[w.n] := w.current_amount; reserveds[w.n] := w.reserved_amount;
    end loop;
  end loop;
  -- a window in none of the trees named: the line is out of date, or the trees are not its own
  if array_position(roots, null) is not null then return; end if;

  -- the room: a hard budget's, and every threshold's whose alert does more than notify (a projected one: none)
  select min(least(
           case when x.enforcement = 'hard' then x.amount - x.current_amount - x.reserved_amount end,
           (select min(case when coalesce(t.basis, 'current') = 'projected' then 0
                            else t.threshold * x.amount / 100 - x.current_amount - x.reserved_amount end)
            from jsonb_to_recordset(x.alerts) as t(threshold numeric, actions jsonb, basis text)
            where exists (select 1 from jsonb_array_elements_text(t.actions) as action where action <> 'notify'))))
  into room
  from unnest(limits, enforcements, alerts, currents, reserveds) as x(amount, enforcement, alerts, current_amount, reserved_amount);

  slice := case when room is null then p_wanted else least(p_wanted, trunc(room / 8, 10)) end;
  if slice < p_least then return; end if;

  foreach tree in array trees loop
    update budget_status_cache c set reserved_amount = c.reserved_amount + slice
    where c.root_id = tree
      and (c.budget_id, c.period_start) in (select x.b, x.s from unnest(p_budgets, p_starts, roots) as x(b, s, root) where x.root = tree);
  end loop;
  insert into budget_reservations (id, budget_id, root_id, period_start, amount, scope_matched, scope_rank, currency, request_id, expires_at, lease,
                                   trees)
  select p_lease_id, x.b, x.root, x.s, slice, x.m, x.r, p_currency, 'lease:' || p_lease_id, now() + p_ttl, true,
         array(select distinct y.root from unnest(roots) as y(root) order by 1) -- the trees of its rows (migration 012)
  from unnest(p_budgets, p_starts, p_matched, p_ranks, roots) as x(b, s, m, r, root)
  on conflict (id, budget_id, root_id) do update set amount = budget_reservations.amount + excluded.amount, expires_at = excluded.expires_at;

  -- each window's numbers before this slice, read under the lock above
  return query
    select slice, x.b, x.amount, x.enforcement, x.current_amount, x.reserved_amount, budget_definitions_version()
    from unnest(p_budgets, limits, enforcements, currents, reserveds) as x(b, amount, enforcement, current_amount, reserved_amount);
end $$;

-- Gives back part of a lease that no admitted call can still use. A return is final when every call
-- admitted from the lease has settled: then all the lease still holds goes back and its rows are gone.
-- Before that the rows stay, at 0 if need be, for the settlements to come.
--
-- A give-back is applied once. Its process numbers each lease's returns (p_return, counted up from 1) and
-- sends a retry with the same number: a row whose returns_applied is p_return or more has had it (the
-- first try committed and only its reply was lost) and is left alone. A process sends one return of a
-- lease at a time (lib/gate/leases.ts); should a lower number still arrive after a higher one (an attempt
-- given up on that commits late), it is ignored: its room stays held until the final return, the safe
-- direction. A final return deletes the rows: sent again, it finds none and does nothing.
drop function if exists budget_lease_return(uuid, numeric, boolean, integer);
create or replace function budget_lease_return(p_lease_id uuid, p_amount numeric, p_final boolean, p_return integer,
                                    p_roots uuid[] default null, p_root uuid default '00000000-0000-0000-0000-000000000000') returns void
language plpgsql set lock_timeout = '5s' as $$
declare
  trees uuid[];
  tree uuid;
  applies boolean := p_final;
  held_budgets uuid[];
  held_starts timestamptz[];
begin
  -- the trees: as named, else those of the lease's rows (on Citus, a read on every shard)
  trees := budget_reservation_trees(p_roots, array[p_lease_id]);
  -- the lock order (locks.sql): the lease's rows, then the window rows
  perform budget_lock_reservations(array[p_lease_id], null, trees);
  foreach tree in array trees loop
    select held_budgets || array_agg(r.budget_id), held_starts || array_agg(r.period_start),
           applies or coalesce(bool_or(r.returns_applied < p_return), false)
    into held_budgets, held_starts, applies
    from budget_reservations r where r.root_id = tree and r.id = p_lease_id;
  end loop;
  if not applies then
    return; -- applied before (or no rows)
  end if;
  perform budget_lock_windows(held_budgets, held_starts, null, trees);
  -- each row that has not had this return yet (a final one: every row)
  foreach tree in array trees loop
    update budget_status_cache c
    set reserved_amount = greatest(c.reserved_amount - case when p_final then r.amount else least(p_amount, r.amount) end, 0)
    from budget_reservations r
    where c.root_id = tree and r.root_id = tree and r.id = p_lease_id and r.budget_id = c.budget_id and r.period_start = c.period_start
      and (p_final or r.returns_applied < p_return);
    if p_final then
      delete from budget_reservations r where r.root_id = tree and r.id = p_lease_id;
    else
      update budget_reservations r set amount = greatest(r.amount - p_amount, 0), returns_applied = p_return
      where r.root_id = tree and r.id = p_lease_id and r.returns_applied < p_return;
    end if;
  end loop;
end $$;

-- Keeps a lease alive while its process is: its rows expire p_ttl from now. Its rows are locked in the lock
-- order (locks.sql) before they are written: an update alone locks them in whatever order its plan reads them,
-- and deadlocked against a settlement or a return of the same lease. The lock wait is bounded as a take's is.
-- Returns whether the lease has rows (none: not taken yet, or expired and swept).
create or replace function budget_lease_renew(p_lease_id uuid, p_ttl interval,
                                   p_roots uuid[] default null, p_root uuid default '00000000-0000-0000-0000-000000000000') returns boolean
language plpgsql set lock_timeout = '2s' as $$
declare
  trees uuid[];
  tree uuid;
  renewed integer := 0;
  n integer;
begin
  trees := budget_reservation_trees(p_roots, array[p_lease_id]);
  perform budget_lock_reservations(array[p_lease_id], null, trees);
  foreach tree in array trees loop
    update budget_reservations r set expires_at = now() + p_ttl where r.root_id = tree and r.id = p_lease_id;
    get diagnostics n = row_count;
    renewed := renewed + n;
  end loop;
  return renewed > 0;
end $$;
