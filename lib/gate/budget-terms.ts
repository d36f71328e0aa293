// A budget as the gate sees it, in two halves that are never mapped into each other: its terms (what its
// definition says, as budget_line returns it and the process caches it in a caller's line) and its numbers
// (what SQL measured of its window for one estimate: under the lock for a hold or a lease, in one read for a
// check). decide() reads a line's terms beside the numbers measured for it.
import { normalizeMoney, toUnits, type Money } from '../kernel/money.js'
import type { AlertAction, BudgetAlert, Enforcement, NearLimitPolicy } from '../kernel/schemas.js'

/** One budget of a caller's line: its definition and the window it applies in now (budget_line, sql/functions/lines.sql). */
export interface BudgetTerms {
  budgetId: string
  /**
   * The root of the budget's tree. The statements that hold on it name it: on Citus its tree's rows sit on one
   * node, which runs a statement that names no other tree whole.
   */
  rootId: string
  name: string
  alerts: BudgetAlert[]
  /** The budget's currency: a line with one other than the gate's is held call by call, never leased. */
  currency: string
  /** What the gate does when a call no longer fits (null: the gate's nearLimit option). */
  nearLimit: NearLimitPolicy | null
  /**
   * The most one call may cost, in the budget's currency (null: no cap). budget_within_cap decides (in the
   * hold); the line carries it so that a call over it never admits from a lease (withinCaps) and the clamp
   * knows how far to lower it.
   */
  maxCallCost: Money | null
  /** A shadow budget ('shadow') keeps its line off the leases: only a hold reads its as-if ledger. */
  enforcement: Enforcement
  /** The budget is the caller's own (its scope matched), not an ancestor's. */
  scopeMatched: boolean
  scopeRank: number
  periodStart: Date
  periodEnd: Date
  /** Null where the budget does not limit the rate. */
  requestsPerMinute: number | null
  tokensPerMinute: number | null
}

/**
 * What SQL measured of one budget's window for one estimate. The limit and the enforcement are read in the
 * same statement as the spend, not taken from the cached terms: the fit was measured against them, and a
 * definition changed since the line was cached counts as it is now (budget_line returns neither).
 */
export interface BudgetNumbers {
  budgetId: string
  amount: Money
  enforcement: Enforcement
  /** A shadow budget's are its as-if ledger's (budget_hold_batch): what a hard twin would have spent and held. */
  currentAmount: Money
  reservedAmount: Money
  /** How far an admin's approval lets spend go this period (lifts require-approval up to there); null: none. */
  approvedThrough: Money | null
  /** Actions of projected-basis alerts crossed this period (from the alert history). */
  projectedActions: AlertAction[]
  /** Whether the estimate fits, as SQL decided it (budget_fits, sql/functions/holds.sql): the one place that rule lives. */
  fits: boolean
  /**
   * The estimate in the budget's currency as held, rounded up (budget_hold_amount); null when no exchange rate
   * is in force, or it is out of range.
   */
  estimate: Money | null
  /** A rate is in force but the estimate cannot be held on the budget: past 10^18 (budget_hold_amount, sql/functions/holds.sql). */
  outOfRange: boolean
  /** The estimate is more than the budget's cap on one call (budget_within_cap): it does not fit, whatever the room. */
  overCap: boolean
  /**
   * A shadow budget's verdict on room and cap, as a hard twin's hold would have decided it on the as-if ledger
   * (budget_hold_batch); null on other budgets, and where no hold measured it (a lease, a read).
   */
  shadowFits?: boolean | null
}

/**
 * The trees of these budgets, by root, in order: what a statement on them names (on Citus, the first is the
 * tree whose node runs it).
 */
export function treesOf (budgets: BudgetTerms[]): string[] {
  return [...new Set(budgets.map((budget) => budget.rootId))].sort()
}

/** A budget's numbers as a statement returns them (its money as PostgreSQL's text), in canonical decimals. */
export function numbersFrom (row: BudgetNumbers): BudgetNumbers {
  return {
    budgetId: row.budgetId,
    amount: normalizeMoney(row.amount),
    enforcement: row.enforcement,
    currentAmount: normalizeMoney(row.currentAmount),
    reservedAmount: normalizeMoney(row.reservedAmount),
    approvedThrough: row.approvedThrough === null ? null : normalizeMoney(row.approvedThrough),
    projectedActions: row.projectedActions,
    fits: row.fits,
    estimate: row.estimate === null ? null : normalizeMoney(row.estimate),
    outOfRange: row.outOfRange,
    overCap: row.overCap,
    shadowFits: row.shadowFits ?? null
  }
}

/**
 * Whether `estimate` (in the gate's currency) is within every cap on one call of a line in that currency. Not
 * the decision (budget_within_cap is, in the hold): a line's lease admits in memory only calls within every
 * cap, and sends the others to a hold, which refuses them there. A line in the gate's currency converts at 1,
 * so both read the same amounts.
 */
export function withinCaps (line: readonly BudgetTerms[], estimate: Money): boolean {
  let units: bigint | undefined
  for (const budget of line) {
    if (budget.maxCallCost === null) continue
    units ??= toUnits(estimate)
    if (units > toUnits(budget.maxCallCost)) return false
  }
  return true
}

/**
 * Whether calls on a line may be admitted from a lease: every budget in the gate's currency (a line with
 * another is held call by call, each hold converting at the rate in force), and none a shadow budget (only a
 * hold judges one, on its as-if ledger, and marks the holds it would have refused).
 */
export function leasable (line: readonly BudgetTerms[], currency: string): boolean {
  return line.every((budget) => budget.currency === currency && budget.enforcement !== 'shadow')
}
