-- Each reservation row names the trees of all its reservation's rows (its line's), in root order. A
-- settlement, a lease's return or renewal that is told the trees of its reservations checks them against
-- this: told too few (or a row that has none, written by an instance of the version before), it reads them
-- from the rows instead (sql/functions/locks.sql, budget_reservation_trees). On Citus that check reads one
-- tree's rows at a time, where reading the trees from the rows by id alone reaches every shard.
alter table budget_reservations add column if not exists trees uuid[];
