// A model's rates, as the price book holds them: the operator's table and the catalog alike.
import type { Money } from '../kernel/money.js'

export interface ModelPrice {
  /** Price per 1M input (prompt) tokens. */
  input: Money
  /** Price per 1M output (completion) tokens. */
  output: Money
  /** Price per 1M cached input tokens (cache reads); without it, cached tokens cost the input price. */
  cachedInput?: Money
  /** Price per 1M tokens written to the prompt cache for 5 minutes (Anthropic); without it, 5/4 of the input price (Anthropic's multiplier). */
  cacheWrite?: Money
  /** Price per 1M tokens written to the prompt cache for an hour (Anthropic); without it, twice the input price. */
  cacheWrite1h?: Money
  /** Other rates for calls with more input tokens: the last tier whose aboveInputTokens the call's input exceeds prices all of its tokens. */
  tiers?: PriceTier[]
  /** The most output tokens the model gives when a call names no max_tokens. */
  maxOutputTokens: number
  /** The most input tokens one image part can cost (the largest image at high detail); without it, calls with images are refused. */
  maxImageTokens?: number
  /** Other names of this model that a provider may answer with (the catalog's own models need none: it knows their snapshots). */
  aliases?: string[]
  /**
   * Output tokens the provider bills past max_tokens, for each choice: a chain of thought that max_tokens
   * does not cap (DeepSeek's reasoner: up to 32K). The worst case adds them to every choice's output.
   */
  reasoningBeyondLimitTokens?: number
  /**
   * The one output-limit field the provider obeys, when it does not take both: DeepSeek and Mistral
   * document only max_tokens, so a body that gives only max_completion_tokens is uncapped there. The
   * estimate then reads that field alone, and clamp writes it.
   */
  outputLimitField?: 'max_tokens'
  /**
   * A fee the provider bills on every call whatever its tokens, per choice (a search model's web search),
   * in the table's currency. Without it a model billed per request (the catalog knows which) is refused.
   */
  perRequest?: Money
}

/** The rates of a call with more than `aboveInputTokens` input tokens (long-context pricing). */
export interface PriceTier {
  aboveInputTokens: number
  input: Money
  output: Money
  cachedInput?: Money
  cacheWrite?: Money
  cacheWrite1h?: Money
}
