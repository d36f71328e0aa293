// What a model's tokens cost: a price table per 1M tokens, and the price book that finds a model's
// entry under the names providers answer with (dated snapshots, aliases). Exact: prices and costs are
// decimals, products are bigints, every cost rounds up.
import { MONEY_SCALE, fromUnits, toUnits, type Money } from '../money.js'

export interface ModelPrice {
  /** Price per 1M input (prompt) tokens. */
  input: Money
  /** Price per 1M output (completion) tokens. */
  output: Money
  /** The most output tokens the model gives when a call names no max_tokens. */
  maxOutputTokens: number
  /** The most input tokens one image part can cost (the largest image at high detail); without it, calls with images are refused. */
  maxImageTokens?: number
  /** Other names of this model that a provider may answer with (dated snapshots need no entry: they are matched anyway). */
  aliases?: string[]
}

export type PriceTable = Record<string, ModelPrice>

/**
 * USD per 1M tokens, the providers' list prices. Image tokens are the worst case of OpenAI's image
 * rules: 8 tiles of 512 px for the tiled models (gpt-4o-mini's tiles cost 5667 tokens each), 1536
 * patches times the model's multiplier for the patch-based gpt-4.1-mini and -nano. Pass your own
 * table in the gate's `prices` option.
 */
export const DEFAULT_PRICES: PriceTable = {
  'gpt-4o': { input: '2.5', output: '10', maxOutputTokens: 16_384, maxImageTokens: 85 + 170 * 8 },
  'gpt-4o-mini': { input: '0.15', output: '0.6', maxOutputTokens: 16_384, maxImageTokens: 2833 + 5667 * 8 },
  'gpt-4.1': { input: '2', output: '8', maxOutputTokens: 32_768, maxImageTokens: 85 + 170 * 8 },
  'gpt-4.1-mini': { input: '0.4', output: '1.6', maxOutputTokens: 32_768, maxImageTokens: 2489 },
  'gpt-4.1-nano': { input: '0.1', output: '0.4', maxOutputTokens: 32_768, maxImageTokens: 3779 }
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

/** A model's entry, under the name the price table gives it. */
export interface PricedModel {
  model: string
  price: ModelPrice
}

/** Finds prices by the names models go by. Never reads through the prototype chain: `__proto__` is just an unknown model. */
export interface PriceBook {
  /** The entry for a model name: exact, then an alias, then the name without a dated snapshot suffix; null when none. */
  resolve: (model: string) => PricedModel | null
  /** Every model in the table, with its price. */
  models: () => PricedModel[]
}

// Snapshot suffixes providers date their models with: gpt-4o-2024-08-06, claude-3-5-sonnet-20241022, gpt-4-0613.
const SNAPSHOT_SUFFIX = /-(?:\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])|\d{4}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])|(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]))$/

export function createPriceBook (table: PriceTable): PriceBook {
  const byName = new Map<string, PricedModel>()
  for (const [model, price] of Object.entries(table)) byName.set(model, { model, price })
  for (const [model, price] of Object.entries(table)) {
    for (const alias of price.aliases ?? []) if (!byName.has(alias)) byName.set(alias, { model, price })
  }
  return {
    resolve (model) {
      return byName.get(model) ?? byName.get(model.replace(SNAPSHOT_SUFFIX, '')) ?? null
    },
    models: () => Object.keys(table).map((model) => byName.get(model)!)
  }
}

const PER_MILLION = 1_000_000n

/** The cost of tokens at a price, rounded up to the last stored decimal (never under). */
export function costOf (price: ModelPrice, inputTokens: number, outputTokens: number): Money {
  const scaled = BigInt(inputTokens) * toUnits(price.input) + BigInt(outputTokens) * toUnits(price.output)
  return fromUnits((scaled + PER_MILLION - 1n) / PER_MILLION)
}

const TOKEN_COUNT = (value: unknown): boolean => Number.isInteger(value) && (value as number) > 0 && (value as number) <= 100_000_000

export function checkPriceTable (prices: PriceTable): string | null {
  for (const [model, price] of Object.entries(prices)) {
    if (typeof price !== 'object' || price === null) return `prices['${model}'] must be { input, output, maxOutputTokens }`
    for (const key of ['input', 'output'] as const) {
      if (typeof price[key] !== 'string' || !/^\d+(\.\d+)?$/.test(price[key]) || (price[key].split('.')[1]?.length ?? 0) > MONEY_SCALE) {
        return `prices['${model}'].${key} must be a decimal string such as "2.5"`
      }
    }
    if (!TOKEN_COUNT(price.maxOutputTokens)) return `prices['${model}'].maxOutputTokens must be a positive integer`
    if (price.maxImageTokens !== undefined && !TOKEN_COUNT(price.maxImageTokens)) return `prices['${model}'].maxImageTokens must be a positive integer`
    if (price.aliases !== undefined && !(Array.isArray(price.aliases) && price.aliases.every((alias) => typeof alias === 'string' && alias !== ''))) {
      return `prices['${model}'].aliases must be a list of model names`
    }
  }
  return null
}
