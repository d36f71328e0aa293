// The one decision on whether spending an estimate may go ahead, given every budget that applies and
// the model asked for. Pure: the constraint check, the integration service and the gate all call it
// with numbers read from the database.
import { fromUnits, toUnits, type Money } from '../kernel/money.js'
import type { BudgetNumbers, BudgetTerms } from './budget-terms.js'
import type { AlertAction, BudgetAlert, Enforcement, NearLimitPolicy } from '../kernel/schemas.js'
import { highestOutputRate, type PriceBook } from '../pricing/index.js'
import { budgetHealth, currentAlertsReached, remainingUnits, type BudgetHealth } from '../usage/index.js'

/** What the gate knows about the call: the model, and how restrict-models and auto-downgrade treat it. */
export interface ModelPolicy {
  model: string
  prices: PriceBook
  /** Allowed while restrict-models is in force, unless the alert lists its own allowedModels. */
  cheapModels: string[]
  /** The cheaper model auto-downgrade switches each model to. */
  downgrades: Record<string, string>
}

export type RefusalCode = 'exchange_rate_missing' | 'estimate_out_of_range' | 'budget_blocked' | 'approval_required' | 'model_restricted' | 'call_cost_cap_exceeded' | 'budget_exceeded' | 'rate_limit_exceeded'

export interface BudgetCheck {
  budgetId: string
  name: string
  limit: Money
  currentAmount: Money
  reservedAmount: Money
  /** What is left after settled and reserved spend, before this estimate (never below 0). */
  remaining: Money
  status: BudgetHealth
  /** Actions of the alerts whose threshold the spend has reached this period. */
  activeActions: AlertAction[]
  /** A soft budget only alerts: it never refuses for want of room. A shadow one never decides (decide() judges it apart). */
  enforcement: Enforcement
  fits: boolean
  /** An approval in force covers this estimate, lifting require-approval. */
  approved: boolean
  /** restrict-models is in force and the call's model is not allowed: the models that are. */
  allowedModels: string[] | null
  /** The budget's currency. */
  currency: string
  /** The estimate in the budget's currency; null when no exchange rate converts the call's currency into it, or out of range. */
  estimatedCost: Money | null
  /** The estimate converted into the budget's currency cannot be held on it: past 10^18 (budget_hold_amount). */
  outOfRange: boolean
  /** The budget's own near-limit policy (null: the gate's). */
  nearLimit: NearLimitPolicy | null
  /** The budget's cap on one call, in its currency (null: none). */
  maxCallCost: Money | null
  /** The estimate in the budget's currency is over that cap: the call does not fit it, whatever its room or enforcement. */
  overCap: boolean
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
  /** The binding budget's currency: its limit, spend and remaining are in it (null: the call's). */
  currency: string | null
  /** The estimate in the binding budget's currency. */
  bindingEstimate: Money | null
  status: BudgetHealth | null
  /** Every alert action in force on any of the budgets. */
  activeActions: AlertAction[]
  /** auto-downgrade is in force and the model has a cheaper one: call that instead (after a new estimate). */
  downgradeTo: string | null
  /** Every budget that decided (a shadow budget never does: it is in `shadow`). */
  budgets: BudgetCheck[]
  /** What each shadow budget of the line, were it hard, would have done to the call (none: it would have let it be). */
  shadow: ShadowVerdict[]
}

/** What a shadow budget would have done: refuse, clamp (nearLimit 'clamp') or downgrade (auto-downgrade). */
export type ShadowOutcome = 'refused' | 'clamped' | 'downgraded'

/**
 * A shadow budget's verdict on a call: the code its hard twin would have refused it with (auto_downgrade: it
 * would have let it through on the cheaper model), and the binding figures it was judged on (its as-if ledger).
 */
export interface ShadowVerdict {
  budgetId: string
  code: RefusalCode | 'auto_downgrade'
  /**
   * What the hard twin would have done (shadowOutcome): decide() answers with the budget's own nearLimit (none:
   * refuse); the gate's reserveCall again with its nearLimit option.
   */
  outcome: ShadowOutcome
  reason: string
  /** A refusal the budget's nearLimit 'clamp' (or the gate's) would answer with fewer output tokens. */
  clampable: boolean
  /** auto-downgrade would have sent the call to this model instead. */
  downgradeTo: string | null
  limit: Money
  currentAmount: Money
  reservedAmount: Money
  remaining: Money
  estimatedCost: Money | null
  currency: string
  nearLimit: NearLimitPolicy | null
}

/** The outcome a shadow verdict counts as, given the gate's nearLimit (a budget's own comes first). */
export function shadowOutcome (verdict: ShadowVerdict, gateNearLimit: NearLimitPolicy): ShadowOutcome {
  if (verdict.downgradeTo !== null) return 'downgraded'
  if (verdict.clampable && (verdict.nearLimit ?? gateNearLimit) === 'clamp') return 'clamped'
  return 'refused'
}

// The strictest first: block-all, then require-approval (unless approved), then restrict-models,
// then no room. auto-downgrade and notify never refuse.
const REFUSALS: Array<{ code: RefusalCode, refuses: (check: BudgetCheck) => boolean, reason: (check: BudgetCheck, estimate: Money) => string, suggestion: string }> = [
  {
    // Never converted at 1: a budget the call's currency cannot be converted into refuses (budget_require_rate).
    code: 'exchange_rate_missing',
    refuses: (check) => check.estimatedCost === null && !check.outOfRange,
    reason: (check) => `No exchange rate into ${check.currency} is in force for budget '${check.name}'`,
    suggestion: 'ask an admin to set the exchange rate (PUT {prefix}/exchange-rates/{from}/{to})'
  },
  {
    // No budget can hold an amount of 10^18 or more (numeric(28, 10)): at an extreme rate, the call's worst
    // case converts past it. Like a full budget, a 402 the caller can act on (a smaller call); never a 500.
    code: 'estimate_out_of_range',
    refuses: (check) => check.outOfRange,
    reason: (check) => `The estimated cost converted into ${check.currency} is past the largest amount budget '${check.name}' can hold (10^18)`,
    suggestion: 'use a cheaper model or fewer tokens, or ask an admin to check the exchange rate'
  },
  {
    code: 'budget_blocked',
    refuses: (check) => check.activeActions.includes('block-all'),
    reason: (check) => `Budget '${check.name}' blocks all calls for the rest of its period`,
    suggestion: 'ask an admin to raise or reset the budget, or wait for the next period'
  },
  {
    code: 'approval_required',
    refuses: (check) => check.activeActions.includes('require-approval') && !check.approved,
    reason: (check) => `Budget '${check.name}' requires an admin's approval for further calls`,
    suggestion: 'ask for an approval of further spend (POST {prefix}/{budgetId}/approval-requests with the amount and a reason)'
  },
  {
    code: 'model_restricted',
    refuses: (check) => check.allowedModels !== null,
    reason: (check) => `Budget '${check.name}' allows only these models now: ${check.allowedModels!.join(', ')}`,
    suggestion: 'call one of the allowed models'
  },
  {
    // A cap on one call is its own rule, not the limit: it refuses on a soft budget too, and with room left.
    code: 'call_cost_cap_exceeded',
    refuses: (check) => check.overCap,
    reason: (check, estimate) => `Budget '${check.name}' allows at most ${check.maxCallCost} ${check.currency} for one call, less than the estimated cost ${check.estimatedCost ?? estimate} ${check.currency}`,
    suggestion: 'ask for fewer output tokens (max_tokens), use a cheaper model or a shorter prompt'
  },
  {
    code: 'budget_exceeded',
    refuses: (check) => !check.fits && check.enforcement === 'hard',
    reason: (check, estimate) => `Budget '${check.name}' has ${check.remaining} left, less than the estimated cost ${check.estimatedCost ?? estimate} ${check.currency}`,
    suggestion: 'use a cheaper model or fewer tokens, or ask an admin to raise the budget'
  }
]

/** The model's name in the price table: a dated snapshot or an alias is treated as the model it names. */
function pricedName (policy: ModelPolicy): string {
  return policy.prices.resolve(policy.model)?.model ?? policy.model
}

/** The cheaper model for the requested one (own keys only: a model called `constructor` has none). */
function downgradeOf (policy: ModelPolicy): string | undefined {
  for (const model of [policy.model, pricedName(policy)]) {
    if (Object.hasOwn(policy.downgrades, model)) return policy.downgrades[model]
  }
  return undefined
}

/**
 * The models restrict-models allows for these alerts, or null when `model` is one of them. A price cap
 * allows any model whose own output price (its highest tier's) is at most the cap, the requested one
 * included; the list a refusal names holds the listed models and the operator's table's models under a
 * cap (the catalog's hundreds of models are not listed).
 */
function restriction (alerts: readonly BudgetAlert[], policy: ModelPolicy): string[] | null {
  const allowed = new Set<string>()
  const requested = policy.prices.resolve(policy.model)
  let underCap = false
  for (const alert of alerts) {
    for (const model of alert.allowedModels ?? policy.cheapModels) allowed.add(model)
    if (alert.maxPricePerMillion === undefined) continue
    const cap = toUnits(alert.maxPricePerMillion)
    if (requested !== null && toUnits(highestOutputRate(requested.price)) <= cap) underCap = true
    for (const { model, price } of policy.prices.models()) {
      if (toUnits(highestOutputRate(price)) <= cap) allowed.add(model)
    }
  }
  return underCap || allowed.has(policy.model) || allowed.has(pricedName(policy)) ? null : [...allowed].sort()
}

const NONE: readonly BudgetAlert[] = Object.freeze([])

/** One budget's answer: its terms (from the line) read beside the numbers SQL measured for the estimate. */
export function checkBudget (terms: BudgetTerms, numbers: BudgetNumbers, policy?: ModelPolicy): BudgetCheck {
  const { amount, currentAmount, reservedAmount } = numbers
  const current = toUnits(currentAmount)
  const reserved = toUnits(reservedAmount)
  const committed = current + reserved
  // A budget without alerts (most of them) has no action in force: nothing to gather.
  const crossed = terms.alerts.length === 0 ? NONE : currentAlertsReached(terms.alerts, currentAmount, amount)
  const activeActions = crossed.length === 0 && numbers.projectedActions.length === 0 ? [] : [...new Set([...crossed.flatMap((alert) => alert.actions), ...numbers.projectedActions])]
  const restricting = crossed.length === 0 ? NONE : crossed.filter((alert) => alert.actions.includes('restrict-models'))
  const converted = numbers.estimate
  return {
    budgetId: terms.budgetId,
    name: terms.name,
    limit: amount,
    currentAmount,
    reservedAmount,
    remaining: fromUnits(remainingUnits(toUnits(amount), current, reserved)),
    status: budgetHealth(currentAmount, amount, terms.alerts, activeActions),
    activeActions,
    enforcement: numbers.enforcement,
    fits: numbers.fits,
    approved: numbers.approvedThrough !== null && converted !== null && committed + toUnits(converted) <= toUnits(numbers.approvedThrough),
    allowedModels: policy === undefined || restricting.length === 0 ? null : restriction(restricting, policy),
    currency: terms.currency,
    estimatedCost: converted,
    outOfRange: numbers.outOfRange,
    nearLimit: terms.nearLimit,
    maxCallCost: terms.maxCallCost,
    overCap: numbers.overCap
  }
}

/**
 * The decision on a call of `estimate` (in the call's currency) over a line's budgets: each budget's terms
 * beside the numbers SQL measured for it (by budget id), in the line's order. A budget without numbers (its
 * window had no row under the hold) is not part of the answer.
 */
export function decide (terms: readonly BudgetTerms[], numbers: readonly BudgetNumbers[], estimate: Money, policy?: ModelPolicy): BudgetConstraintCheck {
  const checks: BudgetCheck[] = []
  let shadowChecks: BudgetCheck[] | null = null
  // Every source gives the numbers in the line's order (a hold's rows, a lease's line, a standing read's
  // rows), less any budget without numbers: so they pair by position, checked by id, with no Map built per
  // call on the hot path. Numbers out of that order are still found, by a search.
  let next = 0
  for (const budget of terms) {
    let its = numbers[next]
    if (its?.budgetId === budget.budgetId) next++
    else its = numbers.find((measured) => measured.budgetId === budget.budgetId)
    if (its === undefined) continue
    if (its.enforcement !== 'shadow') { checks.push(checkBudget(budget, its, policy)); continue }
    // A shadow budget never refuses. One without a rate, or past what it can hold, holds nothing and records
    // none of the call: its hard twin's verdict (exchange_rate_missing, estimate_out_of_range) is counted, and
    // the other budgets decide.
    const check = checkBudget(budget, its, policy)
    shadowChecks ??= []
    shadowChecks.push({ ...check, enforcement: 'hard', fits: check.estimatedCost !== null && (its.shadowFits ?? check.fits) })
  }
  const shadow = shadowChecks === null ? [] : shadowVerdicts(shadowChecks, estimate, policy)
  const decided = decideChecks(checks, estimate, policy)
  return shadow.length === 0 ? decided : { ...decided, shadow }
}

/** Each shadow budget judged alone as a hard budget on its as-if numbers: the verdicts of those that would not have let the call be. */
function shadowVerdicts (checks: BudgetCheck[], estimate: Money, policy?: ModelPolicy): ShadowVerdict[] {
  const verdicts: ShadowVerdict[] = []
  for (const check of checks) {
    const alone = decideChecks([check], estimate, policy)
    if (alone.canProceed && alone.downgradeTo === null) continue
    const code = alone.code ?? 'auto_downgrade'
    const verdict: ShadowVerdict = {
      budgetId: check.budgetId,
      code,
      outcome: 'refused',
      reason: alone.canProceed ? `Budget '${check.name}' would have sent the call to ${alone.downgradeTo!}` : alone.reason,
      clampable: code === 'budget_exceeded' || code === 'call_cost_cap_exceeded',
      downgradeTo: alone.downgradeTo,
      limit: check.limit,
      currentAmount: check.currentAmount,
      reservedAmount: check.reservedAmount,
      remaining: check.remaining,
      estimatedCost: check.estimatedCost,
      currency: check.currency,
      nearLimit: check.nearLimit
    }
    verdicts.push({ ...verdict, outcome: shadowOutcome(verdict, 'refuse') })
  }
  return verdicts
}

/** The decision over the budgets that decide (every one but the shadow budgets). */
function decideChecks (checks: BudgetCheck[], estimate: Money, policy?: ModelPolicy): BudgetConstraintCheck {
  const activeActions = checks.every((check) => check.activeActions.length === 0) ? [] : [...new Set(checks.flatMap((check) => check.activeActions))]
  const cheaper = policy === undefined ? undefined : downgradeOf(policy)
  const downgradeTo = activeActions.includes('auto-downgrade') && cheaper !== undefined && cheaper !== policy?.model ? cheaper : null
  for (const refusal of REFUSALS) {
    const refusing = checks.find(refusal.refuses)
    if (refusing === undefined) continue
    // A full budget, an estimate too large to hold or a restricted model may still take the cheaper model auto-downgrade offers.
    const mayDowngrade = downgradeTo !== null && (refusal.code === 'budget_exceeded' || refusal.code === 'call_cost_cap_exceeded' || refusal.code === 'estimate_out_of_range' || refusal.code === 'model_restricted')
    return outcome(checks, refusing, estimate, activeActions, refusal.code, refusal.reason(refusing, estimate), [refusal.suggestion], mayDowngrade ? downgradeTo : null)
  }
  const binding = bindingBudget(checks)
  const suggestions = activeActions.includes('auto-downgrade') || activeActions.includes('restrict-models')
    ? ['prefer a cheaper model: a budget is past a threshold that restricts or downgrades models']
    : []
  return outcome(checks, binding, estimate, activeActions, null, checks.length === 0 ? 'No budget applies' : 'Within every applicable budget', suggestions, downgradeTo)
}

/** What the binding rule reads of a budget: what is left, its currency, and the call's estimate in that currency. */
export interface RoomForCall {
  remaining: Money
  /** Null: the call's own currency. */
  currency: string | null
  /** The call's estimate in the budget's currency (null: no rate converts it). */
  estimatedCost: Money | null
}

/**
 * The binding budget, defined once: the one with the least room for the call, the first of equals. In one
 * currency, the smaller remaining; across currencies, the fewer such calls left (remaining / estimate,
 * compared exactly by cross-multiplying), which is the smaller remaining counted in the call's currency.
 * Without an estimate in a budget's currency, the smaller remaining. decide() names it in x-budget-id when
 * nothing refuses; getCallerSummary names it too (docs/design-decisions.md).
 */
export function bindingBudget<T extends RoomForCall> (budgets: readonly T[]): T | undefined {
  let binding: T | undefined
  for (const budget of budgets) if (binding === undefined || tighter(budget, binding)) binding = budget
  return binding
}

/** Whether `a` has less room than `b` for the call (bindingBudget's rule). */
function tighter (a: RoomForCall, b: RoomForCall): boolean {
  const estimateA = toUnits(a.estimatedCost ?? '0')
  const estimateB = toUnits(b.estimatedCost ?? '0')
  if (a.currency === b.currency || estimateA === 0n || estimateB === 0n) return toUnits(a.remaining) < toUnits(b.remaining)
  return toUnits(a.remaining) * estimateB < toUnits(b.remaining) * estimateA
}

function outcome (checks: BudgetCheck[], binding: BudgetCheck | undefined, estimate: Money, activeActions: AlertAction[],
  code: RefusalCode | null, reason: string, suggestedActions: string[], downgradeTo: string | null): BudgetConstraintCheck {
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
    currency: binding?.currency ?? null,
    bindingEstimate: binding === undefined ? null : binding.estimatedCost,
    status: binding?.status ?? null,
    activeActions,
    downgradeTo,
    budgets: checks,
    shadow: []
  }
}
