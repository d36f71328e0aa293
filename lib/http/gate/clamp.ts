// Near the limit, answer instead of refusing (nearLimit 'clamp'): when a call's worst case no longer fits
// a hard budget, or is over a cap on one call (a budget's maxCallCost, the caller's x-budget-max-cost), find
// the largest output limit whose worst case fits every budget and every cap, and forward that. What is
// reserved is the clamped worst case, so a hard budget still cannot be overspent. Which field holds
// the limit is the API's (lib/apis: OutputLimit); this is the search alone.
import type { FastifyRequest } from 'fastify'
import { withOutputLimit } from '../../model-apis/index.js'
import { toUnits } from '../../kernel/money.js'
import type { BudgetConstraintCheck } from '../../gate/index.js'
import type { CostEstimate } from '../../pricing/index.js'
import type { NearLimitPolicy } from '../../kernel/schemas.js'

/**
 * Whether the refusal may be answered with fewer output tokens: the call has no room or is over a budget's
 * cap on one call (not a block, an approval or a model restriction), and every budget that refuses it for
 * that clamps (its own nearLimit, else the gate's): each hard budget without room, and each budget, hard or
 * soft, whose cap the call is over.
 */
export function mayClamp (check: BudgetConstraintCheck, gateDefault: NearLimitPolicy): boolean {
  if (check.canProceed || (check.code !== 'budget_exceeded' && check.code !== 'call_cost_cap_exceeded')) return false
  const refusing = check.budgets.filter((budget) => budget.overCap || (!budget.fits && budget.enforcement === 'hard'))
  return refusing.length > 0 && refusing.every((budget) => (budget.nearLimit ?? gateDefault) === 'clamp')
}

/**
 * Whether a call over the caller's own cap (x-budget-max-cost, or the operator's for its key) may be clamped
 * to it rather than refused: the gate's nearLimit is 'clamp', or the call meets hard budgets and every one of
 * them clamps (mayClamp's rule for the budgets that would refuse it: a caller's cap is no budget's, so the
 * budgets that can refuse, the hard ones, say).
 */
export function mayClampToCallerCap (check: BudgetConstraintCheck | null, gateDefault: NearLimitPolicy): boolean {
  if (gateDefault === 'clamp') return true
  if (check === null) return false // the budgets could not be read: the gate's default alone
  const hard = check.budgets.filter((budget) => budget.enforcement === 'hard')
  return hard.length > 0 && hard.every((budget) => (budget.nearLimit ?? gateDefault) === 'clamp')
}

/**
 * The most the call may now cost, in the call's currency, with every hard budget still fitting and every
 * budget's cap on one call kept: each budget's room (and cap) scaled back from its currency by the estimate's
 * own conversion (amount x estimate / the estimate in the budget's currency), rounded down, so the clamped
 * estimate converted again (rounded up) is still within it. Null when a budget's conversion is unknown.
 */
export function roomFor (check: BudgetConstraintCheck, estimate: string): bigint | null {
  let room: bigint | null = null
  for (const budget of check.budgets) {
    const bounds = [...(budget.enforcement === 'hard' ? [budget.remaining] : []), ...(budget.maxCallCost === null ? [] : [budget.maxCallCost])]
    if (bounds.length === 0) continue
    if (budget.estimatedCost === null) return null
    const converted = toUnits(budget.estimatedCost)
    for (const bound of bounds) {
      const own = converted === 0n ? toUnits(bound) : toUnits(bound) * toUnits(estimate) / converted
      if (room === null || own < room) room = own
    }
  }
  return room
}

/** The worst case of the call with its output limit set to a number of tokens. */
export type CostAtOutputLimit = (tokens: number) => CostEstimate | Promise<CostEstimate>

/**
 * How to price the request at other output limits: the estimate's own arithmetic (the input counted
 * once), or, for a custom estimate without it, the estimator asked again about a body that differs
 * only in its output limit (`withLimit`: the API's own field; chat completions' by default).
 */
export function costAtOutputLimit (request: FastifyRequest, estimate: CostEstimate, estimateAt: (request: FastifyRequest) => Promise<CostEstimate>,
  withLimit: (body: Record<string, unknown>, tokens: number) => Record<string, unknown> = withOutputLimit): CostAtOutputLimit {
  if (estimate.atOutputLimit !== undefined) return estimate.atOutputLimit
  const body = request.body as Record<string, unknown>
  return async (tokens) => await estimateAt(Object.create(request, { body: { value: withLimit(body, tokens) } }) as FastifyRequest)
}

/**
 * The largest output limit from `floor` to `below - 1` whose worst case costs at most `room` (binary
 * search: the estimate grows with the limit), with its estimate; null when not even `floor` fits.
 */
export async function largestAffordable (
  costAt: CostAtOutputLimit, floor: number, below: number, room: bigint
): Promise<{ tokens: number, estimate: CostEstimate } | null> {
  const at = async (tokens: number) => ({ tokens, estimate: await costAt(tokens) })
  if (below <= floor) return null
  let best = await at(floor)
  if (toUnits(best.estimate.amount) > room) return null
  let low = floor + 1
  let high = below - 1
  while (low <= high) {
    const middle = Math.floor((low + high) / 2)
    const tried = await at(middle)
    if (toUnits(tried.estimate.amount) <= room) { best = tried; low = middle + 1 } else high = middle - 1
  }
  return best
}
