// The one decision on whether spending an estimate may go ahead, given every budget that applies.
// Pure: the constraint check and the gate both call it with numbers read from the database.
import { fromUnits, toUnits, type Money } from '../money.js'
import type { AlertAction, BudgetDefinition } from '../schemas.js'
import { budgetHealth, percentReached, type BudgetHealth } from './status-rules.js'

export interface BudgetStanding {
  budget: Pick<BudgetDefinition, 'id' | 'name' | 'amount' | 'alerts'> & { enforcement?: 'hard' | 'soft' }
  currentAmount: Money
  reservedAmount: Money
}

export type RefusalCode = 'budget_blocked' | 'approval_required' | 'budget_exceeded'

export interface BudgetCheck {
  budgetId: string
  name: string
  limit: Money
  currentAmount: Money
  reservedAmount: Money
  /** What is left after settled and reserved spend, before this estimate (never below 0). */
  remaining: Money
  status: BudgetHealth
  /** Actions of the alerts whose threshold the settled spend has reached. */
  activeActions: AlertAction[]
  /** A soft budget only alerts: it never refuses for want of room. */
  enforcement: 'hard' | 'soft'
  fits: boolean
}

export interface BudgetConstraintCheck {
  canProceed: boolean
  /** Why not, in a word a client can branch on; null when the call may proceed. */
  code: RefusalCode | null
  reason: string
  suggestedActions: string[]
  estimatedCost: Money
  /** The budget that decided: the one that refused, else the one with the least left after this call. */
  bindingBudgetId: string | null
  limit: Money | null
  currentAmount: Money | null
  reservedAmount: Money | null
  remaining: Money | null
  status: BudgetHealth | null
  /** Every alert action in force on any of the budgets. */
  activeActions: AlertAction[]
  budgets: BudgetCheck[]
}

// The strictest first: a budget that blocks outranks one that wants approval, which outranks one that is full.
const REFUSALS: Array<{ code: RefusalCode, refuses: (check: BudgetCheck) => boolean, reason: (check: BudgetCheck, estimate: Money) => string, suggestion: string }> = [
  {
    code: 'budget_blocked',
    refuses: (check) => check.activeActions.includes('block-all'),
    reason: (check) => `Budget '${check.name}' blocks all calls for the rest of its period`,
    suggestion: 'ask an admin to raise or reset the budget, or wait for the next period'
  },
  {
    code: 'approval_required',
    refuses: (check) => check.activeActions.includes('require-approval'),
    reason: (check) => `Budget '${check.name}' requires an admin's approval for further calls`,
    suggestion: 'ask an admin to approve further spend on this budget'
  },
  {
    code: 'budget_exceeded',
    refuses: (check) => !check.fits && check.enforcement === 'hard',
    reason: (check, estimate) => `Budget '${check.name}' has ${check.remaining} left, less than the estimated cost ${estimate}`,
    suggestion: 'use a cheaper model or fewer tokens, or ask an admin to raise the budget'
  }
]

export function checkBudget (standing: BudgetStanding, estimate: Money): BudgetCheck {
  const { budget, currentAmount, reservedAmount } = standing
  const available = toUnits(budget.amount) - toUnits(currentAmount) - toUnits(reservedAmount)
  const activeActions = [...new Set(budget.alerts
    .filter((alert) => percentReached(currentAmount, budget.amount, alert.threshold))
    .flatMap((alert) => alert.actions))]
  return {
    budgetId: budget.id,
    name: budget.name,
    limit: budget.amount,
    currentAmount,
    reservedAmount,
    remaining: fromUnits(available > 0n ? available : 0n),
    status: budgetHealth(currentAmount, budget.amount, budget.alerts),
    activeActions,
    enforcement: budget.enforcement ?? 'hard',
    fits: toUnits(estimate) <= available
  }
}

export function decide (standings: BudgetStanding[], estimate: Money): BudgetConstraintCheck {
  const checks = standings.map((standing) => checkBudget(standing, estimate))
  const activeActions = [...new Set(checks.flatMap((check) => check.activeActions))]
  for (const refusal of REFUSALS) {
    const refusing = checks.find(refusal.refuses)
    if (refusing !== undefined) return outcome(checks, refusing, estimate, activeActions, refusal.code, refusal.reason(refusing, estimate), [refusal.suggestion])
  }
  const tightest = checks.reduce<BudgetCheck | undefined>((least, check) =>
    least === undefined || toUnits(check.remaining) < toUnits(least.remaining) ? check : least, undefined)
  const suggestions = activeActions.includes('auto-downgrade') || activeActions.includes('restrict-models')
    ? ['prefer a cheaper model: a budget is past a threshold that restricts or downgrades models']
    : []
  return outcome(checks, tightest, estimate, activeActions, null, checks.length === 0 ? 'No budget applies' : 'Within every applicable budget', suggestions)
}

function outcome (checks: BudgetCheck[], binding: BudgetCheck | undefined, estimate: Money, activeActions: AlertAction[],
  code: RefusalCode | null, reason: string, suggestedActions: string[]): BudgetConstraintCheck {
  return {
    canProceed: code === null,
    code,
    reason,
    suggestedActions,
    estimatedCost: estimate,
    bindingBudgetId: binding?.budgetId ?? null,
    limit: binding?.limit ?? null,
    currentAmount: binding?.currentAmount ?? null,
    reservedAmount: binding?.reservedAmount ?? null,
    remaining: binding?.remaining ?? null,
    status: binding?.status ?? null,
    activeActions,
    budgets: checks
  }
}
