// Scheduled digests: when a budget's digest period (a local day or week) ends, one digest with that
// period's spend, the budget's burn rate and forecast, and its top models and callers, made once across
// processes and queued for its channels in the same statement (delivered by lib/alerts/notifications.ts).
import type { BudgetRepository } from '../budgets/index.js'
import type { StatusRepository } from '../usage/index.js'
import type { DigestRepository } from './digest-repository.js'
import { computeStatus } from '../usage/index.js'

/** How many models and callers a digest names. */
export const DIGEST_TOP = 5

export function createDigestScheduler ({ budgets, status, digests }: { budgets: BudgetRepository, status: StatusRepository, digests: DigestRepository }, now: () => Date) {
  /**
   * Makes the digests whose period ended before `at` (default now) and that no process has made yet.
   * Two processes may both compute one; the unique key keeps the first, and only it queues notifications.
   * Returns how many this call made.
   */
  async function produceDue (at: Date = now(), limit = 50): Promise<number> {
    let made = 0
    for (const due of await digests.listDue(at, limit)) {
      const budget = await budgets.findBudget(due.budgetId)
      const window = await status.findWindow(due.budgetId, new Date(due.periodEnd.getTime() - 1))
      if (budget === null || window === null) continue // archived since it was listed
      const numbers = await digests.periodNumbers(budget, due, window, DIGEST_TOP)
      // The status rule, as of the period's end: percent used of the window's spend so far (the burn rate is SQL's, in `numbers`).
      const standing = computeStatus({
        budget, ...window, currentAmount: numbers.windowSpent, reservedAmount: '0', lastUpdated: due.periodEnd, now: due.periodEnd,
        crossings: [], projectedTotal: numbers.projectedTotal, burnRate: numbers.burnRate
      })
      const id = await digests.insertDigest({
        ...due, ...numbers, rootId: budget.rootId, windowStart: window.periodStart, windowEnd: window.periodEnd,
        limit: budget.amount, percentUsed: standing.percentUsed
      })
      if (id !== null) made++
    }
    return made
  }

  return { produceDue }
}

export type DigestScheduler = ReturnType<typeof createDigestScheduler>
