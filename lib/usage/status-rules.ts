// How a budget's numbers become its status: percent used, remaining, and the status rule (the projection
// and the burn rate are SQL's, sql/functions/forecast.sql, taken as they are: projected alerts need them under a
// lock). Pure and exact (bigint money), so every rule is tested against hand-computed values.
import { MONEY_SCALE, fromUnits, numberToDecimal, toUnits, type Money } from '../kernel/money.js'
import { keep } from '../kernel/kept.js'
import type { BudgetState } from './status-repository.js'
import type { ActiveAlert, AlertAction, BudgetAlert, BudgetDefinition, Enforcement, ShadowStatus } from '../kernel/schemas.js'

const DAY = 86_400_000
const SCALE = 10n ** BigInt(MONEY_SCALE)

/** Status thresholds when a budget's alerts do not give them (percent of the amount). */
export const DEFAULT_WARNING_PERCENT = 75
export const DEFAULT_CRITICAL_PERCENT = 90

export type BudgetHealth = 'normal' | 'warning' | 'critical' | 'exceeded' | 'blocked'

export interface StatusInput {
  budget: Pick<BudgetDefinition, 'id' | 'amount' | 'currency' | 'alerts' | 'startDate' | 'timezone' | 'enforcement'>
  periodStart: Date
  periodEnd: Date
  state: BudgetState
  currentAmount: Money
  reservedAmount: Money
  lastUpdated: Date
  now: Date
  /** Thresholds crossed in this window and in force, from the alert history. */
  crossings: ActiveAlert[]
  /** The spend forecast for the window's end: budget_forecast() in SQL (sql/functions/forecast.sql), the one projection rule. */
  projectedTotal: Money
  /** Spend per day over the window's elapsed part: budget_burn_rate() in SQL (sql/functions/forecast.sql), whose floor the forecast shares. */
  burnRate: Money
}

export interface BudgetStatusInfo {
  budgetId: string
  currentAmount: Money
  limit: Money
  currency: string
  percentUsed: number
  remaining: Money
  daysRemaining: number
  burnRate: Money
  projectedTotal: Money
  status: BudgetHealth
  activeAlerts: ActiveAlert[]
  lastUpdated: string
  reservedAmount: Money
  periodStart: string
  periodEnd: string
  timezone: string
  state: BudgetState
  enforcement: Enforcement
  /** A shadow budget's as-if ledger (its status's only). */
  shadow?: ShadowStatus
}

/**
 * What is left of a budget after its settled and reserved spend, never below 0: the one remaining rule,
 * in units (lib/kernel/money.ts). The status, the decision and the metrics' gauge all read it; SQL returns the raw numbers.
 */
export function remainingUnits (limit: bigint, current: bigint, reserved: bigint): bigint {
  const left = limit - current - reserved
  return left > 0n ? left : 0n
}

/**
 * True when `amount` is at least `percent`% of `limit`, compared exactly. As an alert's threshold this is
 * the crossing rule, whose owner is SQL (budget_alert_reached, sql/functions/alerts.sql: crossings are recorded under the
 * window's lock); this is its one mirror, for the gate's decision on the numbers a hold reads under its lock
 * (reading the recorded crossings instead would cost every call a lookup). test/alerts.test.ts holds the two
 * to the same answers.
 */
export function percentReached (amount: Money, limit: Money, percent: number): boolean {
  return toUnits(amount) * 100n * SCALE >= percentUnits(percent) * toUnits(limit)
}

// A budget's thresholds are few and read on every gated call: each is made units once.
const PERCENT_UNITS = new Map<number, bigint>()
const MOST_PERCENTS_KEPT = 1024

/** `percent` in units, exactly (1e-7 as 0.0000001). */
function percentUnits (percent: number): bigint {
  return PERCENT_UNITS.get(percent) ?? keep(PERCENT_UNITS, MOST_PERCENTS_KEPT, percent, toUnits(numberToDecimal(percent)))
}

/** The alerts on the spend (basis `current`) that `spent` reaches; projected ones are read from their recorded crossings. */
export function currentAlertsReached (alerts: BudgetAlert[], spent: Money, limit: Money): BudgetAlert[] {
  return alerts.filter((alert) => (alert.basis ?? 'current') === 'current' && percentReached(spent, limit, alert.threshold))
}

/**
 * The status rule, defined once: `blocked` while a block-all alert is in force (`actionsInForce`: the
 * actions of the crossings in force, which the status reads from the recorded crossings and the decision
 * finds on the numbers under its hold's lock), since then every call is refused whatever is left; else
 * `exceeded` at 100% or more of the amount; `critical` from the highest alert threshold below 100 when
 * the budget has two or more such thresholds (else 90, or the single threshold if it is higher);
 * `warning` from the lowest alert threshold below 100 (else 75).
 */
export function budgetHealth (spent: Money, limit: Money, alerts: BudgetAlert[], actionsInForce: readonly AlertAction[] = []): BudgetHealth {
  if (actionsInForce.includes('block-all')) return 'blocked'
  const { warningAt, criticalAt } = healthThresholds(alerts)
  if (percentReached(spent, limit, 100)) return 'exceeded'
  if (percentReached(spent, limit, criticalAt)) return 'critical'
  if (percentReached(spent, limit, warningAt)) return 'warning'
  return 'normal'
}

// A line's alerts are the same array on every call (the cached line's): their thresholds are sorted once.
const THRESHOLDS = new WeakMap<BudgetAlert[], { warningAt: number, criticalAt: number }>()

/** Where a budget with these alerts turns `warning` and `critical` (budgetHealth's rule). */
function healthThresholds (alerts: BudgetAlert[]): { warningAt: number, criticalAt: number } {
  let thresholds = THRESHOLDS.get(alerts)
  if (thresholds === undefined) {
    const below100 = alerts.map((alert) => alert.threshold).filter((threshold) => threshold < 100).sort((a, b) => a - b)
    const warningAt = below100[0] ?? DEFAULT_WARNING_PERCENT
    thresholds = { warningAt, criticalAt: below100.length >= 2 ? below100[below100.length - 1]! : Math.max(DEFAULT_CRITICAL_PERCENT, warningAt) }
    THRESHOLDS.set(alerts, thresholds)
  }
  return thresholds
}

export function computeStatus (input: StatusInput): BudgetStatusInfo {
  const { budget, periodStart, periodEnd, state, currentAmount, reservedAmount, now } = input
  const current = toUnits(currentAmount)
  const limit = toUnits(budget.amount)
  // A calendar window can begin before the budget does: the time left counts from whichever is later.
  const start = Math.max(periodStart.getTime(), Date.parse(budget.startDate))
  const end = periodEnd.getTime()
  const at = Math.min(Math.max(now.getTime(), start), end)
  const left = state === 'active' ? BigInt(end - at) : 0n
  return {
    budgetId: budget.id,
    currentAmount: fromUnits(current),
    limit: fromUnits(limit),
    currency: budget.currency,
    percentUsed: Number((current * 10000n) / limit) / 100,
    remaining: fromUnits(remainingUnits(limit, current, toUnits(reservedAmount))),
    daysRemaining: Math.floor(Number(left) / DAY * 100) / 100,
    burnRate: fromUnits(toUnits(input.burnRate)),
    projectedTotal: fromUnits(toUnits(input.projectedTotal)),
    // The crossings in force are SQL's answer (recorded under the window's lock): what blocks, on either basis.
    // A shadow budget's crossings put nothing in force: it is never blocked.
    status: budgetHealth(currentAmount, budget.amount, budget.alerts, budget.enforcement === 'shadow' ? [] : input.crossings.flatMap((crossing) => crossing.actions)),
    activeAlerts: input.crossings,
    lastUpdated: input.lastUpdated.toISOString(),
    reservedAmount: fromUnits(toUnits(reservedAmount)),
    periodStart: periodStart.toISOString(),
    periodEnd: periodEnd.toISOString(),
    timezone: budget.timezone,
    state,
    enforcement: budget.enforcement
  }
}
