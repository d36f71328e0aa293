// What a model's tokens cost: the operator's price table over the maintained catalog
// (@pydantic/genai-prices, lib/pricing/price-catalog.ts), per 1M tokens, at the rates in force when the
// call was made. Exact: prices and costs are decimals, products are bigints, every cost rounds up.
import { MONEY_SCALE, fromUnits, toUnits, type Money } from '../kernel/money.js'
import { catalogEntry } from './price-catalog.js'
import type { ModelPrice, PriceTier } from './model-price.js'

export type { ModelPrice, PriceTier } from './model-price.js'

export type PriceTable = Record<string, ModelPrice>

/**
 * USD per 1M tokens, the providers' list prices as a table of your own (the gate's default is the
 * catalog, which knows these models and their limits too). Image tokens are the worst case of OpenAI's image
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

/** What the provider reported a call used: its tokens, and the model it names (maybe a dated snapshot). */
export interface TokenUsage extends BilledTokens {
  model: string
}

/** A multiple of every rate of a call, as a fraction of positive integers so that its cost stays exact. */
export interface PriceMultiplier {
  numerator: number
  denominator: number
}

/** A model's entry, under the name the price table gives it. */
export interface PricedModel {
  model: string
  price: ModelPrice
}

/** Finds prices by the names models go by. Never reads through the prototype chain: `__proto__` is just an unknown model. */
export interface PriceBook {
  /**
   * The entry for a model name at an instant (default now): the operator's table (its names and
   * aliases) first, then the catalog, which knows dated snapshots and the rates in force at `at`. A
   * catalog model that a table entry's name (or alias) resolves to is priced by that entry, under its
   * name. Null when neither knows the model.
   */
  resolve: (model: string, at?: Date) => PricedModel | null
  /** Why `model` has no price, when the catalog knows it but cannot bound what its provider bills (null otherwise). */
  refusal?: (model: string, at?: Date) => string | null
  /** The operator's table, each model with its price. The catalog's hundreds of models are not listed: ask resolve. */
  models: () => PricedModel[]
}

export interface PriceBookOptions {
  /**
   * Price the models the table does not name at the catalog's rates (USD list prices). Default true.
   * Off, the catalog still tells which model a dated snapshot is, and the table alone prices it.
   */
  catalogPrices?: boolean
}

export function createPriceBook (table: PriceTable, { catalogPrices = true }: PriceBookOptions = {}): PriceBook {
  const byName = new Map<string, PricedModel>()
  for (const [model, price] of Object.entries(table)) byName.set(model, { model, price })
  for (const [model, price] of Object.entries(table)) {
    for (const alias of price.aliases ?? []) if (!byName.has(alias)) byName.set(alias, { model, price })
  }
  // The catalog models the table overrides: each entry takes the model its name resolves to there
  // ('gpt-4o-mini' takes gpt-4o-mini and its snapshots); an entry named as the catalog names it wins a tie.
  const overrides = new Map<string, PricedModel>()
  for (const [name, entry] of byName) {
    const model = catalogEntry(name, new Date())?.model
    if (model !== undefined && (!overrides.has(model) || name === model)) overrides.set(model, entry)
  }
  return {
    resolve (model, at = new Date()) {
      const own = byName.get(model)
      if (own !== undefined) return own
      const listed = catalogEntry(model, at)
      // A name the catalog refuses stays refused: the override of the model it is found under
      // (gpt-4o-mini for gpt-4o-mini-search-preview) prices a call billed otherwise. Only an entry
      // naming it exactly (or by alias) prices it, and that entry says how (perRequest, checkPriceTable).
      if (listed === null || listed.refused !== undefined) return null
      const overridden = overrides.get(listed.model)
      if (overridden !== undefined) return overridden
      return catalogPrices && listed.price !== null ? { model: listed.model, price: listed.price } : null
    },
    refusal (model, at = new Date()) {
      return byName.has(model) ? null : catalogEntry(model, at)?.refused ?? null
    },
    models: () => Object.keys(table).map((model) => byName.get(model)!)
  }
}

/** The same book with its default instant fixed: every price a call needs, from its estimate to its settlement, at the rates in force when it was made. */
export function pricesAt (book: PriceBook, instant: Date): PriceBook {
  return { resolve: (model, at = instant) => book.resolve(model, at), refusal: (model, at = instant) => book.refusal?.(model, at) ?? null, models: book.models }
}

const PER_MILLION = 1_000_000n

/** The rates of a call with this many input tokens: the price's own, or those of the last tier it is above. */
export function ratesFor (price: ModelPrice, inputTokens: number): { input: Money, output: Money, cachedInput: Money } {
  const rates = ratesInForce(price, inputTokens)
  return { input: rates.input, output: rates.output, cachedInput: rates.cachedInput ?? rates.input }
}

function ratesInForce (price: ModelPrice, inputTokens: number): PriceTier | ModelPrice {
  let rates: PriceTier | ModelPrice = price
  for (const tier of price.tiers ?? []) if (inputTokens > tier.aboveInputTokens) rates = tier
  return rates
}

/** The highest output rate of a price, over its tiers: what "this model's output price" means for a cap. */
export function highestOutputRate (price: ModelPrice): Money {
  return (price.tiers ?? []).reduce((highest, tier) => toUnits(tier.output) > toUnits(highest) ? tier.output : highest, price.output)
}

/**
 * The cost of tokens at a price, rounded up to the last stored decimal (never under). Cached input
 * tokens (a part of inputTokens) cost the cache-read rate, the rest the input rate; the tier is chosen
 * by all input tokens. Without cached tokens it is the worst case of that input (a cache read never
 * costs more than a fresh token).
 */
export function costOf (price: ModelPrice, inputTokens: number, outputTokens: number, cachedInputTokens = 0): Money {
  return costOfTokens(price, { inputTokens, outputTokens, cachedInputTokens })
}

/** A call's tokens by how they are billed; the cached and written ones are parts of inputTokens. */
export interface BilledTokens {
  /** Every input token, cached ones included (OpenAI's prompt_tokens). */
  inputTokens: number
  outputTokens: number
  /** Of inputTokens, those read from the provider's prompt cache (OpenAI's usage.prompt_tokens_details.cached_tokens). */
  cachedInputTokens?: number
  /**
   * Of inputTokens, those written to the provider's prompt cache for 5 minutes (Anthropic's
   * cache_creation_input_tokens, or cache_creation.ephemeral_5m_input_tokens), at the cache-write rate.
   */
  cacheWriteTokens?: number
  /** Of inputTokens, those written to the cache for an hour (cache_creation.ephemeral_1h_input_tokens), at the 1-hour write rate. */
  cacheWrite1hTokens?: number
  /**
   * The multiple of the model's rates the provider billed this call at (Anthropic's US-only inference:
   * 11/10, lib/model-apis/messages.ts); without it, the rates themselves. Positive safe integers: the caller checks them.
   */
  priceMultiplier?: PriceMultiplier
}

// Rates are kept in quarters of a unit, so that a write rate of 5/4 of the input rate is exact.
const QUARTERS = 4n

/** A cache-write rate in quarters of a unit: the rates' own, else Anthropic's multiple of their input rate (5/4 for 5 minutes, 2 for an hour). */
function writeRateQuarters (rates: { input: Money, cacheWrite?: Money | undefined, cacheWrite1h?: Money | undefined }, ttl: '5m' | '1h'): bigint {
  const own = ttl === '5m' ? rates.cacheWrite : rates.cacheWrite1h
  return own === undefined ? toUnits(rates.input) * (ttl === '5m' ? 5n : 8n) : toUnits(own) * QUARTERS
}

/**
 * The cost of a call's tokens at a price, rounded up once to the last stored decimal (never under):
 * cache reads at the cache-read rate, 5-minute and 1-hour cache writes at their write rates (the
 * price's own, else Anthropic's multipliers of the input rate: 5/4 and 2, exact), the rest of the
 * input at the input rate; the tier is chosen by all input tokens, as Anthropic's long-context rates
 * are; all of it times the price multiplier, if any, before the one rounding.
 */
export function costOfTokens (price: ModelPrice, tokens: BilledTokens): Money {
  const rates = ratesInForce(price, tokens.inputTokens)
  const cached = tokens.cachedInputTokens ?? 0
  const writes = tokens.cacheWriteTokens ?? 0
  const writes1h = tokens.cacheWrite1hTokens ?? 0
  const input = toUnits(rates.input)
  const scaled = QUARTERS * (BigInt(tokens.inputTokens - cached - writes - writes1h) * input +
    BigInt(cached) * toUnits(rates.cachedInput ?? rates.input) + BigInt(tokens.outputTokens) * toUnits(rates.output)) +
    BigInt(writes) * writeRateQuarters(rates, '5m') + BigInt(writes1h) * writeRateQuarters(rates, '1h')
  const multiplier = tokens.priceMultiplier
  const numerator = scaled * BigInt(multiplier?.numerator ?? 1)
  const denominator = QUARTERS * PER_MILLION * BigInt(multiplier?.denominator ?? 1)
  return fromUnits((numerator + denominator - 1n) / denominator)
}

const TOKEN_COUNT = (value: unknown): boolean => Number.isInteger(value) && (value as number) > 0 && (value as number) <= 100_000_000
const RATE = (value: unknown): boolean => typeof value === 'string' && /^\d+(\.\d+)?$/.test(value) && (value.split('.')[1]?.length ?? 0) <= MONEY_SCALE

/** The problem with a set of rates, or null: decimal strings, and a cache read no dearer than a fresh token (the estimate prices every input token at the input rate). */
function rateProblem (rates: { input: unknown, output: unknown, cachedInput?: unknown, cacheWrite?: unknown, cacheWrite1h?: unknown }, at: string): string | null {
  for (const key of ['input', 'output'] as const) {
    if (!RATE(rates[key])) return `${at}.${key} must be a decimal string such as "2.5"`
  }
  for (const key of ['cacheWrite', 'cacheWrite1h'] as const) {
    if (rates[key] !== undefined && !RATE(rates[key])) return `${at}.${key} must be a decimal string such as "3.75"`
  }
  if (rates.cachedInput === undefined) return null
  if (!RATE(rates.cachedInput)) return `${at}.cachedInput must be a decimal string such as "1.25"`
  return toUnits(rates.cachedInput as string) > toUnits(rates.input as string) ? `${at}.cachedInput must not be more than input` : null
}

export function checkPriceTable (prices: PriceTable): string | null {
  for (const [model, price] of Object.entries(prices)) {
    if (typeof price !== 'object' || price === null) return `prices['${model}'] must be { input, output, maxOutputTokens }`
    const problem = rateProblem(price, `prices['${model}']`)
    if (problem !== null) return problem
    if (price.tiers !== undefined) {
      if (!Array.isArray(price.tiers)) return `prices['${model}'].tiers must be a list of { aboveInputTokens, input, output, cachedInput? }`
      let previous: PriceTier = { aboveInputTokens: 0, input: price.input, output: price.output, ...(price.cacheWrite === undefined ? {} : { cacheWrite: price.cacheWrite }), ...(price.cacheWrite1h === undefined ? {} : { cacheWrite1h: price.cacheWrite1h }) }
      for (const [index, tier] of price.tiers.entries()) {
        const at = `prices['${model}'].tiers.${index}`
        if (typeof tier !== 'object' || tier === null) return `${at} must be { aboveInputTokens, input, output, cachedInput? }`
        const tierProblem = rateProblem(tier, at)
        if (tierProblem !== null) return tierProblem
        if (!TOKEN_COUNT(tier.aboveInputTokens) || tier.aboveInputTokens <= previous.aboveInputTokens && index > 0) return `${at}.aboveInputTokens must be a positive integer, above the tier before`
        // Rates that fell with more input would make the worst-case input's cost no bound of a smaller call's.
        if (toUnits(tier.input) < toUnits(previous.input) || toUnits(tier.output) < toUnits(previous.output) ||
          writeRateQuarters(tier, '5m') < writeRateQuarters(previous, '5m') || writeRateQuarters(tier, '1h') < writeRateQuarters(previous, '1h')) return `${at} must not be cheaper than the rates before it`
        previous = tier
      }
    }
    if (!TOKEN_COUNT(price.maxOutputTokens)) return `prices['${model}'].maxOutputTokens must be a positive integer`
    if (price.maxImageTokens !== undefined && !TOKEN_COUNT(price.maxImageTokens)) return `prices['${model}'].maxImageTokens must be a positive integer`
    if (price.aliases !== undefined && !(Array.isArray(price.aliases) && price.aliases.every((alias) => typeof alias === 'string' && alias !== ''))) {
      return `prices['${model}'].aliases must be a list of model names`
    }
    if (price.reasoningBeyondLimitTokens !== undefined && !(price.reasoningBeyondLimitTokens === 0 || TOKEN_COUNT(price.reasoningBeyondLimitTokens))) {
      return `prices['${model}'].reasoningBeyondLimitTokens must be a non-negative integer`
    }
    if (price.outputLimitField !== undefined && price.outputLimitField !== 'max_tokens') return `prices['${model}'].outputLimitField must be 'max_tokens' when given`
    if (price.perRequest !== undefined && !RATE(price.perRequest)) return `prices['${model}'].perRequest must be a decimal string such as "0.03"`
    // An entry must bound what the catalog knows its model bills beyond tokens, or the table would
    // price a call under its bill: a fee on every call, a chain of thought past max_tokens.
    for (const name of [model, ...(Array.isArray(price.aliases) ? price.aliases : [])]) {
      const listed = catalogEntry(name, new Date())
      if (listed?.billedPerRequest === true && price.perRequest === undefined) {
        return `prices['${model}'] needs perRequest: ${name} ${listed.refused ?? 'bills a fee on every call'}`
      }
      const reasoning = listed?.price?.reasoningBeyondLimitTokens ?? 0
      if (reasoning > (price.reasoningBeyondLimitTokens ?? 0)) {
        return `prices['${model}'].reasoningBeyondLimitTokens must be at least ${reasoning}: ${name} bills reasoning past max_tokens`
      }
    }
  }
  return null
}
