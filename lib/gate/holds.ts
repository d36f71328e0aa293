// Holds in groups: calls that arrive while a batch of holds is in PostgreSQL wait for the next one, and
// each batch is one statement (budget_hold_batch) that takes the hot rows' locks once for all of them.
// A call alone is a batch of one; under load, a hot budget's row is written once per batch, not per call
// (lib/gate/group-commit.ts).
import { createGroupCommit } from './group-commit.js'
import type { Hold, HoldRepository, HoldRequest } from './hold-repository.js'

const MOST_IN_A_BATCH = 200

export function createHoldQueue (reservations: HoldRepository, options: { currency: string, ttlMs: number }) {
  // The batch's statement holds for all of its calls or fails whole: then nothing was held for any of them
  // (group-commit rejects each with its error).
  const queue = createGroupCommit<HoldRequest, Hold>(MOST_IN_A_BATCH, async (batch) => {
    const holds = await reservations.holdBatch(batch.map((pending) => pending.item), options.currency, options.ttlMs)
    batch.forEach((pending, index) => { pending.resolve(holds[index]!) })
  })

  return {
    /** Holds the call's estimate on its line, with the calls that arrive alongside it. */
    async hold (request: HoldRequest): Promise<Hold> {
      return await queue.submit(request)
    }
  }
}

export type HoldQueue = ReturnType<typeof createHoldQueue>
