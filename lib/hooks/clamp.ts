// Near the limit, answer instead of refusing (nearLimit 'clamp'): when a call's worst case no longer fits
// a hard budget, find the largest max_tokens whose worst case fits every budget, and forward that. What
// is reserved is the clamped worst case, so a hard budget still cannot be overspent.
import type { FastifyRequest } from 'fastify'
import { toUnits } from '../money.js'
import type { BudgetConstraintCheck } from '../services/decision.js'
import type { CostEstimate } from '../services/estimate.js'
import type { NearLimitPolicy } from '../schemas.js'

const OUTPUT_LIMITS = ['max_tokens', 'max_completion_tokens'] as const

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

/** The output tokens the request asks for at most: its max_tokens or max_completion_tokens, else the model's maximum. */
export function requestedOutputTokens (body: Record<string, unknown>, modelMaximum: number | undefined, obeyed?: 'max_tokens'): number | null {
  const named = (obeyed === undefined ? OUTPUT_LIMITS : [obeyed]).map((field) => body[field]).filter((value): value is number => Number.isInteger(value) && (value as number) > 0)
  return named.length > 0 ? Math.max(...named) : modelMaximum ?? null
}

/**
 * The body with its output limit lowered to `tokens`: each of max_tokens and max_completion_tokens it
 * names, or max_completion_tokens (OpenAI's current name, which every OpenAI chat model takes) when it
 * names neither; and always the field the model's provider obeys when it takes one alone (`obeyed`:
 * DeepSeek's and Mistral's max_tokens), which would otherwise leave the call uncapped there.
 */
export function withOutputLimit (body: Record<string, unknown>, tokens: number, obeyed?: 'max_tokens'): Record<string, unknown> {
  const named: string[] = OUTPUT_LIMITS.filter((field) => body[field] !== undefined && body[field] !== null)
  if (obeyed !== undefined && !named.includes(obeyed)) named.push(obeyed)
  return { ...body, ...Object.fromEntries((named.length > 0 ? named : ['max_completion_tokens']).map((field) => [field, tokens])) }
}

/** The worst case of the call with its output limit set to a number of tokens. */
export type CostAtOutputLimit = (tokens: number) => CostEstimate | Promise<CostEstimate>

/**
 * How to price the request at other output limits: the estimate's own arithmetic (the input counted
 * once), or, for a custom estimate without it, the estimator asked again about a body that differs
 * only in its output limit.
 */
export function costAtOutputLimit (request: FastifyRequest, estimate: CostEstimate, estimateAt: (request: FastifyRequest) => Promise<CostEstimate>): CostAtOutputLimit {
  if (estimate.atOutputLimit !== undefined) return estimate.atOutputLimit
  const body = request.body as Record<string, unknown>
  return async (tokens) => await estimateAt(Object.create(request, { body: { value: withOutputLimit(body, tokens) } }) as FastifyRequest)
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
