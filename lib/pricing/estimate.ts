// The cost of an OpenAI-style chat call: its worst case before it leaves (what the gate reserves), and
// its actual cost from the provider's usage after. The worst case is an upper bound on what the
// upstream can bill; a request field that could make the bill larger than the bound is refused.
import { InvalidFieldError, ModelNotPricedError, UnboundedFieldError, quoted } from '../kernel/errors.js'
import { fromUnits, toUnits, type Money } from '../kernel/money.js'
import { MAX_NESTING, jsonTextInSlices, jsonTextShape, pathOfKey, walkForDepthOrKey } from '../kernel/json-limits.js'
import { injectedPromptTokens } from './injected-tokens.js'
import { costOf, costOfTokens, type ModelPrice, type PriceBook, type PricedModel, type TokenUsage } from './pricing.js'
import { chatPromptTokens, tokenCounter } from './tokens.js'
import { slices as newSlices, type Slices } from '../kernel/loop-slices.js'

export interface ChatRequestShape {
  model?: unknown
  messages?: unknown
  max_tokens?: unknown
  max_completion_tokens?: unknown
  n?: unknown
  tools?: unknown
  functions?: unknown
  response_format?: unknown
  [field: string]: unknown
}

export interface CostEstimate {
  /** The model the call will use. */
  model: string
  amount: Money
  /** The worst case's tokens, input and output: what a tokensPerMinute limit reserves (0 when a custom estimate leaves it out). */
  tokens?: number
  /**
   * The same call's worst case with its output limit (max_tokens / max_completion_tokens) set to
   * `maxTokens`: arithmetic on the input counted once, so that clamp's search never counts the prompt
   * again. A custom estimate may leave it out; clamp then estimates each candidate body anew.
   */
  atOutputLimit?: (maxTokens: number) => CostEstimate
}

// Fields that cannot make a call cost more than the bound below, or that the bound counts. Anything
// else (audio output, predicted outputs, web search, a priority service tier, fields added to the
// API later) is refused: it could be billed past the reservation.
const BOUNDED_FIELDS = new Set([
  'model', 'messages', 'max_tokens', 'max_completion_tokens', 'n', 'tools', 'functions', 'response_format',
  'tool_choice', 'function_call', 'parallel_tool_calls', 'stream', 'stream_options', 'temperature', 'top_p',
  'stop', 'presence_penalty', 'frequency_penalty', 'logit_bias', 'logprobs', 'top_logprobs', 'seed', 'user',
  'metadata', 'store', 'reasoning_effort', 'verbosity', 'service_tier', 'safety_identifier', 'prompt_cache_key'
])
// 'priority' and 'scale' bill above list prices.
const SERVICE_TIERS_AT_LIST_PRICE = new Set(['auto', 'default', 'flex'])
const MAX_CHOICES = 128
// The chat format's own tokens: about 4 a message (start, role, separator, end) and 3 to prime the reply.
const TOKENS_PER_MESSAGE = 4
const TOKENS_PER_REQUEST = 3

/** What bounds a call's cost, measured once: its input tokens, its choices, and the output limit it asks for (0: none). */
interface CallBound { inputTokens: number, choices: number, requested: number }

/**
 * The output tokens of a call asking for at most `requested` (0: the model's maximum) for each of
 * `choices`, and whatever the provider bills past that limit (reasoningBeyondLimitTokens).
 */
function outputTokensFor (price: ModelPrice, requested: number, choices: number): number {
  const capped = requested === 0 ? price.maxOutputTokens : Math.min(requested, price.maxOutputTokens)
  return (capped + (price.reasoningBeyondLimitTokens ?? 0)) * choices
}

/** Tokens at the price, and the per-request fee for each choice. */
function callCost (price: ModelPrice, inputTokens: number, outputTokens: number, choices: number): Money {
  const tokens = costOf(price, inputTokens, outputTokens)
  return price.perRequest === undefined ? tokens : fromUnits(toUnits(tokens) + toUnits(price.perRequest) * BigInt(choices))
}

/**
 * The worst case of an OpenAI-style chat call, in tokens. Input, for a model whose tokenizer is known
 * (OpenAI's, by `model`, the body's own by default): the prompt's tokens by that tokenizer and the chat
 * format's rule (tokens.ts). For any other model: every byte of the JSON-encoded messages (image parts
 * aside), tool and function definitions and response_format schema (byte-level BPE tokenizers never
 * make a token of less than a byte; the JSON's own quotes and keys outweigh the rendered forms) and the
 * chat format's tokens. Each image at the model's worst case, and the prompt the provider adds
 * (injected-tokens.ts). Output: all of the larger of max_tokens and max_completion_tokens (or the
 * model's maximum), for each of n choices, and what the provider bills past it.
 */
export async function worstCaseTokens (body: ChatRequestShape, price: ModelPrice, model: unknown = body.model): Promise<{ inputTokens: number, outputTokens: number }> {
  const { inputTokens, choices, requested } = await boundCall(body, price, model)
  return { inputTokens, outputTokens: outputTokensFor(price, requested, choices) }
}

async function boundCall (body: ChatRequestShape, price: ModelPrice, model: unknown): Promise<CallBound> {
  for (const field of Object.keys(body)) {
    if (!BOUNDED_FIELDS.has(field)) throw new UnboundedFieldError(field, 'is not a field whose cost the budget gate can bound')
  }
  if (body.service_tier !== undefined && !SERVICE_TIERS_AT_LIST_PRICE.has(body.service_tier as string)) {
    throw new UnboundedFieldError('service_tier', `must be one of ${[...SERVICE_TIERS_AT_LIST_PRICE].join(', ')}: other tiers bill above the price table`)
  }
  const choices = body.n === undefined || body.n === null ? 1 : body.n
  if (!Number.isInteger(choices) || (choices as number) < 1 || (choices as number) > MAX_CHOICES) {
    throw new InvalidFieldError('n', `must be an integer from 1 to ${MAX_CHOICES}`)
  }
  const limits = (['max_tokens', 'max_completion_tokens'] as const).map((field) => {
    const value = body[field]
    if (value === undefined || value === null) return 0
    if (!Number.isInteger(value) || (value as number) < 1) throw new InvalidFieldError(field, 'must be a positive integer')
    return value as number
  })
  // A provider that obeys max_tokens alone ignores max_completion_tokens: without max_tokens, uncapped.
  const requested = price.outputLimitField === 'max_tokens' ? limits[0]! : Math.max(...limits)

  if (!Array.isArray(body.messages)) throw new InvalidFieldError('messages', 'must be a list of messages')
  let images = 0
  const mapped = body.messages.map((message: unknown, index: number) => {
    if (typeof message !== 'object' || message === null || Array.isArray(message)) throw new InvalidFieldError(`messages.${index}`, 'must be an object')
    const content = (message as { content?: unknown }).content
    if (!Array.isArray(content)) return message
    return {
      ...message,
      content: content.map((part: unknown, partIndex: number) => {
        const type = (part as { type?: unknown } | null)?.type
        if (type === 'text' || type === 'refusal') return part
        const field = `messages.${index}.content.${partIndex}`
        if (type !== 'image_url') throw new UnboundedFieldError(`${field}.type`, `${quoted(type)} parts cannot be bounded by the budget gate`)
        if (price.maxImageTokens === undefined) throw new UnboundedFieldError(field, 'is an image, and the price table gives this model no image bound')
        images++
        return { type } // counted below at the model's worst case, not by the bytes of its URL
      })
    }
  })
  // Without images the copy's JSON is the messages' own: the messages as sent, whose text is reused.
  const messages = images === 0 ? body.messages : mapped
  // Nested past what any schema needs, a body would overflow the stack of JSON.stringify below.
  // A cache write is billed above the input rate (Anthropic: 1.25x for 5 minutes, 2x for an hour), and
  // only a request's mark makes one: refused, so that no gated call writes (price-catalog.ts).
  // The whole estimate's work in one request's slices: serializing, scanning and tokenizing give the loop a turn between them.
  const slices = newSlices()
  const texts = await jsonTextsOf(body, slices)
  if (texts === null) {
    // JSON.stringify refused the body (nested deeper than its stack, a cycle): the walk decides.
    const found = walkForDepthOrKey(body, MAX_NESTING, 'cache_control')
    if (found === 'deep') throw new InvalidFieldError('body', `is nested more than ${MAX_NESTING} levels deep`)
    if (found === 'key') throw new UnboundedFieldError(pathOfKey(body, 'cache_control') ?? 'cache_control', CACHE_WRITE)
  }
  checkFunctionTools(body)
  const definitions = [body.tools, body.functions, body.response_format].filter((part) => part !== undefined && part !== null)
  const jsonOf = (value: unknown): string => texts?.get(value) ?? JSON.stringify(value)
  const count = typeof model === 'string' ? tokenCounter(model, slices) : null
  let promptTokens: number
  if (count === null) {
    promptTokens = Buffer.byteLength(jsonOf(messages), 'utf8') +
      definitions.reduce<number>((sum, part) => sum + Buffer.byteLength(jsonOf(part), 'utf8'), 0) +
      TOKENS_PER_MESSAGE * messages.length + TOKENS_PER_REQUEST
  } else {
    if (texts !== null) count.knownJson = texts
    promptTokens = await chatPromptTokens({ ...body, messages }, count)
  }
  const inputTokens = promptTokens + images * (price.maxImageTokens ?? 0) + injectedPromptTokens(body, [model, body.model])
  return { inputTokens, choices: choices as number, requested }
}

const CACHE_WRITE = 'asks for a prompt-cache write, billed above the input rate that the budget gate reserves'

/**
 * The JSON text of each object or array field of the body, serialized once (the estimate counts them,
 * and they show both refusals: nesting past MAX_NESTING and a cache_control key, at any depth), or null
 * when JSON.stringify refuses the body. Throws those refusals.
 */
async function jsonTextsOf (body: ChatRequestShape, slices: Slices): Promise<Map<unknown, string> | null> {
  const texts = new Map<unknown, string>()
  for (const field of Object.keys(body)) {
    const value = body[field]
    if (typeof value !== 'object' || value === null) continue
    let text: string
    try {
      text = (await jsonTextInSlices(value, slices))!
    } catch {
      return null
    }
    if (slices.due()) await slices.pause()
    const shape = await jsonTextShape(text, 'cache_control', slices)
    // The field's own object is at depth 1 in the body, as its text's outermost bracket.
    if (shape.depth >= MAX_NESTING) throw new InvalidFieldError('body', `is nested more than ${MAX_NESTING} levels deep`)
    if (shape.hasKey) throw new UnboundedFieldError(pathOfKey(body, 'cache_control') ?? 'cache_control', CACHE_WRITE)
    texts.set(value, text)
  }
  return texts
}

/**
 * Only function tools: the model asks, the caller runs them, and their definitions are counted as
 * input. A server-side tool (Anthropic's web_search_20250305 or code execution, Gemini's googleSearch
 * grounding, OpenAI's web_search) runs at the provider and bills fees and results the estimate cannot
 * see. The legacy `functions` field holds function definitions only.
 */
function checkFunctionTools (body: ChatRequestShape): void {
  for (const field of ['tools', 'functions'] as const) {
    const definitions = body[field]
    if (definitions === undefined || definitions === null) continue
    if (!Array.isArray(definitions)) throw new InvalidFieldError(field, 'must be a list of function definitions')
    for (const [index, definition] of definitions.entries()) {
      if (typeof definition !== 'object' || definition === null || Array.isArray(definition)) throw new InvalidFieldError(`${field}.${index}`, 'must be an object')
      const type = (definition as { type?: unknown }).type
      if (field === 'tools' ? type !== 'function' : type !== undefined && type !== 'function') {
        throw new UnboundedFieldError(`${field}.${index}.type`, `${quoted(type)} tools run at the provider, billed past what the budget gate can bound: only 'function' tools are accepted`)
      }
    }
  }
}

/**
 * What every API's estimate starts from: the body, which must be a JSON object; the model the call
 * will use (`model`, else the body's own); and that model's price, or ModelNotPricedError saying why
 * it has none.
 */
export function pricedCall (body: unknown, prices: PriceBook, model?: string): { request: Record<string, unknown>, chosen: string, priced: PricedModel } {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new InvalidFieldError('body', 'must be a JSON object')
  const chosen = model ?? (body as { model?: unknown }).model
  if (typeof chosen !== 'string' || chosen === '') throw new InvalidFieldError('model', 'must name a model')
  const priced = prices.resolve(chosen)
  if (priced === null) {
    const refused = prices.refusal?.(chosen) ?? null
    throw new ModelNotPricedError('model', refused === null ? `has no price: ${chosen}` : `${chosen} is not priced: it ${refused}`)
  }
  return { request: body as Record<string, unknown>, chosen, priced }
}

/**
 * The gate's default estimate: the worst case of the call to `model` (the requested one unless
 * auto-downgrade chose another). Asynchronous: its work runs in slices that give the event loop a turn
 * (loop-slices.ts); refusals are rejections.
 */
export async function estimateChatCost (body: unknown, prices: PriceBook, model?: string): Promise<CostEstimate> {
  const { chosen, priced } = pricedCall(body, prices, model)
  // The price table's name picks the tokenizer: an alias (an Azure deployment's name) is that model.
  const { inputTokens, choices, requested } = await boundCall(body as ChatRequestShape, priced.price, priced.model)
  const at = (limit: number): CostEstimate => {
    const outputTokens = outputTokensFor(priced.price, limit, choices)
    return { model: chosen, amount: callCost(priced.price, inputTokens, outputTokens, choices), tokens: inputTokens + outputTokens, atOutputLimit: at }
  }
  return at(requested)
}

const TOKENS = (value: number): boolean => Number.isSafeInteger(value) && value >= 0

/** A price multiplier's parts: positive safe integers (a zero, a fraction or a float has no exact cost). */
const MULTIPLIER_PART = (value: unknown): boolean => Number.isSafeInteger(value) && (value as number) > 0

/**
 * The actual cost from the provider's usage, at the price of the model it names (a dated snapshot finds
 * its base model) in force at `at` (default: the book's instant, now unless the gate fixed the call's),
 * cached input tokens at the cache-read rate and cache writes at the write rates, the tokens' cost times
 * the usage's price multiplier (US-only inference on Claude: 11/10); null when it cannot be priced, when
 * its parts (reads and writes) are not counts that fit in its input, or its multiplier not a fraction
 * of positive integers.
 */
export function costFromUsage (usage: TokenUsage, prices: PriceBook, at?: Date): Money | null {
  const priced = prices.resolve(usage.model, at)
  const parts = [usage.cachedInputTokens ?? 0, usage.cacheWriteTokens ?? 0, usage.cacheWrite1hTokens ?? 0]
  const multiplier = usage.priceMultiplier
  if (priced === null || !TOKENS(usage.inputTokens) || !TOKENS(usage.outputTokens) || !parts.every(TOKENS) ||
    parts.reduce((sum, part) => sum + part, 0) > usage.inputTokens) return null
  // A usage a route reports itself (reportUsage) may carry anything: null included.
  if (multiplier !== undefined && !(MULTIPLIER_PART(multiplier?.numerator) && MULTIPLIER_PART(multiplier?.denominator))) return null
  const tokens = costOfTokens(priced.price, usage)
  // A usage reports one call: its fee once (the estimate held one per choice).
  return priced.price.perRequest === undefined ? tokens : fromUnits(toUnits(tokens) + toUnits(priced.price.perRequest))
}
