// Near the limit, answer instead of refusing (nearLimit 'clamp'): when a call's worst case no longer fits
// a hard budget, find the largest output limit whose worst case fits every budget, and forward that. What
// is reserved is the clamped worst case, so a hard budget still cannot be overspent. Which field holds
// the limit is the API's (lib/apis: OutputLimit); this is the search alone.
import type { FastifyRequest } from 'fastify'
import { withOutputLimit } from '../../model-apis/index.js'
import { toUnits } from '../../kernel/money.js'
import type { BudgetConstraintCheck } from '../../gate/index.js'
import type { CostEstimate } from '../../pricing/index.js'
import type { NearLimitPolicy } from '../../kernel/schemas.js'

/**
 * Whether the refusal may be answered with fewer output tokens: the call has no room (not a block, an
 * approval or a model restriction), and every hard budget without room clamps (its own nearLimit, else
 * the gate's).
 */
export function mayClamp (check: BudgetConstraintCheck, gateDefault: NearLimitPolicy): boolean {
  if (check.canProceed || check.code !== 'budget_exceeded') return false
  const full = check.budgets.filter((budget) => !budget.fits && budget.enforcement === 'hard')
  return full.length > 0 && full.every((budget) => (budget.nearLimit ?? gateDefault) === 'clamp')
}

/**
 * The most the call may now cost, in the call's currency, with every hard budget still fitting: each
 * budget's room scaled back from its currency by the estimate's own conversion (remaining x estimate /
 * the estimate in the budget's currency), rounded down. Null when a budget's conversion is unknown.
 */
export function roomFor (check: BudgetConstraintCheck, estimate: string): bigint | null {
  let room: bigint | null = null
  for (const budget of check.budgets) {
    if (budget.enforcement !== 'hard') continue
    if (budget.estimatedCost === null) return null
    const converted = toUnits(budget.estimatedCost)
    const own = converted === 0n ? toUnits(budget.remaining) : toUnits(budget.remaining) * toUnits(estimate) / converted
    if (room === null || own < room) room = own
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
