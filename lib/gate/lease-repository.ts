// SQL for leases: a slice of a hot line's room held as one reservation, kept alive, and given back.
import { normalizeMoney, type Money } from '../kernel/money.js'
import { NIL_ROOT, retryingConflicts, type Db } from '../kernel/database/db.js'
import { treesOf, type BudgetNumbers, type BudgetTerms } from './budget-terms.js'
import type { Enforcement } from '../kernel/schemas.js'

/** What a take measured of each budget under its lock: the numbers a lease admits calls on (each call fits: the slice is held). */
export type LeaseNumbers = Pick<BudgetNumbers, 'budgetId' | 'amount' | 'enforcement' | 'currentAmount' | 'reservedAmount'>

export function createLeaseRepository (sql: Db) {
  return {
    /**
     * Takes (or adds to) a lease on the line: up to `wanted` on every budget, at most an eighth of the
     * tightest room, never past a threshold whose alert does more than notify; nothing when that is
     * under `least` or the line is out of date (budget_lease_take, sql/functions/leases.sql). Each statement on a
     * lease names the trees of its line (`trees`: treesOf); on Citus the first one's node runs it.
     */
    async takeLease (leaseId: string, line: BudgetTerms[], currency: string, ttlMs: number, wanted: Money, least: Money): Promise<{ granted: Money, definitionsVersion: number, budgets: LeaseNumbers[] } | null> {
      const rows = await retryingConflicts(async () => await sql<Array<{ granted: string, budgetId: string, amount: string, enforcement: Enforcement, currentAmount: string, reservedAmount: string, definitionsVersion: string }>>`
        select granted::text as granted, budget_id as "budgetId", amount::text as amount, enforcement,
               current_amount::text as "currentAmount", reserved_amount::text as "reservedAmount", definitions_version::text as "definitionsVersion"
        from budget_lease_take(${leaseId}, ${currency}, ${`${ttlMs} milliseconds`}::interval, ${wanted}::numeric, ${least}::numeric,
          ${line.map((b) => b.budgetId)}::text[]::uuid[], ${line.map((b) => b.periodStart.toISOString())}::text[]::timestamptz[],
          ${line.map((b) => b.periodEnd.toISOString())}::text[]::timestamptz[], ${line.map((b) => String(b.scopeMatched))}::text[]::boolean[],
          ${line.map((b) => String(b.scopeRank))}::text[]::integer[], ${treesOf(line)}::text[]::uuid[], ${treesOf(line)[0] ?? NIL_ROOT}::uuid)`)
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
     * Keeps a lease alive while its process is (budget_lease_renew, sql/functions/leases.sql); false when it has
     * no row (not taken yet, or expired and swept). Retried as the other gate statements are.
     */
    async renewLease (leaseId: string, trees: string[], ttlMs: number): Promise<boolean> {
      const [row] = await retryingConflicts(async () => await sql<Array<{ renewed: boolean }>>`
        select budget_lease_renew(${leaseId}, ${`${ttlMs} milliseconds`}::interval, ${trees}::text[]::uuid[], ${trees[0] ?? NIL_ROOT}::uuid) as renewed`)
      return row?.renewed === true
    },

    /**
     * Whether the lease's rows are still there: false once they expired and were swept (counted as spent).
     * `trees`: its line's, where its rows are; on Citus the read goes to their nodes only.
     */
    async leaseHeld (leaseId: string, trees: string[]): Promise<boolean> {
      const [row] = await sql<Array<{ held: boolean }>>`
        select exists (select 1 from budget_reservations where root_id = any (${trees}::text[]::uuid[]) and id = ${leaseId} and lease) as held`
      return row?.held === true
    },

    /**
     * Gives back `amount` of a lease (budget_lease_return, sql/functions/leases.sql). `final`: every call admitted from
     * it has settled, so all it still holds goes back and the lease is gone. `number`: the lease's return number
     * (1, 2, ...): sent again after a lost reply, a return already applied is not applied twice.
     */
    async returnLease (leaseId: string, trees: string[], amount: Money, final: boolean, number: number): Promise<void> {
      await retryingConflicts(async () => await sql`select budget_lease_return(${leaseId}, ${amount}::numeric, ${final}, ${number}::integer,
                                                                         ${trees}::text[]::uuid[], ${trees[0] ?? NIL_ROOT}::uuid)`)
    }
  }
}

export type LeaseRepository = ReturnType<typeof createLeaseRepository>
