// The default price source: @pydantic/genai-prices' catalog, read as exact decimals. Its data ships
// inside the package; its only remote path (updatePrices) is never called here, so pricing does no I/O.
import { calcPrice, type ModelPrice as CatalogPrice, type TieredPrices } from '@pydantic/genai-prices'
import { MONEY_SCALE, normalizeMoney, numberToDecimal, toUnits, type Money } from '../kernel/money.js'
import type { ModelPrice, PriceTier } from './model-price.js'

/**
 * A model the catalog knows, under its name there. `price` is null when the gate cannot bound what the
 * provider bills for it; `refused` then says why, and `billedPerRequest` when the reason is a fee on
 * every call (an operator's table that names the model must give that fee: pricing.ts).
 */
export interface CatalogEntry {
  model: string
  price: ModelPrice | null
  refused?: string
  billedPerRequest?: true
}

/** What the gate makes of one catalog model: priced, with the rule that bounds its output, or refused with a reason. */
export type CatalogVerdict =
  | { price: ModelPrice, outputBound: string }
  | { price: null, refused: string, billedPerRequest?: true }

/**
 * A reply is never longer than the context window it is written into; a model whose catalog entry
 * gives no window has no bound but the price table's ceiling: a call to it without max_tokens is
 * estimated at that ceiling (and so refused by any budget), one with max_tokens at what it asks.
 */
export const UNBOUNDED_OUTPUT_TOKENS = 100_000_000

/**
 * What the catalog does not say: the most output tokens a model gives (smaller than its context
 * window) and the worst case of one image part (see DEFAULT_PRICES for how those are reckoned). A
 * bound here must never be under the provider's: too large only makes estimates larger.
 */
const KNOWN_LIMITS: Record<string, { maxOutputTokens: number, maxImageTokens?: number }> = {
  'gpt-4o': { maxOutputTokens: 16_384, maxImageTokens: 85 + 170 * 8 },
  'gpt-4o-2024-05-13': { maxOutputTokens: 4096, maxImageTokens: 85 + 170 * 8 },
  'gpt-4o-mini': { maxOutputTokens: 16_384, maxImageTokens: 2833 + 5667 * 8 },
  'gpt-4.1': { maxOutputTokens: 32_768, maxImageTokens: 85 + 170 * 8 },
  'gpt-4.1-mini': { maxOutputTokens: 32_768, maxImageTokens: 2489 },
  'gpt-4.1-nano': { maxOutputTokens: 32_768, maxImageTokens: 3779 },
  o3: { maxOutputTokens: 100_000 },
  'o4-mini': { maxOutputTokens: 100_000 },
  'claude-3-5-sonnet': { maxOutputTokens: 8192 },
  'claude-sonnet-4-0': { maxOutputTokens: 64_000 },
  'gemini-2.5-pro': { maxOutputTokens: 65_536 },
  'gemini-2.5-flash': { maxOutputTokens: 65_536 },
  // DeepSeek's API: max_tokens up to 64K (V3.2); the catalog's window (64,000) is the R1 era's.
  'deepseek-reasoner': { maxOutputTokens: 65_536 }
}

/**
 * Long-context rates the catalog leaves out, by provider and catalog model. Anthropic's 1M-token
 * context beta (anthropic-beta: context-1m-2025-08-07, a header no estimate sees) billed a Claude
 * Sonnet 4 request over 200K input tokens at these rates for all of its tokens (Anthropic's pricing,
 * "Long context pricing": $6 input, $22.50 output per 1M, and the cache multipliers on them: reads
 * $0.60, 5-minute writes $7.50, 1-hour writes $12), and Vertex AI billed its Claude Sonnet 4 the same.
 * The catalog has the tier for Sonnet 4.5, and for Opus 4.6 and Sonnet 4.6 before 13 March 2026 (from
 * then their 1M window bills at the base rates); not for Sonnet 4. Each rate is merged into the
 * catalog's, never below it (exactPrice); a rate the catalog does not give keeps its own rule (a
 * 1-hour write without one is twice the tier's input). Kept beyond the beta's life (August 2025 to 30
 * April 2026): a Sonnet 4 request over 200K input tokens is refused outside it, and billed nothing.
 */
const SONNET_4_LONG_CONTEXT: PriceTier = { aboveInputTokens: 200_000, input: '6', output: '22.5', cachedInput: '0.6', cacheWrite: '7.5', cacheWrite1h: '12' }
const LONG_CONTEXT_TIERS: Record<string, Record<string, PriceTier>> = {
  anthropic: { 'claude-sonnet-4-0': SONNET_4_LONG_CONTEXT },
  google: { 'claude-4-sonnet': SONNET_4_LONG_CONTEXT }
}

/**
 * How each provider bills output against the request's max_tokens, as its documentation states: the
 * rule that makes `min(max_tokens, maxOutputTokens)` (plus `reasoningBeyondLimitTokens` where a
 * provider bills a chain of thought past the cap) a bound of the output billed. A provider not listed
 * has not been checked: its models are refused, and an operator who knows its rule names them in the
 * price table. test/price-catalog.test.ts goes through every catalog model and asserts a rule or a refusal.
 */
const OUTPUT_BOUNDS: Record<string, string> = {
  openai: 'max_completion_tokens caps every completion token, reasoning tokens included (OpenAI reasoning guide); o-series models refuse max_tokens',
  anthropic: 'max_tokens caps every output token; extended thinking\'s budget_tokens must be below max_tokens (Anthropic extended thinking)',
  // Vertex AI's Claude models are Anthropic's, billed the same way.
  google: 'max_tokens (maxOutputTokens) caps the response and the thinking tokens together (Gemini thinking guide)',
  mistral: 'max_tokens caps the completion; Magistral\'s reasoning is part of it (thinking chunks of the same completion)',
  deepseek: 'max_tokens caps deepseek-chat\'s answer; the thinking models bill a chain of thought past it: see REASONING_BEYOND_LIMIT'
}

/** Providers whose APIs document max_tokens alone: max_completion_tokens is not what caps their output. */
const MAX_TOKENS_ONLY = new Set(['deepseek', 'mistral'])

/**
 * Output the provider bills past max_tokens: DeepSeek's reasoner (R1) takes max_tokens as the final
 * answer's limit and bills its chain of thought of up to 32K tokens on top (DeepSeek API docs,
 * "Reasoning Model": "the CoT output can reach up to 32K tokens"). Every DeepSeek model but the
 * non-thinking deepseek-chat gets the allowance: the V3.1+ names think by default.
 */
const REASONING_BEYOND_LIMIT: Record<string, (model: string) => number> = {
  deepseek: (model) => model === 'deepseek-chat' ? 0 : 32_768
}

/**
 * Models that bill a fee on every call whatever the request says: search models (gpt-4o-search-preview
 * and its mini, whose catalog entry is plain gpt-4o-mini's) search the web on each call and bill the
 * search per call; deep-research models run searches and tools of their own. Matched on the name asked
 * for and on the catalog's model.
 */
const BILLED_PER_REQUEST = /search|deep-research/i

/** Keys for outputs a model makes by its nature (an image model, a voice model) at rates of their own. */
const OUTPUT_MODALITY_KEYS = ['output_audio_mtok', 'output_image_mtok', 'output_video_mtok']

/** The catalog's keys that an OpenAI-style usage prices: input, output and cache-read tokens. */
const TOKEN_KEYS = { input: 'input_mtok', output: 'output_mtok', cachedInput: 'cache_read_mtok' } as const
/**
 * Keys a gated chat call cannot run up: parts the estimate refuses (audio, images, video, documents in),
 * tools it does not forward (web and file search, any tool but a function: estimate.ts), and cache
 * writes where the provider writes only on request (EXPLICIT_CACHE_WRITES). Any other key (a fee per
 * request, a separate rate for reasoning or citations, a key added later) could bill past the
 * estimate: such a model is not priced from the catalog, and the operator's table must name it.
 */
const NOT_BILLED_KEYS = new Set([
  'cache_write_mtok', 'cache_write_1h_mtok', 'web_searches_kcount', 'storage_searches_kcount',
  'input_audio_mtok', 'output_audio_mtok', 'cache_audio_read_mtok', 'audio_hours', 'input_audio_hours',
  'input_image_mtok', 'cache_image_read_mtok', 'output_image_mtok', 'input_video_mtok', 'output_video_mtok',
  'input_document_kpages', 'input_annotated_document_kpages'
])

/**
 * Providers that write a prompt to their cache only when the request asks: Anthropic (and Claude on
 * Vertex, the catalog's google entries with write rates) on a `cache_control` mark, Gemini on
 * `cachedContent`; chat completions refuses both fields (estimate.ts), so a gated chat call never
 * writes, and the Messages API prices the writes it asks for at these providers' write rates
 * (cacheWrite, cacheWrite1h: lib/model-apis/messages.ts). Any other
 * provider that bills writes caches automatically (OpenAI: any call may write its whole prompt, and
 * its usage does not say which prompt tokens were written): its uncached prompt tokens are priced at
 * the higher of the input and cache-write rates, in the estimate and the settlement alike. That bounds
 * the bill, and is over it by at most the write premium (1.25x input in the catalog) when nothing is written.
 */
const EXPLICIT_CACHE_WRITES = new Set(['anthropic', 'google'])
const CACHE_WRITE_KEY = 'cache_write_mtok'
const CACHE_WRITE_1H_KEY = 'cache_write_1h_mtok'

/** OpenAI's embedding models: input only, so the catalog gives them no output rate (their output costs 0). */
const EMBEDDING_MODEL = /^text-embedding-(?:3-small|3-large|ada-002)(?:-|$)/

/** Resolutions of names whose prices never change, kept; bounded, since names come from callers. */
const CACHE_LIMIT = 1024
const fixed = new Map<string, CatalogEntry | null>()

/** The catalog's model for a name (dated snapshots and aliases included) and its price at an instant; null for a model it does not know. */
export function catalogEntry (name: string, at: Date): CatalogEntry | null {
  const cached = fixed.get(name)
  if (cached !== undefined) return cached
  // The catalog trims what it is given; a name with spaces around it is not a model a provider answers to.
  if (name === '' || name !== name.trim() || Number.isNaN(at.getTime())) return null
  let found: ReturnType<typeof calcPrice>
  try {
    // Empty usage: only the model and the prices in force at `at` are read, never the library's float totals.
    found = calcPrice({}, name, { timestamp: at })
    // The catalog finds OpenAI's models by name alone only when they start gpt-, o1, o3 or o4: its
    // embedding models are looked up under their provider.
    if (found === null && EMBEDDING_MODEL.test(name)) found = calcPrice({}, name, { providerId: 'openai', timestamp: at })
  } catch {
    return null
  }
  const priced = found === null ? null : entryOf(assessCatalogModel(found.provider.id, found.model.id, found.model_price, found.model.context_window, name))
  // Conditional prices (a change on a date, an off-peak window) depend on the instant: resolved each time.
  if (found === null || !Array.isArray(found.model.prices)) {
    if (fixed.size >= CACHE_LIMIT) fixed.delete(fixed.keys().next().value!)
    fixed.set(name, priced)
  }
  return priced
}

function entryOf (verdict: CatalogVerdict & { model: string }): CatalogEntry {
  return verdict.price !== null
    ? { model: verdict.model, price: verdict.price }
    : { model: verdict.model, price: null, refused: verdict.refused, ...(verdict.billedPerRequest === true ? { billedPerRequest: true as const } : {}) }
}

/**
 * Whether the gate can price one catalog model (of `provider`, with the rates in force) so that its
 * worst case bounds every way the provider bills it, and by which output rule; else why not. `asked`
 * is the name a caller used, when it is not the catalog's (a search model found under its base model).
 */
export function assessCatalogModel (provider: string, id: string, rates: CatalogPrice, contextWindow: number | undefined, asked = id): CatalogVerdict & { model: string } {
  const refuse = (refused: string, billedPerRequest = false) => ({ model: id, price: null, refused, ...(billedPerRequest ? { billedPerRequest: true as const } : {}) })
  if (BILLED_PER_REQUEST.test(asked) || BILLED_PER_REQUEST.test(id)) return refuse('bills a web search (a fee per call) on every call, which the catalog gives no bounded rate for', true)
  for (const key of Object.keys(rates)) {
    if (rates[key] === undefined) continue
    if (OUTPUT_MODALITY_KEYS.includes(key)) return refuse(`makes output billed at a rate of its own (${key}), which max_tokens at the output rate does not bound`)
    if (!Object.values(TOKEN_KEYS).includes(key as never) && !NOT_BILLED_KEYS.has(key)) return refuse(`bills ${key}, which no token count bounds`)
  }
  const outputBound = Object.hasOwn(OUTPUT_BOUNDS, provider) ? OUTPUT_BOUNDS[provider]! : null
  if (outputBound === null) return refuse(`is a ${provider} model, and how ${provider} bills output past max_tokens (reasoning) is not established: name the model in the price table to price it`)
  const longContext = Object.hasOwn(LONG_CONTEXT_TIERS, provider) && Object.hasOwn(LONG_CONTEXT_TIERS[provider]!, id) ? LONG_CONTEXT_TIERS[provider]![id] : undefined
  const price = exactPrice(id, rates, contextWindow, !EXPLICIT_CACHE_WRITES.has(provider), longContext)
  if (price === null) return refuse('has rates that cannot be stored exactly, or a cache read dearer than a fresh token')
  const reasoning = Object.hasOwn(REASONING_BEYOND_LIMIT, provider) ? REASONING_BEYOND_LIMIT[provider]!(id) : 0
  return {
    model: id,
    price: { ...price, ...(reasoning > 0 ? { reasoningBeyondLimitTokens: reasoning } : {}), ...(MAX_TOKENS_ONLY.has(provider) ? { outputLimitField: 'max_tokens' as const } : {}) },
    outputBound
  }
}

function exactPrice (id: string, rates: CatalogPrice, contextWindow: number | undefined, writesAutomatically: boolean, longContext?: PriceTier): ModelPrice | null {
  const write = writesAutomatically && rates[CACHE_WRITE_KEY] !== undefined ? exactRate(rates[CACHE_WRITE_KEY]) : undefined
  if (write === null) return null
  const fresh = exactRate(rates[TOKEN_KEYS.input])
  const catalogInput = fresh === null || write === undefined ? fresh : higherRate(fresh, write)
  // An embedding model bills input alone: the catalog lists no output rate, and its output costs nothing.
  const catalogOutput = rates[TOKEN_KEYS.output] === undefined && EMBEDDING_MODEL.test(id) ? exactRate(0) : exactRate(rates[TOKEN_KEYS.output])
  const catalogCachedInput = rates[TOKEN_KEYS.cachedInput] === undefined ? undefined : exactRate(rates[TOKEN_KEYS.cachedInput])
  // Where writes happen only on request, their own rates, for the calls that ask (Anthropic's cache_control).
  const catalogCacheWrite = writesAutomatically || rates[CACHE_WRITE_KEY] === undefined ? undefined : exactRate(rates[CACHE_WRITE_KEY])
  const catalogCacheWrite1h = writesAutomatically || rates[CACHE_WRITE_1H_KEY] === undefined ? undefined : exactRate(rates[CACHE_WRITE_1H_KEY])
  // The long-context tier the catalog leaves out (LONG_CONTEXT_TIERS), merged into each rate it has.
  const withLongContext = <Rate extends ExactRate | null | undefined>(rate: Rate, tierRate: Money | undefined): Rate =>
    rate === null || rate === undefined || longContext === undefined || tierRate === undefined ? rate : withTier(rate, longContext.aboveInputTokens, tierRate) as Rate
  const input = withLongContext(catalogInput, longContext?.input)
  const output = withLongContext(catalogOutput, longContext?.output)
  const cachedInput = withLongContext(catalogCachedInput, longContext?.cachedInput)
  const cacheWrite = withLongContext(catalogCacheWrite, longContext?.cacheWrite)
  const cacheWrite1h = withLongContext(catalogCacheWrite1h, longContext?.cacheWrite1h)
  if (input === null || output === null || cachedInput === null || cacheWrite === null || cacheWrite1h === null) return null

  // Tiers: above a number of input tokens, the whole call at other rates. Each tier's rate is the
  // highest so far, so the cost grows with the input and an estimate from the worst-case input bounds
  // the bill (in the catalog the rates only rise; one that fell would be charged at the higher rate).
  const starts = [...new Set([input, output, cachedInput, cacheWrite, cacheWrite1h].flatMap((rate) => rate?.tiers.map((tier) => tier.start) ?? []))].sort((a, b) => a - b)
  let last = { input: input.base, output: output.base, cachedInput: cachedInput?.base, cacheWrite: cacheWrite?.base, cacheWrite1h: cacheWrite1h?.base }
  const tiers: PriceTier[] = []
  const rising = (previous: Money | undefined, rate: ExactRate | undefined, start: number): Money | undefined => rate === undefined ? undefined : higher(previous!, rateAbove(rate, start))
  for (const start of starts) {
    const next = {
      input: higher(last.input, rateAbove(input, start)),
      output: higher(last.output, rateAbove(output, start)),
      cachedInput: rising(last.cachedInput, cachedInput, start),
      cacheWrite: rising(last.cacheWrite, cacheWrite, start),
      cacheWrite1h: rising(last.cacheWrite1h, cacheWrite1h, start)
    }
    tiers.push({ aboveInputTokens: start, input: next.input, output: next.output, ...optionalRates(next) })
    last = next
  }
  // A cache read dearer than a fresh token would make the estimate (every input token at the input rate) no bound.
  for (const rates of [{ input: input.base, cachedInput: cachedInput?.base }, ...tiers]) {
    if (rates.cachedInput !== undefined && toUnits(rates.cachedInput) > toUnits(rates.input)) return null
  }

  const known = Object.hasOwn(KNOWN_LIMITS, id) ? KNOWN_LIMITS[id] : undefined
  const window = Number.isSafeInteger(contextWindow) && contextWindow! > 0 ? Math.min(contextWindow!, UNBOUNDED_OUTPUT_TOKENS) : UNBOUNDED_OUTPUT_TOKENS
  // A separate rate for image tokens is not the input rate the estimate counts images at: no image bound then.
  const maxImageTokens = rates.input_image_mtok === undefined ? known?.maxImageTokens : undefined
  const price: ModelPrice = {
    input: input.base,
    output: output.base,
    ...optionalRates({ cachedInput: cachedInput?.base, cacheWrite: cacheWrite?.base, cacheWrite1h: cacheWrite1h?.base }),
    ...(tiers.length === 0 ? {} : { tiers }),
    maxOutputTokens: known?.maxOutputTokens ?? window,
    ...(maxImageTokens === undefined ? {} : { maxImageTokens })
  }
  return price
}

interface ExactRate { base: Money, tiers: Array<{ start: number, rate: Money }> }

/** The rates a price may leave out, only those it has (an absent rate has a rule of its own: pricing.ts). */
function optionalRates (rates: { cachedInput?: Money | undefined, cacheWrite?: Money | undefined, cacheWrite1h?: Money | undefined }): Pick<ModelPrice, 'cachedInput' | 'cacheWrite' | 'cacheWrite1h'> {
  return {
    ...(rates.cachedInput === undefined ? {} : { cachedInput: rates.cachedInput }),
    ...(rates.cacheWrite === undefined ? {} : { cacheWrite: rates.cacheWrite }),
    ...(rates.cacheWrite1h === undefined ? {} : { cacheWrite1h: rates.cacheWrite1h })
  }
}

/** A catalog rate (a number as its data writes it, or tiers of them) as exact decimals; null when one cannot be stored exactly. */
function exactRate (value: number | TieredPrices | undefined): ExactRate | null {
  if (typeof value === 'number') {
    const base = exactDecimal(value)
    return base === null ? null : { base, tiers: [] }
  }
  if (typeof value !== 'object' || value === null || !Array.isArray(value.tiers)) return null
  const base = exactDecimal(value.base)
  const tiers = value.tiers.map((tier) => ({ start: tier.start, rate: exactDecimal(tier.price) }))
  if (base === null || !tiers.every((tier): tier is { start: number, rate: Money } => tier.rate !== null && Number.isSafeInteger(tier.start) && tier.start >= 0)) return null
  return { base, tiers: tiers.sort((a, b) => a.start - b.start) }
}

/**
 * The decimal the catalog's data wrote: a JS number's shortest form is the literal it was parsed from
 * (0.075 stays "0.075"), an exponent form (1e-7) is expanded digit by digit; never arithmetic.
 */
function exactDecimal (value: unknown): Money | null {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) return null
  const text = numberToDecimal(value)
  if (!/^\d+(\.\d+)?$/.test(text) || (text.split('.')[1]?.length ?? 0) > MONEY_SCALE) return null
  return normalizeMoney(text)
}

/** The rate in force when a call has more than `start` input tokens (the catalog's rule: above a tier's start). */
function rateAbove (rate: ExactRate, start: number): Money {
  let inForce = rate.base
  for (const tier of rate.tiers) if (tier.start <= start) inForce = tier.rate
  return inForce
}

/** A rate with another tier from `start` on, never below the rate the catalog has in force there. */
function withTier (rate: ExactRate, start: number, tierRate: Money): ExactRate {
  const tier = { start, rate: higher(rateAbove(rate, start), tierRate) }
  return { base: rate.base, tiers: [...rate.tiers.filter((existing) => existing.start !== start), tier].sort((a, b) => a.start - b.start) }
}

/** The higher of two rates at every input size: an uncached prompt token that may also be a cache write. */
function higherRate (a: ExactRate, b: ExactRate): ExactRate {
  const starts = [...new Set([...a.tiers, ...b.tiers].map((tier) => tier.start))].sort((x, y) => x - y)
  return { base: higher(a.base, b.base), tiers: starts.map((start) => ({ start, rate: higher(rateAbove(a, start), rateAbove(b, start)) })) }
}

function higher (a: Money, b: Money): Money {
  return toUnits(a) >= toUnits(b) ? a : b
}
