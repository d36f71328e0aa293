// The database handle every repository takes, and the checks its statements need around them.
import type { Sql, TransactionSql } from 'postgres'
import { DatabaseUnavailableError } from '../errors.js'

/** A repository's statements run on the client or, handed a transaction, inside it. */
export type Db = Sql | TransactionSql

/** The root of a row that belongs to no budget (migration 010): such rows are kept together, and never null. */
export const NIL_ROOT = '00000000-0000-0000-0000-000000000000'

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/** Ids reach us from URLs; one that is not a uuid names no budget, and must not reach PostgreSQL as one. */
export function isUuid (value: string): boolean {
  return UUID.test(value)
}

// A deadlock or a serialization failure ends a gate statement without effect: it is run again, a few
// times, after a short pause that grows. What still fails is the database not serving now (503).
const CONFLICTS = new Set(['40P01', '40001'])
const CONFLICT_RETRY_DELAYS_MS = [2, 10, 50]

export function isConflict (error: unknown): boolean {
  return CONFLICTS.has((error as { code?: string } | null)?.code ?? '')
}

/**
 * Runs a gate statement, again on a deadlock or serialization failure; one that keeps failing so, or whose
 * next try would start past `deadline` (an admin transaction's bound), is DatabaseUnavailableError.
 */
export async function retryingConflicts<T> (statement: () => Promise<T>, deadline = Number.POSITIVE_INFINITY): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await statement()
    } catch (error) {
      if (!isConflict(error)) throw error
      const delay = CONFLICT_RETRY_DELAYS_MS[attempt]
      if (delay === undefined || Date.now() + delay >= deadline) throw new DatabaseUnavailableError({ cause: error })
      await new Promise((resolve) => setTimeout(resolve, delay * (1 + Math.random())))
    }
  }
}
