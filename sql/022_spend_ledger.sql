-- The spend ledger: every call the gate serves is a usage record, whether or not a budget covers its
-- caller. A record without a budget (budget_id null) is the spend of a caller no budget covered at the
-- time: it has no allocations, so it counts toward no budget, and a budget created later counts only
-- what is recorded under it from its own start. Its caller's scopes, model and tags are in its metadata,
-- like every gated record's, and the reports group by them.
alter table budget_usage_records alter column budget_id drop not null;

-- The caller's other scopes beside user_id (002), for reports that group by scope type.
alter table budget_usage_records
  add column organization_id text generated always as (metadata ->> 'organizationId') stored,
  add column team_id         text generated always as (metadata ->> 'teamId') stored,
  add column project_id      text generated always as (metadata ->> 'projectId') stored;

-- A retried unbudgeted record is stored once: unique (budget_id, idempotency_key) does not compare nulls.
create unique index budget_usage_records_unbudgeted_key on budget_usage_records (idempotency_key)
  where budget_id is null and idempotency_key is not null;
create index budget_usage_records_unbudgeted_time on budget_usage_records (occurred_at) where budget_id is null;

-- The per-row trigger allocates a record to its budget's line; an unbudgeted record has no line.
drop trigger budget_usage_records_status on budget_usage_records;
create trigger budget_usage_records_status after insert on budget_usage_records
for each row when (not new.allocated_by_settlement and new.budget_id is not null) execute function budget_usage_after_insert();
