// SQL for shadow budgets: a call's verdicts counted, and the holds they would have refused marked (sql/functions/shadow.sql).
import { retryingConflicts, type Db } from '../kernel/database/db.js'
import type { ShadowOutcome } from './decision.js'

/** One shadow budget's verdict on one call, as the ledger keeps it. */
export interface ShadowNote {
  budgetId: string
  /** The budget's tree (the line's BudgetTerms.rootId). */
  rootId: string
  periodStart: Date
  code: string
  outcome: ShadowOutcome
  /** The hold is left out of the budget's as-if ledger: a hard twin would have refused the call. */
  excluded: boolean
}

export function createShadowRepository (sql: Db) {
  return {
    /**
     * Counts a call's shadow verdicts and sets, on each of its holds, whether the as-if ledger leaves it out
     * (budget_shadow_note_in_trees). reservationId null: the call held nothing (another budget refused it), only counted.
     */
    async noteShadow (reservationId: string | null, notes: ShadowNote[]): Promise<void> {
      if (notes.length === 0) return
      await retryingConflicts(async () => await sql`
        select budget_shadow_note_in_trees(${reservationId}::uuid, ${notes.map((note) => note.budgetId)}::text[]::uuid[], ${notes.map((note) => note.rootId)}::text[]::uuid[],
          ${notes.map((note) => note.periodStart.toISOString())}::text[]::timestamptz[], ${notes.map((note) => note.code)}::text[],
          ${notes.map((note) => note.outcome)}::text[], ${notes.map((note) => String(note.excluded))}::text[]::boolean[])`)
    }
  }
}

export type ShadowRepository = ReturnType<typeof createShadowRepository>
