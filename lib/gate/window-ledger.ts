// What this process knows of each budget window's money now: the spend and the reservations a statement
// last measured under the window's lock (a hold, a lease take), moved by what this process's own statements
// committed since (settlements, lease give-backs). A leased admission reports these numbers, not the ones of
// the take that gave its lease the slice: between takes, settled calls (of this lease, and of other lines on
// the same budgets) would otherwise leave its remaining and binding budget where they were at the take.
// Only budgets in the gate's currency are kept: those are the ones a lease admits on, and the ones whose
// money moves by the call's own amounts (no conversion).
// What other processes do is not known here until the next measurement; and a settlement that commits while
// a measurement is in flight may be counted twice or missed until the next one (the order of two statements
// on two connections is not known to the process). Both are corrected by the next take or hold.
import { fromUnits, toUnits, type Money } from '../kernel/money.js'

interface WindowMoney {
  periodStart: number
  current: bigint
  reserved: bigint
}

export function createWindowLedger () {
  const windows = new Map<string, WindowMoney>()

  return {
    /** A statement measured the window under its lock: `reserved` as it left it (its own hold or slice included). */
    measured (budgetId: string, periodStart: Date, current: Money, reserved: Money): void {
      windows.set(budgetId, { periodStart: periodStart.getTime(), current: toUnits(current), reserved: toUnits(reserved) })
    },

    /** A statement of this process committed: `spent` units became settled spend, `released` units stopped being reserved. */
    moved (budgetId: string, periodStart: Date, spent: bigint, released: bigint): void {
      const known = windows.get(budgetId)
      if (known === undefined || known.periodStart !== periodStart.getTime()) return
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
