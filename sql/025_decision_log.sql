-- The decision log: each refusal, clamp and downgrade the gate made, with what it read when it decided
-- (the binding budget's limit, settled and reserved spend at that instant), so a refusal can be
-- explained afterwards. Written in batches off the response path (lib/gate/decision-log.ts), read
-- newest first a page at a time (keyset on (at, id)), and deleted past the operator's retention.
-- Nothing references it: a deleted budget's decisions keep its id and name.
create table budget_decision_log (
  id              bigint generated always as identity primary key,
  -- When the gate decided (not when the batch was written).
  at              timestamptz not null,
  request_id      text not null,
  api             text not null check (api in ('chat', 'responses', 'messages', 'embeddings')),
  outcome         text not null check (outcome in ('refused', 'clamped', 'downgraded')),
  code            text not null,
  -- The caller's scopes as the gate resolved them, and its tags.
  organization_id text,
  team_id         text,
  user_id         text,
  project_id      text,
  tags            jsonb,
  model           text not null,
  -- The model the caller asked for, when auto-downgrade swapped it.
  requested_model text,
  estimate        numeric(28, 10) not null,
  currency        text not null,
  -- The binding budget as read at decision time; all null when none binds. A rate limit refuses before
  -- any money is read: its budget is named, its numbers are null.
  budget_id       uuid,
  budget_name     text,
  budget_limit    numeric(28, 10),
  budget_current  numeric(28, 10),
  budget_reserved numeric(28, 10),
  check ((budget_id is null) = (budget_name is null) and (budget_id is not null or budget_limit is null))
);

-- Newest first, and the retention sweep (oldest first by at); a budget's page (the dashboard's).
-- Filters by caller or code read the time index and filter: every index more is one more write per
-- refusal on the database the gate uses, and the log is bounded by its retention.
create index budget_decision_log_at on budget_decision_log (at desc, id desc);
create index budget_decision_log_budget on budget_decision_log (budget_id, at desc, id desc) where budget_id is not null;
