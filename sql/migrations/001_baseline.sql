-- The baseline: every table, column, index and constraint of @relaycore/budgets, as the 24 migrations
-- before it (001 to 026, folded here while nothing was published) left them. Functions, trigger
-- functions and triggers are not here: each has one file under sql/functions/, applied after the
-- migrations whenever its text changes (lib/kernel/database/migrate.ts; docs/data-model.md says how).
--
-- Money is numeric(28, 10) everywhere: exact, 18 digits before the point and 10 after (lib/kernel/money.ts).
-- Currencies are ISO 4217 codes.

-- Budget definitions ------------------------------------------------------------------------------------

-- One row per budget, in a tree through parent_id.
create table budget_definitions (
  id                       uuid primary key default gen_random_uuid(),
  name                     text not null check (length(name) between 1 and 200),
  description              text,
  scope_type               text not null check (scope_type in ('organization', 'team', 'user', 'project')),
  scope_id                 text not null check (length(scope_id) between 1 and 200),
  parent_id                uuid references budget_definitions (id),
  amount                   numeric(28, 10) not null check (amount > 0),
  currency                 text not null check (currency ~ '^[A-Z]{3}$'),
  period                   text not null check (period in ('daily', 'weekly', 'monthly', 'quarterly', 'annual', 'custom')),
  start_date               timestamptz not null,
  end_date                 timestamptz,
  recurring                boolean not null default true,
  alerts                   jsonb not null default '[]'::jsonb check (jsonb_typeof(alerts) = 'array'),
  created_by               text,
  created_at               timestamptz not null default now(),
  updated_at               timestamptz not null default now(),
  -- Deleting archives: the row and its usage history stay for audit, reads no longer see it.
  deleted_at               timestamptz,
  -- The gate: a hard budget refuses a call that does not fit, a soft one takes it.
  enforcement              text not null default 'hard' check (enforcement in ('hard', 'soft')),
  -- Its own calendar: a time zone (IANA, from PostgreSQL's own time zone database), a fiscal year, and
  -- windows aligned either to startDate ('start') or to the calendar (local midnight, Monday, the 1st,
  -- fiscal quarters and years). sql/functions/periods.sql computes the windows.
  timezone                 text not null default 'UTC',
  fiscal_year_start_month  smallint not null default 1 check (fiscal_year_start_month between 1 and 12),
  period_alignment         text not null default 'start' check (period_alignment in ('start', 'calendar')),
  -- Model and tag budgets: a budget with filters counts, and gates, only the calls that match them all. A
  -- model pattern is an exact name or a prefix ending in '*'; tags are key/value pairs the call must carry
  -- (usage records carry them as metadata.tags). Null: matches every call (budget_matches).
  filter_models            text[] check (filter_models is null or cardinality(filter_models) between 1 and 50),
  filter_tags              jsonb check (filter_tags is null or jsonb_typeof(filter_tags) = 'object'),
  -- Request and token rate limits beside money (sql/functions/rate-limits.sql); null: not limited.
  rate_requests_per_minute integer check (rate_requests_per_minute > 0),
  rate_tokens_per_minute   bigint check (rate_tokens_per_minute > 0),
  -- Prometheus gauges (lib/metrics/metrics.ts): a budget marked metrics always has them; the others
  -- only while among the top spenders.
  metrics                  boolean not null default false,
  -- A digest: how often (a local day or an ISO week from Monday) and to which channels; null: none.
  digest_every             text check (digest_every in ('daily', 'weekly')),
  digest_channels          text[] check (digest_channels is null or cardinality(digest_channels) between 1 and 20),
  -- Near the limit the gate may clamp a call's max_tokens to what the budget can still afford instead of
  -- refusing it. Null follows the gate's nearLimit option.
  near_limit               text check (near_limit in ('refuse', 'clamp')),
  check (period <> 'custom' or end_date is not null),
  check (end_date is null or end_date > start_date),
  check (parent_id is distinct from id),
  check (period <> 'custom' or period_alignment = 'start'),
  check ((digest_every is null) = (digest_channels is null))
);
create index budget_definitions_scope on budget_definitions (scope_type, scope_id) where deleted_at is null;
create index budget_definitions_parent on budget_definitions (parent_id) where deleted_at is null;
create index budget_definitions_digest on budget_definitions (id) where digest_every is not null and deleted_at is null;

-- Every change to budget definitions bumps one version, in the change's own transaction (so no one sees
-- the new version before the change; the trigger is in sql/functions/definitions.sql). Gateway processes
-- keep budget lines in memory; each statement of the gate reports the version it saw, and a process that
-- sees a newer one than its lines were loaded at forgets them (and the leases taken under them). Writes to
-- definitions are serialized anyway (the hierarchy's advisory lock), so the one row costs nothing.
create table budget_definitions_version (
  only_row boolean primary key default true check (only_row),
  version  bigint not null default 0
);
insert into budget_definitions_version default values;

-- Usage and the status cache -----------------------------------------------------------------------------

-- Every call the gate serves is a usage record, whether or not a budget covers its caller, and so is
-- usage recorded through the API. A record without a budget (budget_id null) is the spend of a caller no
-- budget covered at the time: it has no allocations, so it counts toward no budget, and a budget created
-- later counts only what is recorded under it from its own start. Its caller's scopes, model and tags are
-- in its metadata, like every gated record's, and the reports group by them.
create table budget_usage_records (
  id                      uuid primary key default gen_random_uuid(),
  budget_id               uuid references budget_definitions (id),
  amount                  numeric(28, 10) not null check (amount > 0),
  currency                text not null check (currency ~ '^[A-Z]{3}$'),
  source                  text,
  description             text,
  metadata                jsonb not null default '{}'::jsonb check (jsonb_typeof(metadata) = 'object'),
  -- metadata.requestId or the Idempotency-Key header: one record per key, however often retried.
  idempotency_key         text,
  -- Other budgets the usage applies to besides budget_id's line (a gated call's other scopes).
  also_counts_toward      uuid[] not null default '{}',
  model_id                text generated always as (metadata ->> 'modelId') stored,
  user_id                 text generated always as (metadata ->> 'userId') stored,
  occurred_at             timestamptz not null default now(),
  recorded_at             timestamptz not null default now(),
  -- Settlements and the batch collector write their usage, allocations and window rows themselves,
  -- set-based, once per batch; the per-row usage trigger (sql/functions/usage-recording.sql) is for the
  -- other ways usage arrives, and this flag keeps it off.
  allocated_by_settlement boolean not null default false,
  -- The fingerprint of the request that stored a record the usage API keyed (lib/usage/usage-rules.ts),
  -- so a retry can be told from another request under the same key; 'legacy' for the first record under a
  -- key stored before keys were the record's (compared on amount and currency). A gated call's record
  -- (keyed by its reservation, settled once) carries none and stays outside budget_usage_records_key: the
  -- settlement functions arbitrate on (budget_id, idempotency_key).
  request_fingerprint     text,
  -- The caller's other scopes beside user_id, for reports that group by scope type.
  organization_id         text generated always as (metadata ->> 'organizationId') stored,
  team_id                 text generated always as (metadata ->> 'teamId') stored,
  project_id              text generated always as (metadata ->> 'projectId') stored,
  unique (budget_id, idempotency_key)
);
-- A key names one record across budgets, for every record the usage API stores (POST /:id/usage, POST
-- /usage/batch, recordUsage, recordModelCall): a record given by scopes lands on whichever budget its
-- scopes reach when it arrives, and a retry after a budget was created under those scopes must find it.
create unique index budget_usage_records_key on budget_usage_records (idempotency_key) where request_fingerprint is not null;
-- A retried unbudgeted record is stored once: unique (budget_id, idempotency_key) does not compare nulls.
create unique index budget_usage_records_unbudgeted_key on budget_usage_records (idempotency_key)
  where budget_id is null and idempotency_key is not null;
create index budget_usage_records_unbudgeted_time on budget_usage_records (occurred_at) where budget_id is null;
-- Spend reports read usage records by time (occurred_at in from..to), budgeted or not. Without an index
-- a week's report scans every record ever written: on 2 million records over a year, EXPLAIN ANALYZE of
-- a week by team was a parallel seq scan removing 98% of the rows (610-716 ms warm); with this index, a
-- bitmap index scan (125-137 ms). The gate's hot path writes one more index entry per record.
create index budget_usage_records_time on budget_usage_records (occurred_at);

-- Which budgets each usage counts toward: its budget and every ancestor, and the same for each budget
-- in also_counts_toward, each budget once, those whose filters it matches. Fixed when the usage is
-- recorded, so a call that applies to a user budget and a project budget under one organization counts
-- once toward the organization, and history stays what it was when a budget later moves in the tree.
-- An amount in currency A counts toward a budget in B as amount x rate(A -> B) in force at that moment,
-- rounded UP to the money scale (budget_convert), so a conversion can never let a hard budget spend more
-- than its limit; the rate is stored with the allocation, so history never changes when rates do.
create table budget_usage_allocations (
  budget_id     uuid not null references budget_definitions (id),
  usage_id      uuid not null references budget_usage_records (id),
  amount        numeric(28, 10) not null,
  occurred_at   timestamptz not null,
  -- the rate the allocation was converted at (1: the usage was in the budget's currency)
  exchange_rate numeric not null default 1,
  primary key (budget_id, usage_id)
);
-- Range sums and keyset pages per budget; amount is included so sums need not visit the heap.
create index budget_usage_allocations_window on budget_usage_allocations (budget_id, occurred_at, usage_id) include (amount);

-- The status cache, one row per budget and period window: the spend counted toward the budget in that
-- window (its own usage and its descendants'), kept current by whoever records it, so reading status
-- never sums rows; and the amount held by the gate's live reservations in that window. It is also the
-- row every writer locks for the window (the lock order: sql/functions/settlements.sql).
create table budget_status_cache (
  budget_id       uuid not null references budget_definitions (id),
  period_start    timestamptz not null,
  period_end      timestamptz not null,
  current_amount  numeric(28, 10) not null default 0,
  reserved_amount numeric(28, 10) not null default 0 check (reserved_amount >= 0),
  usage_count     bigint not null default 0,
  last_usage_at   timestamptz,
  refreshed_at    timestamptz not null default now(),
  updated_at      timestamptz not null default now(),
  primary key (budget_id, period_start)
);
-- A metrics scrape finds the current windows' rows through their end, without scanning every window a
-- budget ever had.
create index budget_status_cache_current on budget_status_cache (period_end, period_start);

-- The gate -------------------------------------------------------------------------------------------------

-- One row per gated call (or lease) and budget it applies to. The sum of a window's live rows is its
-- status cache row's reserved_amount; both change together. A lease (lease = true) is a process's slice
-- of a hot line's room, from which it admits calls in memory (sql/functions/leases.sql); its amount may
-- be drawn down to 0 while calls admitted from it are still to settle.
create table budget_reservations (
  id            uuid not null,
  budget_id     uuid not null references budget_definitions (id),
  period_start  timestamptz not null,
  amount        numeric(28, 10) not null check (amount >= 0),
  -- The budget matched one of the caller's scopes (the rest are their ancestors): usage is recorded on these.
  scope_matched boolean not null,
  scope_rank    integer not null,
  currency      text not null,
  request_id    text not null,
  created_at    timestamptz not null default now(),
  expires_at    timestamptz not null,
  lease         boolean not null default false,
  -- A hold on a budget in another currency than the call's: the estimate in the call's currency, and the
  -- rate the hold was converted at; the settlement charges the budget at the same rate.
  call_amount   numeric,
  exchange_rate numeric not null default 1,
  primary key (id, budget_id)
);
create index budget_reservations_expiry on budget_reservations (expires_at);

-- An admin's approval lifts a budget's require-approval for a stated amount and time: calls go
-- through while the budget's settled + reserved spend stays within spent_at_approval + amount.
create table budget_approvals (
  id                uuid primary key default gen_random_uuid(),
  budget_id         uuid not null references budget_definitions (id),
  period_start      timestamptz not null,
  amount            numeric(28, 10) not null check (amount > 0),
  spent_at_approval numeric(28, 10) not null,
  approved_by       text not null,
  reason            text,
  created_at        timestamptz not null default now(),
  expires_at        timestamptz not null
);
create index budget_approvals_budget on budget_approvals (budget_id, period_start);

-- A token bucket per rate-limited budget, shared by every gateway process: it holds up to a minute's
-- allowance and refills continuously at the per-minute rate (sql/functions/rate-limits.sql).
create table budget_rate_buckets (
  budget_id   uuid primary key references budget_definitions (id),
  requests    numeric not null,
  tokens      numeric not null,
  refilled_at timestamptz not null
);

-- Exchange rates -------------------------------------------------------------------------------------------

-- A history of rates, not a row per instant: one unit of from_currency is `rate` units of to_currency from
-- effective_from on. Setting a pair's rate again for the same instant adds a row: the replaced one stays,
-- and the rate in force at an instant is the one set last (the highest id) among those with the latest
-- effective_from at or before it. Allocations and holds store the rate they were converted at, so nothing
-- recorded changes. Writers of one pair are serialized (lib/currencies/exchange-rate-repository.ts), so ids follow
-- commit order. A missing rate refuses; nothing is converted at 1 unless the currencies are the same.
create table budget_exchange_rates (
  from_currency  text not null check (from_currency ~ '^[A-Z]{3}$'),
  to_currency    text not null check (to_currency ~ '^[A-Z]{3}$'),
  effective_from timestamptz not null,
  rate           numeric not null check (rate > 0),
  set_by         text,
  set_at         timestamptz not null default now(),
  id             bigint generated always as identity primary key,
  check (from_currency <> to_currency)
);
create index budget_exchange_rates_in_force on budget_exchange_rates (from_currency, to_currency, effective_from desc, id desc);

-- Alerts, digests and their notifications ------------------------------------------------------------------

-- Each threshold crossing, recorded once per budget, window, threshold and basis while it holds, across
-- every gateway process (sql/functions/alerts.sql). A crossing that no longer holds under the budget's
-- definition is resolved (resolved_at), and the row stays: the history, its deliveries, its
-- acknowledgement. A crossing that holds again after it was resolved is a new crossing.
create table budget_alert_history (
  id              uuid primary key default gen_random_uuid(),
  budget_id       uuid not null references budget_definitions (id),
  period_start    timestamptz not null,
  threshold       numeric not null,
  basis           text not null check (basis in ('current', 'projected')),
  actions         text[] not null,
  -- The spend (or projection, clamped to what money holds) that crossed, and the amount it was measured against.
  spent           numeric(28, 10) not null,
  limit_amount    numeric(28, 10) not null,
  crossed_at      timestamptz not null default now(),
  acknowledged_by text,
  acknowledged_at timestamptz,
  resolved_at     timestamptz
);
-- Only one active crossing per window, threshold and basis: the key settles any race.
create unique index budget_alert_history_active on budget_alert_history (budget_id, period_start, threshold, basis)
  where resolved_at is null;

-- One row per budget and digest period: what it said, fixed when it was made. The unique key makes it
-- once across processes; its notifications are queued in the same statement by whichever made it.
create table budget_digests (
  id              uuid primary key default gen_random_uuid(),
  budget_id       uuid not null references budget_definitions (id),
  every           text not null check (every in ('daily', 'weekly')),
  period_start    timestamptz not null,
  period_end      timestamptz not null,
  timezone        text not null,
  spent           numeric(28, 10) not null,
  usage_count     bigint not null,
  window_start    timestamptz not null,
  window_end      timestamptz not null,
  window_spent    numeric(28, 10) not null,
  limit_amount    numeric(28, 10) not null,
  percent_used    numeric not null,
  burn_rate       numeric not null,
  projected_total numeric not null,
  top_models      jsonb not null,
  top_users       jsonb not null,
  created_at      timestamptz not null default now(),
  -- A digest is keyed by the local date its period begins on (the day, or the Monday of the ISO week),
  -- not by the UTC instant, which moves when the budget's time zone does: each date is digested once, in
  -- the zone in force when its digest is made. Around a zone change a few hours of usage may fall in two
  -- digests' periods, or in none; the window's numbers come from the allocations, so no spend is lost or
  -- counted twice there. (Null only on rows that a zone change had already sent twice, before the key.)
  first_day       date,
  constraint budget_digests_once_per_date unique (budget_id, every, first_day)
);

-- One delivery per event (a crossing or a digest) and channel. A deliverer claims due rows with SKIP
-- LOCKED, so processes share the work.
create table budget_notification_outbox (
  id              uuid primary key default gen_random_uuid(),
  alert_id        uuid references budget_alert_history (id),
  channel         text not null,
  status          text not null default 'pending' check (status in ('pending', 'delivered', 'failed')),
  attempts        integer not null default 0,
  next_attempt_at timestamptz not null default now(),
  last_error      text,
  delivered_at    timestamptz,
  digest_id       uuid references budget_digests (id),
  unique (alert_id, channel),
  constraint budget_notification_outbox_one_event check (num_nonnulls(alert_id, digest_id) = 1),
  constraint budget_notification_outbox_digest_channel unique (digest_id, channel)
);
create index budget_notification_outbox_due on budget_notification_outbox (next_attempt_at) where status = 'pending';

-- The forecast ---------------------------------------------------------------------------------------------

-- Each budget's weekday profile for one local day, kept so that history is summed at most once per budget
-- and day (by the first update, status read or digest that needs it), not on every update; with the
-- snapshot it was summed under (sql/functions/forecast.sql).
create table budget_forecast_profiles (
  budget_id   uuid primary key references budget_definitions (id),
  local_day   date not null,
  timezone    text not null,
  start_date  timestamptz not null,
  days        integer not null,
  totals      numeric[] not null,
  counts      integer[] not null,
  computed_at timestamptz not null default now(),
  snapshot    pg_snapshot
);

-- A transaction that stores an allocation dated before the day it is stored on (usage recorded late, a
-- call settled after midnight) leaves a mark: the budget and its transaction id. A kept profile is read
-- only while every mark of its budget is visible in the snapshot it was summed under; a mark it cannot
-- see is an allocation it did not count, so it is summed again. Marks are inserted (one per budget and
-- transaction), never updated, and the reader only reads them: nothing waits on anything.
create table budget_forecast_backdated (
  budget_id uuid not null,
  xact      xid8 not null,
  primary key (budget_id, xact)
);

-- Logs ------------------------------------------------------------------------------------------------------

-- The audit log: every change to a budget, written in the same transaction as the change, with who made it
-- (authorize's name), when, and the request. Append-only: no route edits or deletes an entry, and the
-- database refuses to (sql/functions/audit-log.sql). Exchange-rate changes and channel tests are in it too,
-- with no budget: for a rate, the rate replaced at the same instant (or null) before and the new one after;
-- for a test, the channel and the outcome after.
create table budget_audit_log (
  id          bigint generated always as identity primary key,
  budget_id   uuid references budget_definitions (id),
  action      text not null,
  -- for an update, the fields it changed (a currency or parent change names currency or parentId)
  changes     text[] not null default '{}',
  before      jsonb,
  after       jsonb,
  actor       text not null,
  request_id  text,
  at          timestamptz not null default clock_timestamp(),
  constraint budget_audit_log_action_check
    check (action in ('create', 'update', 'delete', 'approve', 'acknowledge', 'refresh-cache', 'set-exchange-rate', 'test-channel')),
  constraint budget_audit_log_subject check ((budget_id is null) = (action in ('set-exchange-rate', 'test-channel')))
);
create index budget_audit_log_budget on budget_audit_log (budget_id, id desc);

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
