// SQL for the sweeper: holds and leases whose process died are ended, counted as spent at their estimate.
import type { Db } from '../kernel/database/db.js'

export function createSweeperRepository (sql: Db) {
  return {
    /** Ends at most `limit` expired reservations (budget_sweep_expired, sql/functions/sweeper.sql); how many it ended. */
    async sweepExpired (limit: number): Promise<number> {
      const [row] = await sql<Array<{ swept: number }>>`select budget_sweep_expired(${limit}) as swept`
      return row?.swept ?? 0
    }
  }
}

export type SweeperRepository = ReturnType<typeof createSweeperRepository>
