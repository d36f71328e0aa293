// Holds in groups: calls that arrive while a batch of holds is in PostgreSQL wait for the next one, and
// each batch is one statement (budget_hold_batch) that takes the hot rows' locks once for all of them.
// A call alone is a batch of one; under load, a hot budget's row is written once per batch, not per call.
import type { Hold, HoldRepository, HoldRequest } from './hold-repository.js'

const MOST_IN_A_BATCH = 200

interface Queued {
  request: HoldRequest
  resolve: (hold: Hold) => void
  reject: (error: unknown) => void
}

export function createHoldQueue (reservations: HoldRepository, options: { currency: string, ttlMs: number }) {
  let queue: Queued[] = []
  let running = false

  async function run (): Promise<void> {
    running = true
    try {
      while (queue.length > 0) {
        const batch = queue.slice(0, MOST_IN_A_BATCH)
        queue = queue.slice(batch.length)
        try {
          const holds = await reservations.holdBatch(batch.map((queued) => queued.request), options.currency, options.ttlMs)
          batch.forEach((queued, index) => { queued.resolve(holds[index]!) })
        } catch (error) {
          // The batch's statement failed whole: nothing was held for any of its calls.
          for (const queued of batch) queued.reject(error)
        }
      }
    } finally {
      running = false
    }
  }

  return {
    /** Holds the call's estimate on its line, with the calls that arrive alongside it. */
    async hold (request: HoldRequest): Promise<Hold> {
      const held = new Promise<Hold>((resolve, reject) => { queue.push({ request, resolve, reject }) })
      if (!running) void run()
      return await held
    }
  }
}

export type HoldQueue = ReturnType<typeof createHoldQueue>
