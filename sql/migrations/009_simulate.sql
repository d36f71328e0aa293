-- What-if replay: a simulation request is audited without a budget (it changes none), as exchange rates,
-- channel tests and corrected cost buckets are. The action check is written whole, with the reconciliation's
-- actions (create-cost-mapping, update-cost-mapping, delete-cost-mapping, true-up) beside simulate, so it is
-- right whichever of the two migrations a database ran last.
alter table budget_audit_log drop constraint budget_audit_log_action_check;
alter table budget_audit_log add constraint budget_audit_log_action_check
  check (action in ('create', 'update', 'delete', 'approve', 'acknowledge', 'refresh-cache', 'set-exchange-rate', 'test-channel',
                    'correct-provider-cost', 'create-cost-mapping', 'update-cost-mapping', 'delete-cost-mapping', 'true-up', 'simulate')) not valid;
alter table budget_audit_log validate constraint budget_audit_log_action_check;
alter table budget_audit_log drop constraint budget_audit_log_subject;
alter table budget_audit_log add constraint budget_audit_log_subject
  check ((budget_id is null) = (action in ('set-exchange-rate', 'test-channel', 'correct-provider-cost', 'simulate'))) not valid;
alter table budget_audit_log validate constraint budget_audit_log_subject;
