-- A test notification an operator sends (POST {prefix}/channels/{name}/test) is in the audit log beside
-- the changes: like an exchange rate set, it is no budget's (budget_id null); after holds the channel
-- and the outcome.
alter table budget_audit_log drop constraint budget_audit_log_action_check;
alter table budget_audit_log add constraint budget_audit_log_action_check
  check (action in ('create', 'update', 'delete', 'approve', 'acknowledge', 'refresh-cache', 'set-exchange-rate', 'test-channel'));
alter table budget_audit_log drop constraint budget_audit_log_subject;
alter table budget_audit_log add constraint budget_audit_log_subject check ((budget_id is null) = (action in ('set-exchange-rate', 'test-channel')));
