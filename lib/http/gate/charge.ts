// What an admitted call is charged when its hold ends, and the metadata its usage record keeps.
import type { Money } from '../../kernel/money.js'
import type { TokenUsage } from '../../pricing/index.js'
import type { UsageMetadata } from '../../usage/index.js'
import type { BudgetGateState } from './gate-options.js'

/** What a call is charged when its hold ends, and why. */
export interface Charge {
  cost: Money | null
  basis: 'usage' | 'estimate' | 'released'
  reason?: 'not-served' | 'no-usage' | 'unpriced-model'
}

/**
 * The one rule for ending a hold. Not admitted (refused, failed, or the client left before the handler
 * ran): released. Usage reported: its cost, or the estimate when its model has no price. No usage: an
 * error response released (nothing was served), anything else charged at the estimate (served, or
 * cut off while the upstream call was in flight: never free).
 */
export function chargeFor (admitted: boolean, usage: TokenUsage | null, statusCode: number, estimate: Money, actualCost: (usage: TokenUsage) => Money | null): Charge {
  if (!admitted) return { cost: null, basis: 'released', reason: 'not-served' }
  if (usage !== null) {
    const actual = actualCost(usage)
    return actual === null ? { cost: estimate, basis: 'estimate', reason: 'unpriced-model' } : { cost: actual, basis: 'usage' }
  }
  if (statusCode >= 400) return { cost: null, basis: 'released', reason: 'not-served' }
  return { cost: estimate, basis: 'estimate', reason: 'no-usage' }
}

/** The metadata of a gated call's usage record, budgeted or not: what it called, what it used, what it was charged by, and who called. */
export function usageMetadata (state: BudgetGateState, usage: TokenUsage | null, pricedModel: string | undefined, charge: Charge): UsageMetadata {
  const modelId = pricedModel ?? state.model
  return {
    modelId,
    ...(usage !== null && usage.model !== modelId ? { upstreamModel: storable(usage.model) } : {}),
    ...(state.downgradedFrom === null ? {} : { requestedModel: state.downgradedFrom }),
    ...(state.clampedMaxTokens === null ? {} : { clampedMaxTokens: state.clampedMaxTokens }),
    inputTokens: usage?.inputTokens,
    outputTokens: usage?.outputTokens,
    ...(usage?.cachedInputTokens === undefined ? {} : { cachedInputTokens: usage.cachedInputTokens }),
    ...(usage?.cacheWriteTokens === undefined ? {} : { cacheWriteTokens: usage.cacheWriteTokens }),
    ...(usage?.cacheWrite1hTokens === undefined ? {} : { cacheWrite1hTokens: usage.cacheWrite1hTokens }),
    ...(usage?.priceMultiplier === undefined ? {} : { priceMultiplier: `${usage.priceMultiplier.numerator}/${usage.priceMultiplier.denominator}` }),
    estimatedCost: state.estimate,
    ...(state.check === null ? { unchecked: true } : {}),
    costBasis: charge.basis,
    ...(charge.basis === 'estimate' ? { estimateReason: charge.reason } : {}),
    userId: state.caller.user,
    teamId: state.caller.team,
    projectId: state.caller.project,
    organizationId: state.caller.organization,
    ...(state.caller.tags === undefined ? {} : { tags: state.caller.tags })
  }
}

/** A name an upstream sent, made storable: PostgreSQL text holds no NUL and no unpaired surrogate. */
export function storable (text: string): string {
  return text.replace(/\0/g, '').replace(/[\ud800-\udfff]/gu, '\ufffd').slice(0, 200)
}
