-- Requests for approval and their decisions, level by level (docs/approvals.md). A caller refused by
-- require-approval files a request for an amount; the levels its budget's approval policy names decide it
-- in order; when every level it needs has approved, the approval it becomes is a budget_approvals row as
-- an admin's own approval is, and the request names it.
--
-- - Rows of a tree, as every budget table: root_id in every key (last), the key to the budget with it, so on
--   Citus a request and its decisions sit on their tree's shard (sql/citus/distribute.sql).
-- - The policy is kept as the request was filed under it: a later change to the budget's alerts does not
--   change what a request in flight needs.
-- - A request past expires_at is expired whatever its state says (nothing sweeps it); pending, approved and
--   rejected are written by the decisions.
-- - A decision is one row per level, written once: the key (root_id, request_id, level) refuses a second.
create table if not exists budget_approval_requests (
  id                  uuid not null default gen_random_uuid(),
  root_id             uuid not null,
  budget_id           uuid not null,
  amount              numeric(28, 10) not null check (amount > 0),
  reason              text,
  requested_by        text not null,
  policy              jsonb not null check (jsonb_typeof(policy) = 'object'),
  levels_required     integer not null check (levels_required between 1 and 5),
  -- the approval's own end, as the request asked it (null: an hour from the last decision)
  approval_expires_at timestamptz,
  state               text not null default 'pending' check (state in ('pending', 'approved', 'rejected')),
  created_at          timestamptz not null default now(),
  expires_at          timestamptz not null,
  decided_at          timestamptz,
  approval_id         uuid,
  primary key (id, root_id),
  foreign key (root_id, budget_id) references budget_definitions (root_id, id)
);
-- the pending requests of a budget, newest first; and those of every budget (an approver's queue)
create index if not exists budget_approval_requests_budget on budget_approval_requests (budget_id, created_at desc);
create index if not exists budget_approval_requests_pending on budget_approval_requests (created_at desc) where state = 'pending';

create table if not exists budget_approval_decisions (
  root_id     uuid not null,
  request_id  uuid not null,
  level       integer not null check (level between 1 and 5),
  decided_by  text not null,
  verdict     text not null check (verdict in ('approve', 'reject')),
  comment     text,
  decided_at  timestamptz not null default now(),
  primary key (request_id, level, root_id),
  foreign key (root_id, request_id) references budget_approval_requests (root_id, id)
);

-- Filing a request and deciding a level are audited on the request's budget.
alter table budget_audit_log drop constraint budget_audit_log_action_check;
alter table budget_audit_log add constraint budget_audit_log_action_check
  check (action in ('create', 'update', 'delete', 'approve', 'acknowledge', 'refresh-cache', 'set-exchange-rate', 'test-channel', 'correct-provider-cost',
                    'create-cost-mapping', 'update-cost-mapping', 'delete-cost-mapping', 'true-up', 'simulate', 'request-approval', 'decide-approval')) not valid;
alter table budget_audit_log validate constraint budget_audit_log_action_check;

-- Each step of a request is notified through the channels its budget's alerts name, as a crossing is: one
-- outbox row per step and channel, written in the step's own transaction. A step is the request's filing
-- (level 0) or a level's decision (its level). No key to the request: on a Citus cluster this migration
-- finds the outbox distributed already (an upgrade) and the requests table not yet, and a distributed
-- table's key cannot name a local one. Requests are never deleted.
alter table budget_notification_outbox add column approval_request_id uuid;
alter table budget_notification_outbox add column approval_level integer check (approval_level between 0 and 5);
alter table budget_notification_outbox drop constraint budget_notification_outbox_one_event;
alter table budget_notification_outbox add constraint budget_notification_outbox_one_event
  check (num_nonnulls(alert_id, digest_id, drift_id, approval_request_id) = 1 and (approval_request_id is null) = (approval_level is null)) not valid;
alter table budget_notification_outbox validate constraint budget_notification_outbox_one_event;
