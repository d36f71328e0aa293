-- Retries that must not act twice. A statement whose reply is lost (a cut connection) may have committed,
-- and the process sends it again:
-- - A lease give-back (budget_lease_return) carries the lease's return number, counted up by its process
--   per lease; a row remembers the last number it applied, and a give-back it has seen is left alone.
--   Before, a give-back sent again gave back twice: the running calls' cover went, and a hard budget could
--   end over its limit.
-- - A settlement's usage record id is made by the process (budget_settle_batch, budget_settle_leased), so a
--   settlement sent again can tell its own record from another reservation's of the same request.
-- The functions' new definitions are in sql/functions/; the old signatures go here, so no call finds them.
alter table budget_reservations add column returns_applied integer not null default 0;
drop function if exists budget_lease_return(uuid, numeric, boolean);
drop function if exists budget_settle_batch(uuid[], numeric[], text[], text[], jsonb[]);
drop function if exists budget_settle_leased(uuid[], text[], numeric[], text[], text[], jsonb[], timestamptz[], interval);
