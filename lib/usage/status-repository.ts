// SQL for a budget's period window and its status cache row.
import { fromUnits, normalizeMoney, toUnits, type Money } from '../kernel/money.js'
import type { AuditContext } from '../audit/index.js'
import type { Db } from '../kernel/database/db.js'
import type { ActiveAlert, ShadowStatus } from '../kernel/schemas.js'

export type BudgetState = 'scheduled' | 'active' | 'ended'

export interface BudgetWindow {
  periodStart: Date
  periodEnd: Date
  state: BudgetState
}

export interface StatusCacheRow {
  periodEnd: Date
  currentAmount: string
  reservedAmount: string
  usageCount: number
  lastUsageAt: Date | null
  refreshedAt: Date
  updatedAt: Date
}

/** A budget's numbers now, for the metrics' gauges (raw: what is left is remainingUnits', lib/usage/status-rules.ts). */
export interface MetricBudget {
  id: string
  name: string
  scopeType: string
  scopeId: string
  currency: string
  amount: string
  currentAmount: string
  reservedAmount: string
  periodEnd: Date
  /** An active crossing of the current window has block-all: the gate refuses every call (sql/functions/alerts.sql keeps crossings following the definition). */
  blocked: boolean
}

export function createStatusRepository (sql: Db) {
  const cacheColumns = sql`
    period_end as "periodEnd", current_amount::text as "currentAmount", reserved_amount::text as "reservedAmount", usage_count::int as "usageCount",
    last_usage_at as "lastUsageAt", refreshed_at as "refreshedAt", updated_at as "updatedAt"`

  /** findWindow for many budgets and instants in one statement, in their order; null for a budget not found. */
  const findWindows = async (pairs: Array<{ budgetId: string, at: Date }>): Promise<Array<BudgetWindow | null>> => {
    if (pairs.length === 0) return []
    const rows = await sql<Array<BudgetWindow & { ord: number }>>`
      select ord, period_start as "periodStart", period_end as "periodEnd", state
      from budget_status_windows(${pairs.map((pair) => pair.budgetId)}::text[]::uuid[], ${pairs.map((pair) => pair.at.toISOString())}::text[]::timestamptz[])`
    const windows = new Array<BudgetWindow | null>(pairs.length).fill(null)
    for (const { ord, ...window } of rows) windows[ord - 1] = window
    return windows
  }

  return {
    /**
     * A shadow budget's as-if ledger in a window (budget_shadow_status_in_tree, sql/functions/shadow.sql), less the
     * spend given; `rootId`: the budget's tree, where its ledger is (on Citus, one shard).
     */
    async readShadow (rootId: string, budgetId: string, periodStart: Date, currentAmount: Money): Promise<ShadowStatus> {
      const [row] = await sql<Array<{ excluded: string, counts: Array<{ code: string, outcome: 'refused' | 'clamped' | 'downgraded', calls: number }> }>>`
        select excluded_amount::text as excluded, counts from budget_shadow_status_in_tree(${rootId}, ${budgetId}, ${periodStart})`
      const excluded = normalizeMoney(row!.excluded)
      return { asIfCurrentAmount: fromUnits(toUnits(currentAmount) - toUnits(excluded)), excludedAmount: excluded, counts: row!.counts }
    },

    /** The window's active crossings, newest first: those its budget's definition still reaches (a resolved one is history, sql/functions/alerts.sql). */
    async listActiveCrossings (budgetId: string, periodStart: Date): Promise<ActiveAlert[]> {
      const rows = await sql<Array<{ id: string, threshold: string, basis: ActiveAlert['basis'], actions: ActiveAlert['actions'], crossedAt: Date, acknowledged: boolean }>>`
        select h.id, h.threshold::text as threshold, h.basis, h.actions, h.crossed_at as "crossedAt", h.acknowledged_at is not null as acknowledged
        from budget_alert_history h
        where h.budget_id = ${budgetId} and h.period_start = ${periodStart} and h.resolved_at is null
        order by h.crossed_at desc, h.threshold desc`
      return rows.map((row) => ({ ...row, threshold: Number(row.threshold), crossedAt: row.crossedAt.toISOString() }))
    },

    /**
     * The window a budget's status speaks of at `at`: the current one while active, the first one
     * before it starts, the last one after it ends (budget_status_windows, sql/functions/periods.sql, on
     * budget_period_window: the one place periods are computed).
     */
    async findWindow (budgetId: string, at: Date): Promise<BudgetWindow | null> {
      return (await findWindows([{ budgetId, at }]))[0] ?? null
    },

    findWindows,

    /**
     * The budgets marked `metrics: true` and the `top` spenders, with their current window's numbers,
     * from the status cache only (a window without a row yet has spent nothing through the cache: 0).
     * `within`: only these budgets (a scoped reader's area), the top spenders among them.
     */
    async listMetricBudgets (top: number, within?: readonly string[]): Promise<MetricBudget[]> {
      const among = within === undefined ? sql`` : sql`and b.id = any (${within}::uuid[])`
      // Every tree's budgets: each join names the root (on Citus, one shard's rows meet), the window of now is
      // computed on the budget's columns (a shard's row is not of budget_definitions' type) and its row read,
      // as the status reads it (a row of a window the definition no longer has is not its spend), and the
      // chosen budgets are read first (on Citus, the top spenders over every shard, then the rows of those chosen).
      const windowNow = sql`budget_period_window(b.period, b.start_date, b.end_date, b.recurring, now(), b.timezone, b.fiscal_year_start_month, b.period_alignment)`
      return await sql<MetricBudget[]>`
        with chosen as (
          (select b.root_id, b.id from budget_definitions b where b.metrics and b.deleted_at is null ${among})
          union
          (select c.root_id, c.budget_id from budget_definitions b
           cross join lateral ${windowNow} w
           join budget_status_cache c on c.root_id = b.root_id and c.budget_id = b.id and c.period_start = w.period_start
           where b.deleted_at is null ${among}
           order by c.current_amount desc, c.budget_id limit ${top})
        )
        select b.id, b.name, b.scope_type as "scopeType", b.scope_id as "scopeId", b.currency, b.amount::text as amount,
               coalesce(r.current_amount, 0)::text as "currentAmount", coalesce(r.reserved_amount, 0)::text as "reservedAmount",
               coalesce(w.period_end, now()) as "periodEnd",
               exists (select 1 from budget_alert_history h
                       where h.root_id = b.root_id and h.budget_id = b.id and h.period_start = w.period_start and h.resolved_at is null
                         and 'block-all' = any (h.actions)) as blocked
        from budget_definitions b
        left join lateral ${windowNow} w on true
        left join budget_status_cache r on r.root_id = b.root_id and r.budget_id = b.id and r.period_start = w.period_start
        where (b.root_id, b.id) in (select root_id, id from chosen)
        order by b.id`
    },

    async findCacheRow (budgetId: string, periodStart: Date): Promise<StatusCacheRow | null> {
      const [row] = await sql<StatusCacheRow[]>`
        select ${cacheColumns} from budget_status_cache where budget_id = ${budgetId} and period_start = ${periodStart}`
      return row === undefined ? null : canonical(row)
    },

    /** Recomputes the window's row from the usage rows (refresh_budget_status_cache in sql/functions/status-cache.sql). */
    async refreshCacheRow (budgetId: string, window: BudgetWindow): Promise<StatusCacheRow> {
      const [row] = await sql<StatusCacheRow[]>`
        select ${cacheColumns} from refresh_budget_status_cache(${budgetId}, ${window.periodStart}, ${window.periodEnd})`
      return canonical(row!)
    },

    /** A refresh someone asked for: the same, with its audit entry (the row before and after) in the same statement. */
    async refreshCacheRowAudited (budgetId: string, window: BudgetWindow, audit: AuditContext): Promise<StatusCacheRow> {
      const [row] = await sql<StatusCacheRow[]>`
        with before as (
          select jsonb_build_object('currentAmount', c.current_amount::text, 'usageCount', c.usage_count) as numbers
          from budget_status_cache c where c.budget_id = ${budgetId} and c.period_start = ${window.periodStart}
        ),
        refreshed as (
          select * from refresh_budget_status_cache(${budgetId}, ${window.periodStart}, ${window.periodEnd})
        ),
        audited as (
          insert into budget_audit_log (budget_id, root_id, action, before, after, actor, request_id)
          select ${budgetId}, r.root_id, 'refresh-cache', (select numbers from before),
                 jsonb_build_object('periodStart', r.period_start, 'currentAmount', r.current_amount::text, 'usageCount', r.usage_count),
                 ${audit.actor}, ${audit.requestId}
          from refreshed r
        )
        select ${cacheColumns} from refreshed`
      return canonical(row!)
    }
  }
}

function canonical (row: StatusCacheRow): StatusCacheRow {
  return { ...row, currentAmount: normalizeMoney(row.currentAmount), reservedAmount: normalizeMoney(row.reservedAmount) }
}

export type StatusRepository = ReturnType<typeof createStatusRepository>
