-- The audit log is append-only: the database refuses an update, delete or truncate of it.

create or replace function budget_audit_log_append_only() returns trigger language plpgsql as $$
begin
  raise exception 'the budget audit log is append-only: % is refused', tg_op using errcode = 'insufficient_privilege';
end $$;
create or replace trigger budget_audit_log_append_only before update or delete or truncate on budget_audit_log
for each statement execute function budget_audit_log_append_only();
