-- Budget definitions: one row per budget, in a tree through parent_id.
-- Money is numeric(28, 10): exact, 18 digits before the point and 10 after (lib/kernel/money.ts).
create table budget_definitions (
  id          uuid primary key default gen_random_uuid(),
  name        text not null check (length(name) between 1 and 200),
  description text,
  scope_type  text not null check (scope_type in ('organization', 'team', 'user', 'project')),
  scope_id    text not null check (length(scope_id) between 1 and 200),
  parent_id   uuid references budget_definitions (id),
  amount      numeric(28, 10) not null check (amount > 0),
  currency    text not null check (currency ~ '^[A-Z]{3}$'),
  period      text not null check (period in ('daily', 'weekly', 'monthly', 'quarterly', 'annual', 'custom')),
  start_date  timestamptz not null,
  end_date    timestamptz,
  recurring   boolean not null default true,
  alerts      jsonb not null default '[]'::jsonb check (jsonb_typeof(alerts) = 'array'),
  created_by  text,
  created_at  timestamptz not null default now(),
  updated_at  timestamptz not null default now(),
  -- Deleting archives: the row and its usage history stay for audit, reads no longer see it.
  deleted_at  timestamptz,
  check (period <> 'custom' or end_date is not null),
  check (end_date is null or end_date > start_date),
  check (parent_id is distinct from id)
);

create index budget_definitions_scope on budget_definitions (scope_type, scope_id) where deleted_at is null;
create index budget_definitions_parent on budget_definitions (parent_id) where deleted_at is null;
