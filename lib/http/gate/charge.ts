// What an admitted call is charged when its hold ends, and the metadata its usage record keeps.
import type { Money } from '../../kernel/money.js'
import type { TokenUsage } from '../../pricing/index.js'
import type { UsageMetadata } from '../../usage/index.js'
import type { BudgetGateState } from './gate-options.js'
import { shadowMetadata } from './shadow.js'

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

/**
 * The metadata of a gated call's usage record, budgeted or not: what it called, what it used, what it was
 * charged by, and who called. Built field by field (made for every call: no spread of a temporary object).
 */
export function usageMetadata (state: BudgetGateState, usage: TokenUsage | null, pricedModel: string | undefined, charge: Charge): UsageMetadata {
  const modelId = pricedModel ?? state.model
  const metadata: UsageMetadata = { modelId }
  if (usage !== null && usage.model !== modelId) metadata.upstreamModel = storable(usage.model)
  if (state.downgradedFrom !== null) metadata.requestedModel = state.downgradedFrom
  if (state.clampedMaxTokens !== null) metadata.clampedMaxTokens = state.clampedMaxTokens
  metadata.inputTokens = usage?.inputTokens
  metadata.outputTokens = usage?.outputTokens
  if (usage?.cachedInputTokens !== undefined) metadata.cachedInputTokens = usage.cachedInputTokens
  if (usage?.cacheWriteTokens !== undefined) metadata.cacheWriteTokens = usage.cacheWriteTokens
  if (usage?.cacheWrite1hTokens !== undefined) metadata.cacheWrite1hTokens = usage.cacheWrite1hTokens
  if (usage?.priceMultiplier !== undefined) metadata.priceMultiplier = `${usage.priceMultiplier.numerator}/${usage.priceMultiplier.denominator}`
  metadata.estimatedCost = state.estimate
  if (state.check === null) metadata.unchecked = true
  metadata.costBasis = charge.basis
  if (charge.basis === 'estimate') metadata.estimateReason = charge.reason
  metadata.userId = state.caller.user
  metadata.teamId = state.caller.team
  metadata.projectId = state.caller.project
  metadata.organizationId = state.caller.organization
  if (state.caller.tags !== undefined) metadata.tags = state.caller.tags
  if (state.check !== null && state.check.shadow.length > 0) metadata.shadow = shadowMetadata(state.check.shadow)
  return metadata
}

/** A name an upstream sent, made storable: PostgreSQL text holds no NUL and no unpaired surrogate. */
export function storable (text: string): string {
  return text.replace(/\0/g, '').replace(/[\ud800-\udfff]/gu, '\ufffd').slice(0, 200)
}
