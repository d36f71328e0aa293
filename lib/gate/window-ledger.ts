// What this process knows of each budget window's money now: the spend and the reservations a statement
// last measured under the window's lock (a hold, a lease take), moved by what this process's own statements
// committed since (settlements, lease give-backs). A leased admission REPORTS these numbers (its remaining,
// its binding budget, the spend and reservations in its check); it never DECIDES on them: a leased call is
// admitted or refused on its lease's take, which never spans an action's threshold (lib/gate/integration.ts).
// Only budgets in the gate's currency are kept: those are the ones a lease admits on, and the ones whose
// money moves by the call's own amounts (no conversion).
//
// What other processes do is not known here until the next measurement. The order of two statements on two
// connections is not known to the process either, so each statement is stamped when it is sent (stamp()):
// a move whose statement was sent before the window's last measurement was sent is skipped, as that
// measurement may include it; a measurement sent before the last one is ignored. The rule errs both ways,
// rarely: a move sent first that committed after the measurement read the window is missed (spend reported
// low), and a move sent after a measurement that committed before it read the window is counted twice
// (spend reported high). Either lasts until the next measurement, and only reports are affected.
import { fromUnits, toUnits, type Money } from '../kernel/money.js'

interface WindowMoney {
  periodStart: number
  current: bigint
  reserved: bigint
  /** The stamp of the statement that measured it. */
  measuredAt: number
}

export function createWindowLedger () {
  const windows = new Map<string, WindowMoney>()
  let sent = 0

  return {
    /** A stamp for a statement about to be sent: later statements have higher ones. */
    stamp (): number {
      return ++sent
    },

    /** A statement sent at `sentAt` measured the window under its lock: `reserved` as it left it (its own hold or slice included). */
    measured (budgetId: string, periodStart: Date, current: Money, reserved: Money, sentAt: number): void {
      const known = windows.get(budgetId)
      if (known !== undefined && known.periodStart === periodStart.getTime() && known.measuredAt > sentAt) return
      windows.set(budgetId, { periodStart: periodStart.getTime(), current: toUnits(current), reserved: toUnits(reserved), measuredAt: sentAt })
    },

    /** A statement of this process sent at `sentAt` committed: `spent` units became settled spend, `released` units stopped being reserved. */
    moved (budgetId: string, periodStart: Date, spent: bigint, released: bigint, sentAt: number): void {
      const known = windows.get(budgetId)
      if (known === undefined || known.periodStart !== periodStart.getTime() || sentAt < known.measuredAt) return
      known.current += spent
      // As budget_settle_batch and budget_lease_return do: reserved never goes below 0.
      known.reserved = known.reserved > released ? known.reserved - released : 0n
    },

    /** The window's spend and reservations as this process knows them; undefined when it knows none of that window. */
    numbersOf (budgetId: string, periodStart: Date): { currentAmount: Money, reservedAmount: Money } | undefined {
      const known = windows.get(budgetId)
      if (known === undefined || known.periodStart !== periodStart.getTime()) return undefined
      return { currentAmount: fromUnits(known.current), reservedAmount: fromUnits(known.reserved) }
    }
  }
}

export type WindowLedger = ReturnType<typeof createWindowLedger>
