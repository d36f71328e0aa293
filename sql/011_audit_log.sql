-- The audit log (the seed's Phase 3): every change to a budget, written in the same transaction as the
-- change, with who made it (authorize's name), when, and the request. Append-only: no route edits or
-- deletes an entry, and the database refuses to.
create table budget_audit_log (
  id          bigint generated always as identity primary key,
  budget_id   uuid not null references budget_definitions (id),
  action      text not null check (action in ('create', 'update', 'delete', 'approve', 'acknowledge', 'refresh-cache')),
  -- for an update, the fields it changed (a currency or parent change names currency or parentId)
  changes     text[] not null default '{}',
  before      jsonb,
  after       jsonb,
  actor       text not null,
  request_id  text,
  at          timestamptz not null default clock_timestamp()
);
create index budget_audit_log_budget on budget_audit_log (budget_id, id desc);

create function budget_audit_log_append_only() returns trigger language plpgsql as $$
begin
  raise exception 'the budget audit log is append-only: % is refused', tg_op using errcode = 'insufficient_privilege';
end $$;
create trigger budget_audit_log_append_only before update or delete or truncate on budget_audit_log
for each statement execute function budget_audit_log_append_only();
