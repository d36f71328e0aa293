// Pricing: the price book (the maintained catalog or the operator's table), the tokenizers and the
// worst-case estimate of a call.
import type { Part } from '../kernel/part.js'
import type { PriceBook } from './pricing.js'
import { preloadTokenizers } from './tokens.js'

export { costFromUsage, estimateChatCost, pricedCall } from './estimate.js'
export type { CostEstimate } from './estimate.js'
export { injectedPromptTokens } from './injected-tokens.js'
export { costOf, costOfTokens, highestOutputRate, pricesAt } from './pricing.js'
export type { ModelPrice, PriceBook, PriceMultiplier, PriceTable, PricedModel, TokenUsage } from './pricing.js'
export { chatPromptTokens, encodingFor, tokenCounter } from './tokens.js'

export interface Pricing {
  prices: PriceBook
  /** A model's price-table name (a dated snapshot as its base model): what budgets match models by, everywhere. */
  modelName: (name: string) => string
}

/**
 * The price book calls are priced with (built while the options were checked, lib/options.ts). With `preload`,
 * the estimate's tokenizers load here, once, not on a call (0.1 to 0.4 s each); the catalog knows models of both.
 */
export function createPricing (prices: PriceBook, currency: string, preload: boolean): Part<Pricing> {
  if (preload) preloadTokenizers([...prices.models().map(({ model }) => model), ...(currency === 'USD' ? ['gpt-4o', 'gpt-4'] : [])])
  return { api: { prices, modelName: (name) => prices.resolve(name)?.model ?? name } }
}
