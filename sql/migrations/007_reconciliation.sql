-- Reconciliation with the provider's bill (docs/provider-costs.md#reconciliation): which budget a provider's
-- project or workspace is, the corrections a true-up wrote, and the drifts alerted. The comparison itself is
-- sql/functions/reconciliation.sql.

-- A provider dimension named as a budget: OpenAI's project id, Anthropic's workspace id ('' for the default
-- workspace), a CSV's project, or a whole account. kind 'project' and 'workspace' both read the report's
-- project column (the name says which provider's word it is); 'account' reads the account column. One
-- provider per budget: two providers' bills summed against one budget could not be trued up day by day.
create table budget_recon_mappings (
  id          bigint generated always as identity primary key,
  provider    text not null check (provider ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
  kind        text not null check (kind in ('project', 'workspace', 'account')),
  value       text not null check (length(value) <= 256),
  budget_id   uuid not null references budget_definitions (id),
  -- Whether POST /reconciliation/true-up may write the invoice's difference into the budget.
  true_up     boolean not null default false,
  created_at  timestamptz not null default clock_timestamp(),
  updated_at  timestamptz not null default clock_timestamp(),
  constraint budget_recon_mappings_dimension unique (provider, kind, value)
);
create index budget_recon_mappings_budget on budget_recon_mappings (budget_id);

-- A usage record a true-up wrote: the invoice's difference for one provider, day and budget, never a hold.
-- Its amount may be negative (the provider billed less than the gate recorded) or, once trued up again to no
-- difference, zero: the records' amount check admits a correction of any sign.
alter table budget_usage_records add column correction boolean not null default false;
alter table budget_usage_records drop constraint budget_usage_records_amount_check;
alter table budget_usage_records add constraint budget_usage_records_amount_check check (amount > 0 or correction) not valid;
alter table budget_usage_records validate constraint budget_usage_records_amount_check;

-- One correction per provider, day and budget: trued up again, the same row takes the new amount (the change
-- is one more correction record, reconciliation.sql), so a true-up run twice stores nothing new. usage_id is
-- the correction's first record.
create table budget_recon_corrections (
  id          bigint generated always as identity primary key,
  provider    text not null,
  day         date not null,
  budget_id   uuid not null references budget_definitions (id),
  usage_id    uuid not null references budget_usage_records (id),
  -- In the budget's currency; the usage record's amount.
  amount      numeric(28, 10) not null,
  created_at  timestamptz not null default clock_timestamp(),
  updated_at  timestamptz not null default clock_timestamp(),
  constraint budget_recon_corrections_once unique (provider, day, budget_id)
);

-- A drift past the tolerance, alerted once per provider, day and budget (the unique key settles any race
-- between the evaluation after a collection and one asked for through the API).
create table budget_recon_drifts (
  id             uuid primary key default gen_random_uuid(),
  provider       text not null,
  day            date not null,
  budget_id      uuid not null references budget_definitions (id),
  currency       text not null,
  provider_amount numeric(28, 10) not null,
  recorded_amount numeric(28, 10) not null,
  difference     numeric(28, 10) not null,
  -- difference / recorded, 6 decimal places; null when the gate recorded nothing that day.
  ratio          numeric,
  tolerance      numeric not null,
  alerted_at     timestamptz not null default clock_timestamp(),
  constraint budget_recon_drifts_once unique (provider, day, budget_id)
);

-- A drift's notifications go through the outbox as a crossing's and a digest's do: one row per drift and channel.
alter table budget_notification_outbox add column drift_id uuid references budget_recon_drifts (id);
alter table budget_notification_outbox drop constraint budget_notification_outbox_one_event;
alter table budget_notification_outbox add constraint budget_notification_outbox_one_event check (num_nonnulls(alert_id, digest_id, drift_id) = 1);
alter table budget_notification_outbox add constraint budget_notification_outbox_drift_channel unique (drift_id, channel);

-- Mapping changes and true-ups are audited on the mapping's budget.
alter table budget_audit_log drop constraint budget_audit_log_action_check;
alter table budget_audit_log add constraint budget_audit_log_action_check
  check (action in ('create', 'update', 'delete', 'approve', 'acknowledge', 'refresh-cache', 'set-exchange-rate', 'test-channel', 'correct-provider-cost',
                    'create-cost-mapping', 'update-cost-mapping', 'delete-cost-mapping', 'true-up')) not valid;
alter table budget_audit_log validate constraint budget_audit_log_action_check;
