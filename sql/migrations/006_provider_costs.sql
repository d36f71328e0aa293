-- What the providers bill, as their own cost reports say it (docs/provider-costs.md): one row per cost bucket,
-- collected from OpenAI's Costs API and Anthropic's Cost Report, or imported from CSV. A bucket is a day of one
-- account's cost for one combination of the report's dimensions; the dimensions a report does not give are ''
-- (never null, so that the natural key below is a plain unique constraint). Collecting a bucket again with
-- the same amount changes nothing; with another amount the row takes it, and the audit log keeps the old one
-- (action correct-provider-cost). The source is part of the key: a CSV file never overwrites what a collector
-- collected, and the reconciliation that reads these rows decides which source it trusts.
create table budget_provider_costs (
  id              bigint generated always as identity primary key,
  source          text not null check (source in ('openai', 'anthropic', 'csv')),
  provider        text not null check (provider ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
  -- The organization the report is of (the operator's name for it when the provider's key does not say).
  account         text not null check (length(account) between 1 and 256),
  -- The UTC day the bucket starts; every report here is in daily buckets.
  bucket_date     date not null,
  -- OpenAI's project_id, Anthropic's workspace_id ('' for the default workspace), the CSV's project.
  project         text not null default '' check (length(project) <= 256),
  -- OpenAI's line_item, Anthropic's description, the CSV's line_item.
  line_item       text not null default '' check (length(line_item) <= 512),
  model           text not null default '' check (length(model) <= 256),
  -- Anthropic's cost_type, token_type, service_tier and context_window; '' elsewhere.
  cost_type       text not null default '' check (length(cost_type) <= 64),
  token_type      text not null default '' check (length(token_type) <= 64),
  service_tier    text not null default '' check (length(service_tier) <= 64),
  context_window  text not null default '' check (length(context_window) <= 64),
  currency        text not null check (currency ~ '^[A-Z]{3}$'),
  -- In the currency's major unit (dollars, not cents), exactly as the report gave it: no scale, no rounding.
  amount          numeric not null,
  collected_at    timestamptz not null default clock_timestamp(),
  -- When a later collection or import last changed the amount; null while it never has.
  corrected_at    timestamptz,
  constraint budget_provider_costs_bucket unique
    (source, provider, account, bucket_date, project, line_item, model, cost_type, token_type, service_tier, context_window, currency)
);
-- The admin list: by day, then id (keyset), optionally one provider's.
create index budget_provider_costs_by_date on budget_provider_costs (bucket_date, id);
create index budget_provider_costs_by_provider on budget_provider_costs (provider, bucket_date, id);

-- Where each collector resumes: the window of the run under way (or the last one) and the provider's page
-- token within it. A page is stored in the same transaction that moves the token past it, so a run that
-- fails leaves the token at the page that failed, and the next run asks for that page again.
create table budget_provider_cost_cursors (
  source             text not null check (source in ('openai', 'anthropic')),
  account            text not null check (length(account) between 1 and 256),
  window_start       timestamptz not null,
  window_end         timestamptz not null check (window_end > window_start),
  -- The provider's next_page token; null once the window was read to its end.
  next_page          text check (length(next_page) <= 4096),
  pages              bigint not null default 0,
  -- The end of the last window read to its end: the next run starts no later than this.
  completed_through  timestamptz,
  last_error         text,
  updated_at         timestamptz not null default clock_timestamp(),
  primary key (source, account)
);

-- A corrected bucket is audited without a budget, as exchange rates and channel tests are.
alter table budget_audit_log drop constraint budget_audit_log_action_check;
alter table budget_audit_log add constraint budget_audit_log_action_check
  check (action in ('create', 'update', 'delete', 'approve', 'acknowledge', 'refresh-cache', 'set-exchange-rate', 'test-channel', 'correct-provider-cost')) not valid;
alter table budget_audit_log validate constraint budget_audit_log_action_check;
alter table budget_audit_log drop constraint budget_audit_log_subject;
alter table budget_audit_log add constraint budget_audit_log_subject
  check ((budget_id is null) = (action in ('set-exchange-rate', 'test-channel', 'correct-provider-cost'))) not valid;
alter table budget_audit_log validate constraint budget_audit_log_subject;
