// SQL for the sweeper: holds and leases whose process died are ended, counted as spent at their estimate.
import type { Db } from '../kernel/database/db.js'

export function createSweeperRepository (sql: Db) {
  const repository = {
    /**
     * Ends at most about `limit` expired reservations (budget_sweep_expired, sql/functions/sweeper.sql); how
     * many it ended. `byTree` (on Citus): one call a tree that holds expired rows, each sent to its tree's node,
     * instead of one call that reads every shard.
     */
    async sweepExpired (limit: number, { byTree = false }: { byTree?: boolean } = {}): Promise<number> {
      if (!byTree) {
        const [row] = await sql<Array<{ swept: number }>>`select budget_sweep_expired(${limit}) as swept`
        return row?.swept ?? 0
      }
      let swept = 0
      for (const tree of await repository.expiredTrees(limit)) {
        if (swept >= limit) break
        swept += await repository.sweepTree(tree, limit - swept)
      }
      return swept
    },

    /** The trees that hold expired reservations, at most `limit` (budget_expired_trees: a read of every shard). */
    async expiredTrees (limit: number): Promise<string[]> {
      const [row] = await sql<Array<{ trees: string[] }>>`select budget_expired_trees(${limit}) as trees`
      return row?.trees ?? []
    },

    /** Ends at most about `limit` expired reservations met in one tree, on that tree's node on Citus; how many. */
    async sweepTree (tree: string, limit: number): Promise<number> {
      const [row] = await sql<Array<{ swept: number }>>`select budget_sweep_trees(${limit}, ${[tree]}::text[]::uuid[], ${tree}::uuid) as swept`
      return row?.swept ?? 0
    }
  }
  return repository
}

export type SweeperRepository = ReturnType<typeof createSweeperRepository>
