-- Alerts: each threshold crossing recorded once per budget, period and threshold, across every gateway
-- process, with its notifications queued in the same transaction.

create table budget_alert_history (
  id              uuid primary key default gen_random_uuid(),
  budget_id       uuid not null references budget_definitions (id),
  period_start    timestamptz not null,
  threshold       numeric not null,
  basis           text not null check (basis in ('current', 'projected')),
  actions         text[] not null,
  -- The spend (or projection) that crossed, and the amount it was measured against.
  spent           numeric(28, 10) not null,
  limit_amount    numeric(28, 10) not null,
  crossed_at      timestamptz not null default now(),
  acknowledged_by text,
  acknowledged_at timestamptz,
  unique (budget_id, period_start, threshold, basis)
);

-- One delivery per crossing and channel. A deliverer claims due rows with SKIP LOCKED, so processes
-- share the work, and marks a row delivered in the transaction that saw the endpoint's 2xx.
create table budget_notification_outbox (
  id              uuid primary key default gen_random_uuid(),
  alert_id        uuid not null references budget_alert_history (id),
  channel         text not null,
  status          text not null default 'pending' check (status in ('pending', 'delivered', 'failed')),
  attempts        integer not null default 0,
  next_attempt_at timestamptz not null default now(),
  last_error      text,
  delivered_at    timestamptz,
  unique (alert_id, channel)
);
create index budget_notification_outbox_due on budget_notification_outbox (next_attempt_at) where status = 'pending';

-- Whenever a window's spend grows, record each alert threshold it has reached and not recorded yet.
-- A projected alert compares the projection (spend + spend per elapsed time x time left, elapsed
-- floored at one hour: the rule of lib/usage/status-rules.ts) instead of the spend. The cache row
-- is locked by the statement that grew it, and the unique key settles any race: one row per crossing.
create function budget_status_after_update() returns trigger language plpgsql as $$
declare
  budget record;
  alert jsonb;
  alert_basis text;
  measured numeric;
  elapsed numeric;
  time_left numeric;
  crossing_id uuid;
begin
  select b.amount, b.alerts into budget from budget_definitions b where b.id = new.budget_id;
  for alert in select value from jsonb_array_elements(budget.alerts) loop
    alert_basis := coalesce(alert ->> 'basis', 'current');
    measured := new.current_amount;
    if alert_basis = 'projected' then
      elapsed := greatest(extract(epoch from least(now(), new.period_end) - new.period_start), 3600);
      time_left := greatest(extract(epoch from new.period_end - greatest(now(), new.period_start)), 0);
      measured := new.current_amount + new.current_amount * time_left / elapsed;
    end if;
    continue when measured * 100 < (alert ->> 'threshold')::numeric * budget.amount;

    crossing_id := null;
    insert into budget_alert_history (budget_id, period_start, threshold, basis, actions, spent, limit_amount)
    values (new.budget_id, new.period_start, (alert ->> 'threshold')::numeric, alert_basis,
            array(select jsonb_array_elements_text(alert -> 'actions')), round(measured, 10), budget.amount)
    on conflict (budget_id, period_start, threshold, basis) do nothing
    returning budget_alert_history.id into crossing_id;
    if crossing_id is not null then
      insert into budget_notification_outbox (alert_id, channel)
      select crossing_id, channel from jsonb_array_elements_text(coalesce(alert -> 'notificationChannels', '[]'::jsonb)) as channel
      on conflict (alert_id, channel) do nothing;
    end if;
  end loop;
  return null;
end $$;

create trigger budget_status_cache_alerts after update of current_amount on budget_status_cache
for each row when (new.current_amount > old.current_amount) execute function budget_status_after_update();
