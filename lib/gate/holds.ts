// Holds in groups: calls that arrive while a batch of holds is in PostgreSQL wait for the next one, and
// each batch is one statement (budget_hold_batch) that takes the hot rows' locks once for all of them.
// A call alone is a batch of one; under load, a hot budget's row is written once per batch, not per call
// (lib/gate/group-commit.ts). On Citus the batches are kept apart by the trees of their lines, so that each
// statement runs whole on the node of its tree (a line across two trees makes a batch of those two).
import { isDatabaseUnavailable } from '../kernel/errors.js'
import type { Logger } from '../kernel/logger.js'
import { fromUnits, toUnits } from '../kernel/money.js'
import { createKeyedGroupCommit, type Pending } from './group-commit.js'
import { treesOf } from './budget-terms.js'
import type { Hold, HoldRepository, HoldRequest } from './hold-repository.js'
import type { WindowLedger } from './window-ledger.js'

const MOST_IN_A_BATCH = 200

/** What a hold took on one budget in the gate's currency (the ones the window ledger keeps): given back, and the cost charged, when it settles. */
export interface HeldShare {
  budgetId: string
  periodStart: Date
  units: bigint
}

/** A hold, with what it took on each budget the window ledger keeps. */
export type HeldHold = Hold & { held: HeldShare[] }

export function createHoldQueue (reservations: HoldRepository, ledger: WindowLedger,
  options: { currency: string, ttlMs: number, byTree: boolean, giveBack: (reservationIds: string[]) => Promise<void> }, log: Logger) {
  /**
   * What the batch measured of each window in the gate's currency, as it left it (the last call on a window
   * took the rest's holds into account), given to the ledger; and what each hold took on those windows, which
   * its settlement moves there again (integration.ts).
   */
  function measure (calls: HoldRequest[], holds: Hold[], sentAt: number): HeldHold[] {
    return calls.map((call, index) => {
      const hold = holds[index]!
      const held: HeldShare[] = []
      for (const numbers of hold.numbers) {
        const budget = call.line.find((terms) => terms.budgetId === numbers.budgetId)
        // a shadow budget's numbers are its as-if ledger's, and no lease reads it
        if (budget === undefined || budget.currency !== options.currency || budget.enforcement === 'shadow') continue
        const units = hold.reserved && numbers.estimate !== null ? toUnits(numbers.estimate) : 0n
        ledger.measured(budget.budgetId, budget.periodStart, numbers.currentAmount, fromUnits(toUnits(numbers.reservedAmount) + units), sentAt)
        if (hold.reserved && numbers.estimate !== null) held.push({ budgetId: budget.budgetId, periodStart: budget.periodStart, units })
      }
      return { ...hold, held }
    })
  }

  // The batch's statement holds for all of its calls or fails whole: then nothing was held for any of them
  // (group-commit rejects each with its error).
  const commit = async (batch: Array<Pending<HoldRequest, HeldHold>>): Promise<void> => {
    const calls = batch.map((pending) => pending.item)
    let holds: Hold[]
    const sentAt = ledger.stamp()
    try {
      holds = await reservations.holdBatch(calls, options.currency, options.ttlMs)
    } catch (error) {
      // A connection cut (the backend ended, a proxy dropping the reply) may come after PostgreSQL committed
      // the holds, which would then stay until their TTL and be swept as spent, for callers who were refused.
      // Their ids were made here, so they are given back by id: one that is not there gives back nothing.
      if (isDatabaseUnavailable(error)) {
        const reservationIds = calls.map((call) => call.reservationId)
        log.warn({ err: error, reservationIds }, 'a hold batch met a connection error: its holds, if PostgreSQL committed them, are given back')
        void options.giveBack(reservationIds)
      }
      throw error
    }
    const held = measure(calls, holds, sentAt)
    batch.forEach((pending, index) => { pending.resolve(held[index]!) })
  }

  // One queue; on Citus (byTree) one for each set of trees a line names, so that a batch names one tree.
  const queue = createKeyedGroupCommit<HoldRequest, HeldHold>(MOST_IN_A_BATCH, commit, (request) => options.byTree ? treesOf(request.line).join(' ') : '')

  return {
    /** Holds the call's estimate on its line, with the calls that arrive alongside it. */
    async hold (request: HoldRequest): Promise<HeldHold> {
      return await queue.submit(request)
    }
  }
}

export type HoldQueue = ReturnType<typeof createHoldQueue>
