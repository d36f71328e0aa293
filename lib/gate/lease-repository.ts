// SQL for leases: a slice of a hot line's room held as one reservation, kept alive, and given back.
import { normalizeMoney, type Money } from '../kernel/money.js'
import { retryingConflicts, type Db } from '../kernel/database/db.js'
import type { BudgetNumbers, BudgetTerms } from './budget-terms.js'
import type { Enforcement } from '../kernel/schemas.js'

/** What a take measured of each budget under its lock: the numbers a lease admits calls on (each call fits: the slice is held). */
export type LeaseNumbers = Pick<BudgetNumbers, 'budgetId' | 'amount' | 'enforcement' | 'currentAmount' | 'reservedAmount'>

/** A renewal waits for its lease's rows no longer than a take waits for them (budget_lease_take, sql/functions/leases.sql). */
const RENEW_LOCK_TIMEOUT_MS = 2000

export function createLeaseRepository (sql: Db) {
  return {
    /**
     * Takes (or adds to) a lease on the line: up to `wanted` on every budget, at most an eighth of the
     * tightest room, never past a threshold whose alert does more than notify; nothing when that is
     * under `least` or the line is out of date (budget_lease_take, sql/functions/leases.sql).
     */
    async takeLease (leaseId: string, line: BudgetTerms[], currency: string, ttlMs: number, wanted: Money, least: Money): Promise<{ granted: Money, definitionsVersion: number, budgets: LeaseNumbers[] } | null> {
      const rows = await retryingConflicts(async () => await sql<Array<{ granted: string, budgetId: string, amount: string, enforcement: Enforcement, currentAmount: string, reservedAmount: string, definitionsVersion: string }>>`
        select granted::text as granted, budget_id as "budgetId", amount::text as amount, enforcement,
               current_amount::text as "currentAmount", reserved_amount::text as "reservedAmount", definitions_version::text as "definitionsVersion"
        from budget_lease_take(${leaseId}, ${currency}, ${`${ttlMs} milliseconds`}::interval, ${wanted}::numeric, ${least}::numeric,
          ${line.map((b) => b.budgetId)}::text[]::uuid[], ${line.map((b) => b.periodStart.toISOString())}::text[]::timestamptz[],
          ${line.map((b) => b.periodEnd.toISOString())}::text[]::timestamptz[], ${line.map((b) => String(b.scopeMatched))}::text[]::boolean[],
          ${line.map((b) => String(b.scopeRank))}::text[]::integer[])`)
      if (rows.length === 0) return null
      return {
        granted: normalizeMoney(rows[0]!.granted),
        definitionsVersion: Number(rows[0]!.definitionsVersion),
        budgets: rows.map((row) => ({
          budgetId: row.budgetId, amount: normalizeMoney(row.amount), enforcement: row.enforcement,
          currentAmount: normalizeMoney(row.currentAmount), reservedAmount: normalizeMoney(row.reservedAmount)
        }))
      }
    },

    /**
     * Keeps a lease alive while its process is; false when it has no row (not taken yet, or expired and
     * swept). Its rows are locked in the lock order (budget_lock_reservations, sql/functions/locks.sql) before they are written:
     * an update alone locks them in whatever order its plan reads them, and deadlocked against a
     * settlement or a return of the same lease. The lock wait is bounded as take's is (a local setting,
     * evaluated before any row is locked: every row the lock reads is joined to it), then retried as the
     * other gate statements are.
     */
    async renewLease (leaseId: string, ttlMs: number): Promise<boolean> {
      const renewed = await retryingConflicts(async () => await sql`
        with bound as materialized (select set_config('lock_timeout', ${`${RENEW_LOCK_TIMEOUT_MS}ms`}, true)),
        locked as materialized (select budget_lock_reservations(array[${leaseId}]::uuid[]) as rows from bound)
        update budget_reservations r set expires_at = now() + ${`${ttlMs} milliseconds`}::interval
        from locked l where r.id = ${leaseId} and l.rows > 0`)
      return renewed.count > 0
    },

    /** Whether the lease's rows are still there: false once they expired and were swept (counted as spent). */
    async leaseHeld (leaseId: string): Promise<boolean> {
      const [row] = await sql<Array<{ held: boolean }>>`select exists (select 1 from budget_reservations where id = ${leaseId} and lease) as held`
      return row?.held === true
    },

    /**
     * Gives back `amount` of a lease (budget_lease_return, sql/functions/leases.sql). `final`: every call admitted from
     * it has settled, so all it still holds goes back and the lease is gone. `number`: the lease's return number
     * (1, 2, ...): sent again after a lost reply, a return already applied is not applied twice.
     */
    async returnLease (leaseId: string, amount: Money, final: boolean, number: number): Promise<void> {
      await retryingConflicts(async () => await sql`select budget_lease_return(${leaseId}, ${amount}::numeric, ${final}, ${number}::integer)`)
    }
  }
}

export type LeaseRepository = ReturnType<typeof createLeaseRepository>
