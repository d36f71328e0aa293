// SQL for the gate: reserve on every applicable budget at once, settle, sweep; and the applicable budgets for a read.
import type { Db } from './budgets.js'
import type { Money } from '../money.js'
import { normalizeMoney } from '../money.js'
import type { AlertAction, BudgetAlert, ScopeType } from '../schemas.js'

export interface Scope {
  type: ScopeType
  id: string
}

export interface ApplicableBudget {
  budgetId: string
  name: string
  amount: Money
  enforcement: 'hard' | 'soft'
  alerts: BudgetAlert[]
  scopeMatched: boolean
  periodStart: Date
  periodEnd: Date
  currentAmount: Money
  reservedAmount: Money
  approvedThrough: Money | null
  projectedActions: AlertAction[]
}

interface ApplicableRow extends ApplicableBudget {
  reserved: boolean
}

export interface SettleValues {
  actualCost: Money | null
  source: string
  description: string | null
  metadata: Record<string, unknown>
}

export function createReservationRepository (sql: Db) {
  const normalize = ({ reserved: _reserved, ...row }: ApplicableRow): ApplicableBudget => ({
    ...row,
    amount: normalizeMoney(row.amount),
    currentAmount: normalizeMoney(row.currentAmount),
    reservedAmount: normalizeMoney(row.reservedAmount),
    approvedThrough: row.approvedThrough === null ? null : normalizeMoney(row.approvedThrough)
  })
  // Projected alerts stay crossed for the rest of the period once recorded; current ones follow the numbers.
  const projectedActions = (budgetId: ReturnType<typeof sql>, periodStart: ReturnType<typeof sql>) => sql`
    array(select distinct action from budget_alert_history h, unnest(h.actions) as action
          where h.budget_id = ${budgetId} and h.period_start = ${periodStart} and h.basis = 'projected') as "projectedActions"`

  // The numbers the decision needs, for budgets and windows from `source` (budget_id, scope_matched,
  // scope_rank, period_start, period_end).
  const readStandings = async (source: ReturnType<typeof sql>): Promise<ApplicableBudget[]> => {
    const rows = await sql<ApplicableRow[]>`
      select x.budget_id as "budgetId", b.name, b.amount::text as amount, b.enforcement, b.alerts, x.scope_matched as "scopeMatched",
             x.period_start as "periodStart", x.period_end as "periodEnd",
             -- coalesce short-circuits: the sum runs only for a window that has no cache row yet
             coalesce(c.current_amount, (select current_amount from calculate_budget_status(x.budget_id, x.period_start, x.period_end)))::text as "currentAmount",
             coalesce(c.reserved_amount, 0)::text as "reservedAmount",
             budget_approved_through(x.budget_id, x.period_start)::text as "approvedThrough",
             ${projectedActions(sql`x.budget_id`, sql`x.period_start`)}, false as reserved
      from ${source} x
      join budget_definitions b on b.id = x.budget_id
      left join budget_status_cache c on c.budget_id = x.budget_id and c.period_start = x.period_start
      order by x.scope_matched desc, x.scope_rank, x.budget_id`
    return rows.map(normalize)
  }

  return {
    /**
     * One round trip: reserves `amount` on every budget that applies to the scopes, or on none.
     * Returns each applicable budget's numbers from before the reservation, and whether it was made.
     */
    async reserve (reservationId: string, scopes: Scope[], currency: string, amount: Money, ttlMs: number, requestId: string) {
      const rows = await sql<ApplicableRow[]>`
        select budget_id as "budgetId", name, amount::text as amount, enforcement, alerts, scope_matched as "scopeMatched",
               period_start as "periodStart", period_end as "periodEnd", current_amount::text as "currentAmount",
               reserved_amount::text as "reservedAmount", approved_through::text as "approvedThrough",
               ${projectedActions(sql`r.budget_id`, sql`r.period_start`)}, reserved
        from budget_reserve(${reservationId}, ${scopes.map((s) => s.type)}::text[], ${scopes.map((s) => s.id)}::text[],
                            ${currency}, ${amount}, ${`${ttlMs} milliseconds`}::interval, ${requestId}) r`
      return { reserved: rows[0]?.reserved ?? false, budgets: rows.map(normalize) }
    },

    /** Ends a reservation: releases it, and records `actualCost` when given. Returns the usage id, if one was recorded. */
    async settle (reservationId: string, values: SettleValues): Promise<string | null> {
      const [row] = await sql<Array<{ usageId: string | null }>>`
        select budget_settle(${reservationId}, ${values.actualCost}, ${values.source}, ${values.description},
                             ${sql.json(values.metadata as Parameters<typeof sql.json>[0])}) as "usageId"`
      return row?.usageId ?? null
    },

    async sweepExpired (limit: number): Promise<number> {
      const [row] = await sql<Array<{ swept: number }>>`select budget_sweep_expired(${limit}) as swept`
      return row?.swept ?? 0
    },

    /** The budgets that apply to the scopes, with their current numbers; reads only, locks nothing. */
    async listApplicable (scopes: Scope[], currency: string): Promise<ApplicableBudget[]> {
      return await readStandings(sql`
        budget_applicable(${scopes.map((s) => s.type)}::text[], ${scopes.map((s) => s.id)}::text[], ${currency}, now())`)
    },

    /** The budget and each live ancestor with a window now, nearest first, with the same numbers as listApplicable. */
    async listLineage (budgetId: string): Promise<ApplicableBudget[]> {
      return await readStandings(sql`(
        select l.id as budget_id, l.depth = 1 as scope_matched, l.depth as scope_rank, w.period_start, w.period_end
        from budget_lineage(${budgetId}) l
        join budget_definitions live on live.id = l.id and live.deleted_at is null
        cross join lateral budget_period_window(l.period, l.start_date, l.end_date, l.recurring, now()) w
      )`)
    }
  }
}

export type ReservationRepository = ReturnType<typeof createReservationRepository>
