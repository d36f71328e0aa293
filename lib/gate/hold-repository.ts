// SQL for holds: a batch of calls' estimates held on every budget of each call's line, in one statement.
import type { Money } from '../kernel/money.js'
import type { BudgetAlert } from '../kernel/schemas.js'
import { NIL_ROOT, retryingConflicts, type Db } from '../kernel/database/db.js'
import { numbersFrom, treesOf, type BudgetNumbers, type BudgetTerms } from './budget-terms.js'

/** A call to hold for: its estimate on every budget of its line. */
export interface HoldRequest {
  reservationId: string
  requestId: string
  amount: Money
  line: BudgetTerms[]
}

export interface Hold {
  /** Every window of the line was there and current: the line can be trusted (else reload it and try again). */
  current: boolean
  reserved: boolean
  /** Each budget's numbers under the hold's lock (a budget whose window had no row has none). */
  numbers: BudgetNumbers[]
  /** The budget definitions' version the hold saw (-1: none read). */
  definitionsVersion: number
}

/** One budget of one call in the batch: its numbers under the hold's lock (`estimate`: the amount held), and the call's state. */
interface HeldRow extends BudgetNumbers {
  callIndex: number
  isCurrent: boolean
  isReserved: boolean
  definitionsVersion: string
}

export function createHoldRepository (sql: Db) {
  return {
    /**
     * Holds for a batch of calls in one statement (budget_hold_batch, sql/functions/holds.sql): each call's estimate
     * on every budget of its line, or on none, admitted in the order given. Returns each call's hold. The
     * statement names the batch's trees; on Citus the first one's node runs it (the gate batches by tree there).
     */
    async holdBatch (calls: HoldRequest[], currency: string, ttlMs: number): Promise<Hold[]> {
      const rows = calls.flatMap((call, index) => call.line.map((budget) => ({ call: index + 1, budget })))
      const trees = treesOf(rows.map((row) => row.budget))
      const needs = (test: (alert: BudgetAlert) => boolean) => calls.some((call) => call.line.some((budget) => budget.alerts.some(test)))
      // Arrays go over the wire as text (postgres.js serializes elements by the type it is told) and are cast in SQL.
      const held = await retryingConflicts(async () => await sql<HeldRow[]>`
        select call_index as "callIndex", budget_id as "budgetId", amount::text as amount, enforcement, current_amount::text as "currentAmount",
               reserved_amount::text as "reservedAmount", fits, is_current as "isCurrent", is_reserved as "isReserved",
               approved_through::text as "approvedThrough", projected_actions as "projectedActions",
               definitions_version::text as "definitionsVersion", held::text as estimate, out_of_range as "outOfRange", over_cap as "overCap",
               shadow_fits as "shadowFits"
        from budget_hold_batch(
          ${calls.map((call) => call.reservationId)}::text[]::uuid[], ${calls.map((call) => call.amount)}::text[]::numeric[],
          ${calls.map((call) => call.requestId)}::text[], ${currency}, ${`${ttlMs} milliseconds`}::interval,
          ${rows.map((row) => String(row.call))}::text[]::integer[], ${rows.map((row) => row.budget.budgetId)}::text[]::uuid[],
          ${rows.map((row) => row.budget.periodStart.toISOString())}::text[]::timestamptz[],
          ${rows.map((row) => row.budget.periodEnd.toISOString())}::text[]::timestamptz[],
          ${rows.map((row) => String(row.budget.scopeMatched))}::text[]::boolean[], ${rows.map((row) => String(row.budget.scopeRank))}::text[]::integer[],
          ${needs((alert) => alert.actions.includes('require-approval'))}, ${needs((alert) => alert.basis === 'projected')},
          ${trees}::text[]::uuid[], ${trees[0] ?? NIL_ROOT}::uuid)`)
      const holds: Hold[] = calls.map((call) => ({ current: call.line.length === 0, reserved: false, numbers: [], definitionsVersion: -1 }))
      for (const row of held) {
        const hold = holds[row.callIndex - 1]!
        hold.definitionsVersion = Number(row.definitionsVersion)
        hold.current = row.isCurrent
        hold.reserved = row.isReserved
        hold.numbers.push(numbersFrom(row))
      }
      // A call none of whose windows was found holds nothing and must reload its line.
      calls.forEach((call, index) => { if (holds[index]!.numbers.length < call.line.length) holds[index]!.current = false })
      return holds
    }
  }
}

export type HoldRepository = ReturnType<typeof createHoldRepository>
