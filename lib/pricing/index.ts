// Pricing: the price book (the maintained catalog or the operator's table), the tokenizers and the
// worst-case estimate of a call.
export { estimateChatCost, pricedCall } from './estimate.js'
export type { CostEstimate } from './estimate.js'
export { injectedPromptTokens } from './injected-tokens.js'
export { costOf, costOfTokens, highestOutputRate, pricesAt } from './pricing.js'
export type { ModelPrice, PriceBook, PriceMultiplier, PriceTable, PricedModel, TokenUsage } from './pricing.js'
export { chatPromptTokens, encodingFor, tokenCounter } from './tokens.js'
