// What a model call costs: a price table per 1M tokens, a worst-case estimate before the call, the
// actual cost after. Exact: prices and costs are decimals, products are bigints, every cost rounds up.
import { MONEY_SCALE, fromUnits, toUnits, type Money } from '../money.js'

export interface ModelPrice {
  /** Price per 1M input (prompt) tokens. */
  input: Money
  /** Price per 1M output (completion) tokens. */
  output: Money
  /** The most output tokens the model gives when a call names no max_tokens. */
  maxOutputTokens: number
}

export type PriceTable = Record<string, ModelPrice>

/** USD per 1M tokens, the providers' list prices. Pass your own table in the gate's `prices` option. */
export const DEFAULT_PRICES: PriceTable = {
  'gpt-4o': { input: '2.5', output: '10', maxOutputTokens: 16_384 },
  'gpt-4o-mini': { input: '0.15', output: '0.6', maxOutputTokens: 16_384 },
  'gpt-4.1': { input: '2', output: '8', maxOutputTokens: 32_768 },
  'gpt-4.1-mini': { input: '0.4', output: '1.6', maxOutputTokens: 32_768 },
  'gpt-4.1-nano': { input: '0.1', output: '0.4', maxOutputTokens: 32_768 }
}

/** Still allowed while a budget's restrict-models is in force (unless its alert lists allowedModels). */
export const DEFAULT_CHEAP_MODELS = ['gpt-4o-mini', 'gpt-4.1-mini', 'gpt-4.1-nano']

/** What auto-downgrade switches each model to. */
export const DEFAULT_DOWNGRADES: Record<string, string> = {
  'gpt-4o': 'gpt-4o-mini',
  'gpt-4.1': 'gpt-4.1-mini',
  'gpt-4.1-mini': 'gpt-4.1-nano'
}

export interface TokenUsage {
  model: string
  inputTokens: number
  outputTokens: number
}

const PER_MILLION = 1_000_000n

/** The cost of tokens at a price, rounded up to the last stored decimal (never under). */
export function costOf (price: ModelPrice, inputTokens: number, outputTokens: number): Money {
  const scaled = BigInt(inputTokens) * toUnits(price.input) + BigInt(outputTokens) * toUnits(price.output)
  return fromUnits((scaled + PER_MILLION - 1n) / PER_MILLION)
}

export interface ChatRequestShape {
  model?: unknown
  messages?: unknown
  max_tokens?: unknown
  max_completion_tokens?: unknown
}

/**
 * The worst case of an OpenAI-style chat call: every byte of the prompt as a token (byte-level BPE
 * tokenizers never make a token of less than a byte, and the JSON framing counted here outweighs the
 * chat format's few tokens per message), and all of max_tokens (or the model's maximum) as output.
 */
export function worstCaseTokens (body: ChatRequestShape, price: ModelPrice): { inputTokens: number, outputTokens: number } {
  const inputTokens = Buffer.byteLength(JSON.stringify(body.messages ?? ''), 'utf8')
  const requested = body.max_completion_tokens ?? body.max_tokens
  const outputTokens = typeof requested === 'number' && Number.isInteger(requested) && requested > 0
    ? Math.min(requested, price.maxOutputTokens)
    : price.maxOutputTokens
  return { inputTokens, outputTokens }
}

export function checkPriceTable (prices: PriceTable): string | null {
  for (const [model, price] of Object.entries(prices)) {
    for (const key of ['input', 'output'] as const) {
      if (typeof price?.[key] !== 'string' || !/^\d+(\.\d+)?$/.test(price[key]) || price[key].split('.')[1]?.length! > MONEY_SCALE) {
        return `prices['${model}'].${key} must be a decimal string such as "2.5"`
      }
    }
    if (!Number.isInteger(price.maxOutputTokens) || price.maxOutputTokens <= 0) return `prices['${model}'].maxOutputTokens must be a positive integer`
  }
  return null
}
