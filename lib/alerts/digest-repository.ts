// SQL for scheduled digests: which are due, the numbers of a digest period, the digest row with its
// notifications (one statement), and the outbox rows of digests that are due for delivery.
import { normalizeMoney, type Money } from '../kernel/money.js'
import type { BudgetDigest } from '../kernel/schemas.js'
import type { Db } from '../kernel/database/db.js'
import { claimedOf, claimOutboxRow, type ClaimChannels, type ClaimedColumns, type OutboxClaim } from './alert-repository.js'

/** A budget whose latest ended digest period has no digest yet. */
export interface DueDigest {
  budgetId: string
  every: BudgetDigest['every']
  channels: string[]
  periodStart: Date
  periodEnd: Date
  /** The local date (YYYY-MM-DD) the period begins on: what makes a digest once, whatever the budget's zone becomes (budget_digests.first_day). */
  firstDay: string
  /** The zone the period was found in. */
  timezone: string
}

export interface TopSpender {
  /** The model (metadata.modelId) or the caller (metadata.userId); null for usage without one. */
  key: string | null
  total: Money
  count: number
}

/** A digest period's numbers, all as of the period's end. */
export interface DigestNumbers {
  spent: Money
  usageCount: number
  /** Spend in the budget's window (the one the digest period ends in) up to the digest period's end. */
  windowSpent: Money
  projectedTotal: Money
  /** The window's burn rate as of the period's end (budget_burn_rate, sql/functions/forecast.sql). */
  burnRate: Money
  topModels: TopSpender[]
  topUsers: TopSpender[]
}

export interface DigestValues extends DigestNumbers {
  budgetId: string
  /** Its tree, under which the digest and its notifications are stored. */
  rootId: string
  firstDay: string
  every: BudgetDigest['every']
  channels: string[]
  periodStart: Date
  periodEnd: Date
  timezone: string
  windowStart: Date
  windowEnd: Date
  limit: Money
  percentUsed: number
}

export interface DigestRecord extends Omit<DigestValues, 'channels' | 'rootId' | 'periodStart' | 'periodEnd' | 'windowStart' | 'windowEnd'> {
  id: string
  periodStart: string
  periodEnd: string
  windowStart: string
  windowEnd: string
  /** The digest period's first and last local days (YYYY-MM-DD, in its timezone). */
  firstDay: string
  lastDay: string
  createdAt: string
}

export interface DueDigestNotification extends OutboxClaim {
  digest: DigestRecord
  budget: { id: string, name: string, currency: string, scopeType: string, scopeId: string }
}

interface DigestRow {
  id: string
  budget_id: string
  every: BudgetDigest['every']
  period_start: Date
  period_end: Date
  timezone: string
  first_day: string
  last_day: string
  spent: string
  usage_count: string
  window_start: Date
  window_end: Date
  window_spent: string
  limit_amount: string
  percent_used: string
  burn_rate: string
  projected_total: string
  top_models: TopSpender[]
  top_users: TopSpender[]
  created_at: Date
}

const canonicalTop = (rows: TopSpender[]): TopSpender[] => rows.map((row) => ({ key: row.key, total: normalizeMoney(row.total), count: row.count }))

export function createDigestRepository (sql: Db) {
  /**
   * The top `most` keys of the budget's usage in [from, to), by spend (a tie by key), money as text. The budget's
   * allocations are read first, in its tree, then their records: a record's allocations may be in other trees than
   * it, and on Citus the allocations are then one result that each shard of the records is joined to.
   */
  const top = async (key: ReturnType<typeof sql>, budget: { id: string, rootId: string }, from: Date, to: Date, most: number): Promise<TopSpender[]> => {
    const [row] = await sql<Array<{ top: TopSpender[] }>>`
      with a as materialized (
        select a.usage_id, a.amount from budget_usage_allocations a
        where a.root_id = ${budget.rootId} and a.budget_id = ${budget.id} and a.occurred_at >= ${from} and a.occurred_at < ${to}
      )
      select coalesce(jsonb_agg(jsonb_build_object('key', t.key, 'total', t.total::text, 'count', t.count) order by t.total desc, t.key nulls last), '[]') as top
      from (
        select ${key} as key, sum(a.amount) as total, count(*)::int as count
        from a join budget_usage_records u on u.id = a.usage_id
        group by 1 order by 2 desc, 1 nulls last limit ${most}
      ) t`
    return canonicalTop(row!.top)
  }

  return {
    /**
     * Live budgets with a digest whose latest ended digest period (the local day, or the ISO week from
     * Monday, before the one that holds `now`, in the budget's timezone) has no digest yet, and which
     * the budget was running in. Only the latest: a digest missed while no process ran is not sent late.
     * A period is known by the local date it begins on: after a zone change, a date digested already is not due again.
     */
    async listDue (now: Date, limit: number): Promise<DueDigest[]> {
      return await sql<DueDigest[]>`
        select b.id as "budgetId", b.digest_every as every, b.digest_channels as channels,
               p.period_start as "periodStart", p.period_end as "periodEnd", to_char(p.first_day, 'YYYY-MM-DD') as "firstDay", b.timezone
        from budget_definitions b
        cross join lateral (select budget_calendar_start(b.digest_every, ${now}::timestamptz at time zone b.timezone, 1) as local_end) e
        cross join lateral (select e.local_end - case b.digest_every when 'daily' then interval '1 day' else interval '7 days' end as local_start) s
        cross join lateral (
          select s.local_start at time zone b.timezone as period_start, e.local_end at time zone b.timezone as period_end, s.local_start::date as first_day
        ) p
        where b.digest_every is not null and b.deleted_at is null
          and p.period_end > b.start_date and (b.end_date is null or p.period_start < b.end_date)
          and not exists (select 1 from budget_digests d where d.root_id = b.root_id and d.budget_id = b.id and d.every = b.digest_every and d.first_day = p.first_day)
        order by b.id
        limit ${limit}`
    },

    /**
     * The digest period's numbers, as of its end: its spend and the window's, read in the budget's tree; the forecast
     * (budget_forecast_in_tree) and the burn rate (budget_burn_rate, sql/functions/forecast.sql) on the window's spend;
     * the top models and callers.
     */
    async periodNumbers (budget: { id: string, rootId: string }, period: { periodStart: Date, periodEnd: Date }, window: { periodStart: Date, periodEnd: Date }, most: number): Promise<DigestNumbers> {
      const [sums] = await sql<Array<{ spent: string, usageCount: number, windowSpent: string }>>`
        with period as (
          select coalesce(sum(a.amount), 0) as spent, count(*)::int as usage_count from budget_usage_allocations a
          where a.root_id = ${budget.rootId} and a.budget_id = ${budget.id} and a.occurred_at >= ${period.periodStart} and a.occurred_at < ${period.periodEnd}
        ),
        window_spend as (
          select coalesce(sum(a.amount), 0) as spent from budget_usage_allocations a
          where a.root_id = ${budget.rootId} and a.budget_id = ${budget.id} and a.occurred_at >= ${window.periodStart}
            and a.occurred_at < least(${window.periodEnd}::timestamptz, ${period.periodEnd}::timestamptz)
        )
        select p.spent::text as spent, p.usage_count as "usageCount", w.spent::text as "windowSpent" from period p cross join window_spend w`
      const numbers = sums!
      const [projection] = await sql<Array<{ projectedTotal: string, burnRate: string }>>`
        select budget_forecast_in_tree(${budget.rootId}, ${budget.id}, ${window.periodStart}, ${window.periodEnd}, ${numbers.windowSpent}::numeric, ${period.periodEnd})::text as "projectedTotal",
               budget_burn_rate(${budget.id}, ${window.periodStart}, ${window.periodEnd}, ${numbers.windowSpent}::numeric, ${period.periodEnd})::text as "burnRate"`
      return {
        spent: normalizeMoney(numbers.spent),
        usageCount: numbers.usageCount,
        windowSpent: normalizeMoney(numbers.windowSpent),
        projectedTotal: normalizeMoney(projection!.projectedTotal),
        burnRate: normalizeMoney(projection!.burnRate),
        topModels: await top(sql`u.model_id`, budget, period.periodStart, period.periodEnd, most),
        topUsers: await top(sql`u.user_id`, budget, period.periodStart, period.periodEnd, most)
      }
    },

    /**
     * The digest, and one notification per channel, in one statement; once per budget, frequency and
     * period's first local date (the unique key: another process that made it first wins, and this one
     * queues nothing; so does a period of the same date in another zone).
     * Returns the digest's id, or null when it existed already.
     */
    async insertDigest (values: DigestValues): Promise<string | null> {
      const [row] = await sql<Array<{ id: string }>>`
        with inserted as (
          insert into budget_digests (budget_id, root_id, every, period_start, period_end, first_day, timezone, spent, usage_count, window_start, window_end,
                                      window_spent, limit_amount, percent_used, burn_rate, projected_total, top_models, top_users)
          values (${values.budgetId}, ${values.rootId}, ${values.every}, ${values.periodStart}, ${values.periodEnd}, ${values.firstDay}::date, ${values.timezone}, ${values.spent}, ${values.usageCount},
                  ${values.windowStart}, ${values.windowEnd}, ${values.windowSpent}, ${values.limit}, ${values.percentUsed}, ${values.burnRate},
                  ${values.projectedTotal}, ${JSON.stringify(values.topModels)}::text::jsonb, ${JSON.stringify(values.topUsers)}::text::jsonb)
          on conflict (budget_id, every, first_day, root_id) do nothing
          returning id
        ),
        queued as (
          insert into budget_notification_outbox (root_id, digest_id, channel)
          select ${values.rootId}::uuid, i.id, channel from inserted i cross join unnest(${values.channels}::text[]) as channel
        )
        select id from inserted`
      return row?.id ?? null
    },

    /** Claims the next due delivery of a digest (of `channels`, when given) until `claimMs` from now, but none in `tried` (claimOutboxRow, repository/alerts.ts); null when none is due. */
    async claimDueDigest (claimMs: number, tried: string[] = [], channels?: ClaimChannels): Promise<DueDigestNotification | null> {
      return await claimOutboxRow(sql, 'digest', claimMs, tried, channels, async (claimed, rootId) => {
        const [row] = await sql<Array<DigestRow & ClaimedColumns>>`
          with ${claimed}
          select claimed.id as outbox_id, claimed.claim_id, claimed.channel, claimed.attempts,
                 d.id, d.budget_id, d.every, d.period_start, d.period_end, d.timezone,
                 to_char(d.period_start at time zone d.timezone, 'YYYY-MM-DD') as first_day,
                 to_char((d.period_end at time zone d.timezone) - interval '1 day', 'YYYY-MM-DD') as last_day,
                 d.spent::text as spent, d.usage_count::text as usage_count, d.window_start, d.window_end, d.window_spent::text as window_spent,
                 d.limit_amount::text as limit_amount, d.percent_used::text as percent_used, d.burn_rate::text as burn_rate,
                 d.projected_total::text as projected_total, d.top_models, d.top_users, d.created_at,
                 b.name as budget_name, b.currency, b.scope_type, b.scope_id
          from claimed join budget_digests d on d.root_id = ${rootId} and d.id = claimed.digest_id
          join budget_definitions b on b.root_id = ${rootId} and b.id = d.budget_id`
        return row === undefined ? undefined : { ...claimedOf(row, rootId), digest: toDigest(row) }
      })
    }
  }
}

function toDigest (row: DigestRow): DigestRecord {
  return {
    id: row.id,
    budgetId: row.budget_id,
    every: row.every,
    periodStart: row.period_start.toISOString(),
    periodEnd: row.period_end.toISOString(),
    timezone: row.timezone,
    firstDay: row.first_day,
    lastDay: row.last_day,
    spent: normalizeMoney(row.spent),
    usageCount: Number(row.usage_count),
    windowStart: row.window_start.toISOString(),
    windowEnd: row.window_end.toISOString(),
    windowSpent: normalizeMoney(row.window_spent),
    limit: normalizeMoney(row.limit_amount),
    percentUsed: Number(row.percent_used),
    burnRate: normalizeMoney(row.burn_rate),
    projectedTotal: normalizeMoney(row.projected_total),
    topModels: canonicalTop(row.top_models),
    topUsers: canonicalTop(row.top_users),
    createdAt: row.created_at.toISOString()
  }
}

export type DigestRepository = ReturnType<typeof createDigestRepository>
