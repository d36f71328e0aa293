// Anthropic's Messages API (POST /v1/messages) for the gate: the worst case of a call, its usage from a
// JSON body or from the API's event stream, and refusals in Anthropic's error shape.
//
// Decisions where the design was left open:
// - Input is counted in UTF-8 bytes of the JSON of system, each message's content and tools (Claude's
//   tokenizer is not published; no BPE token is shorter than a byte, and the JSON's keys and quotes
//   outweigh Anthropic's own framing), plus TOKENS_PER_MESSAGE and TOKENS_PER_REQUEST, and, when tools
//   are given, TOOL_USE_SYSTEM_PROMPT_TOKENS. Thinking blocks sent back count with their signatures:
//   the signature carries the full thinking a summary stands for.
// - cache_control is allowed anywhere Anthropic takes it. The worst case prices every input token as
//   a write at the dearest ttl any mark asks for (a mark can write the whole prefix before it; the
//   top-level mark, the last block); reads cost less than a fresh token and need nothing.
// - service_tier 'auto' (the default) and 'standard_only' are both accepted: Anthropic's service-tiers
//   page says priority capacity is drawn down at burndown rates that "reflect the relative pricing of
//   each token type" (a prepaid commitment, no longer sold), never above the list prices bounded here.
//   speed 'fast' (a premium rate) is refused: the price table has no such rate.
// - inference_geo: US-only inference bills 11/10 of the list prices on Claude Opus 4.6 and every model
//   released after it (Anthropic's pricing, "Data residency"; the data-residency page: inference_geo "is
//   supported on Claude Opus 4.6 and all subsequent models", older ones answer it with a 400). Which
//   models those are is read from the name (billsUsOnlyInference): a Claude name whose version, the
//   first one- or two-digit number after "claude-" (claude-opus-4-6, claude-3-5-sonnet, claude-2.1),
//   is 4.6 or more, or that has no such version (claude-mythos-preview): a later model is surcharged
//   until it is named here, never undercharged. Names without "claude-" are no Claude model: no
//   surcharge, and inference_geo is refused on them as on the older models. The estimate checks the
//   name asked for and the price table's names for it (an operator's alias). On those models 'global'
//   is reserved at list price, 'us' and no inference_geo at 11/10: without one the workspace's
//   default_inference_geo decides, which the gate cannot see. Another geography is refused (its price
//   is unknown). The settlement reads usage.inference_geo, where inference ran: 'global' at list price,
//   anything else ('us', none, null, a value unknown) at 11/10. A usage that does not say is read as
//   US because the usage reader sees only the response (one settlement path for every API): a request
//   that said 'global' is then charged 10% over its bill, never under it; Anthropic's own responses
//   always say where the models that take inference_geo ran.
// - Clamp: withLimit lowers thinking.budget_tokens below the new max_tokens, as Anthropic requires;
//   when that leaves less than Anthropic's minimum budget (1,024), it turns thinking off instead.
// - Usage: the cache-creation breakdown (ephemeral_5m/1h) prices the writes; without one, every written
//   token is a 5-minute write (Anthropic answers with the breakdown wherever a 1-hour ttl exists). A
//   total and a breakdown that disagree are reconciled upward, never down.
import { InvalidFieldError, UnboundedFieldError, quoted } from '../kernel/errors.js'
import { MAX_NESTING, walkForDepthOrKey } from '../kernel/json-limits.js'
import { fromUnits, toUnits, type Money } from '../kernel/money.js'
import { pricedCall, type CostEstimate } from '../pricing/index.js'
import { costOfTokens, type ModelPrice, type PriceBook, type PriceMultiplier, type PricedModel, type TokenUsage } from '../pricing/index.js'
import type { ModelApi, OutputLimit, Refusal, RefusalKind, StreamUsageReader } from './model-api.js'

/** Anthropic's framing of one message (role, turn markers): a few tokens; generous. */
export const TOKENS_PER_MESSAGE = 8
/** The request's own framing (the prompt's start, the assistant turn the reply opens); generous. */
export const TOKENS_PER_REQUEST = 64
/**
 * The system prompt Anthropic adds when a request has tools: its pricing page's "tool use system prompt
 * token count" table gives at most 530 tokens (Claude 3 Opus, tool_choice auto), 346 for the Claude 4
 * models; the constant leaves room for a model that adds more.
 */
export const TOOL_USE_SYSTEM_PROMPT_TOKENS = 1024
/** Anthropic's smallest thinking.budget_tokens. */
export const MIN_THINKING_BUDGET = 1024

const BODY_FIELDS = new Set([
  'model', 'max_tokens', 'messages', 'system', 'tools', 'tool_choice', 'thinking', 'stop_sequences', 'stream',
  'temperature', 'top_k', 'top_p', 'metadata', 'service_tier', 'cache_control', 'output_config', 'speed', 'inference_geo'
])
const REFUSED_BODY_FIELDS: Record<string, string> = {
  mcp_servers: 'connects MCP servers, whose tool results become input tokens with no documented bound',
  container: 'runs a code-execution container, whose results become input tokens with no documented bound',
  context_management: 'edits the context at the provider, which the budget gate does not model'
}

// Each content block's fields; a block of another type, or with another field, is refused.
const TEXT_FIELDS = new Set(['type', 'text', 'cache_control', 'citations'])
const BLOCK_FIELDS: Record<string, Set<string>> = {
  text: TEXT_FIELDS,
  image: new Set(['type', 'source', 'cache_control']),
  tool_use: new Set(['type', 'id', 'name', 'input', 'cache_control']),
  tool_result: new Set(['type', 'tool_use_id', 'content', 'is_error', 'cache_control']),
  thinking: new Set(['type', 'thinking', 'signature']),
  redacted_thinking: new Set(['type', 'data']),
  search_result: new Set(['type', 'source', 'title', 'content', 'cache_control', 'citations'])
}
const MESSAGE_BLOCKS = new Set(Object.keys(BLOCK_FIELDS))
const TOOL_RESULT_BLOCKS = new Set(['text', 'image', 'search_result'])
const IMAGE_SOURCES = new Set(['base64', 'url', 'file'])
const CUSTOM_TOOL_FIELDS = new Set(['type', 'name', 'description', 'input_schema', 'cache_control', 'strict', 'eager_input_streaming', 'input_examples'])
const SERVER_TOOL = /^(web_search|web_fetch|code_execution|tool_search|mcp|browser)/
const TTLS = new Set(['5m', '1h'])

/** What US-only inference bills, as a multiple of the list prices. */
export const US_ONLY_INFERENCE: PriceMultiplier = Object.freeze({ numerator: 11, denominator: 10 })
/** The first Claude version that takes inference_geo, and bills US-only inference above list price. */
const FIRST_GEO_VERSION = [4, 6] as const
/** A Claude model's name: "claude-" at its start or after a provider's prefix (anthropic/, us.anthropic.). */
const CLAUDE_NAME = /(?:^|[/.:])claude-(.*)$/i

/**
 * Whether a model bills US-only inference at 11/10 of its list prices: a Claude model from Opus 4.6
 * on, or one whose name gives no version (the module's header has the rule and why).
 */
export function billsUsOnlyInference (model: string): boolean {
  const rest = CLAUDE_NAME.exec(model)?.[1]
  if (rest === undefined) return false
  // The version: the first part of one or two digits (v1's too), and the next, if it is one, as the minor.
  const parts = rest.split(/[-.@:_]/)
  const at = parts.findIndex((part) => /^v?\d{1,2}$/i.test(part))
  if (at === -1) return true
  const major = Number(parts[at]!.replace(/^v/i, ''))
  const minor = /^\d{1,2}$/.test(parts[at + 1] ?? '') ? Number(parts[at + 1]) : 0
  return major > FIRST_GEO_VERSION[0] || (major === FIRST_GEO_VERSION[0] && minor >= FIRST_GEO_VERSION[1])
}

/**
 * The multiple of the list prices a call is reserved at for where it runs (none: the list prices), by
 * its inference_geo and the names it may be billed under.
 */
function inferenceGeoMultiplier (geo: unknown, names: string[]): PriceMultiplier | undefined {
  const surcharged = names.some(billsUsOnlyInference)
  if (geo === undefined || geo === null) return surcharged ? US_ONLY_INFERENCE : undefined
  if (!surcharged) throw new InvalidFieldError('inference_geo', 'is taken only by Claude Opus 4.6 and later models (Anthropic refuses it on older ones)')
  if (typeof geo !== 'string') throw new InvalidFieldError('inference_geo', "must be 'global' or 'us'")
  if (geo === 'global') return undefined
  if (geo === 'us') return US_ONLY_INFERENCE
  throw new UnboundedFieldError('inference_geo', `${quoted(geo)} is a geography whose price the budget gate does not know: only 'global' or 'us'`)
}

/** The names a call to `chosen` may be billed under: its own, the price table's, and that entry's aliases. */
function billedNames (chosen: string, priced: PricedModel): string[] {
  return [chosen, priced.model, ...(priced.price.aliases ?? [])]
}

interface MessagesBound {
  inputTokens: number
  /** max_tokens: the output asked for at most. */
  requested: number
  /** The ttls that cache_control marks ask for ('5m' for a mark without one). */
  writes: Set<'5m' | '1h'>
}

function isObject (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function bytesOf (value: unknown): number {
  return Buffer.byteLength(JSON.stringify(value) ?? '', 'utf8')
}

function onlyFields (value: Record<string, unknown>, allowed: Set<string>, path: string): void {
  for (const field of Object.keys(value)) {
    if (!allowed.has(field)) throw new UnboundedFieldError(`${path}.${field}`, 'is not a field whose cost the budget gate can bound')
  }
}

/** The worst case of a Messages call at `price`, in tokens: every check and count, done once. */
function boundMessages (body: Record<string, unknown>, price: ModelPrice): MessagesBound {
  for (const field of Object.keys(body)) {
    if (Object.hasOwn(REFUSED_BODY_FIELDS, field)) throw new UnboundedFieldError(field, REFUSED_BODY_FIELDS[field]!)
    if (!BODY_FIELDS.has(field)) throw new UnboundedFieldError(field, 'is not a field whose cost the budget gate can bound')
  }
  // Nested past what any request needs, a body would overflow the stack of JSON.stringify below.
  if (walkForDepthOrKey(body, MAX_NESTING, null) === 'deep') throw new InvalidFieldError('body', `is nested more than ${MAX_NESTING} levels deep`)

  const requested = body.max_tokens
  if (!Number.isSafeInteger(requested) || (requested as number) < 0) throw new InvalidFieldError('max_tokens', 'is required: a non-negative integer')
  checkThinking(body.thinking, requested as number)
  checkOptions(body)

  const writes = new Set<'5m' | '1h'>()
  const mark = (value: unknown, path: string): void => {
    if (value === undefined || value === null) return
    if (!isObject(value) || value.type !== 'ephemeral') throw new InvalidFieldError(path, "must be { type: 'ephemeral', ttl?: '5m' | '1h' }")
    onlyFields(value, new Set(['type', 'ttl']), path)
    if (value.ttl !== undefined && !TTLS.has(value.ttl as string)) throw new InvalidFieldError(`${path}.ttl`, "must be '5m' or '1h'")
    writes.add(value.ttl === '1h' ? '1h' : '5m')
  }
  mark(body.cache_control, 'cache_control')

  let images = 0
  let inputTokens = TOKENS_PER_REQUEST
  /** One content block's tokens (an image's at the model's worst case); `allowed` the block types its place takes. */
  const block = (value: unknown, path: string, allowed: Set<string>): number => {
    if (!isObject(value)) throw new InvalidFieldError(path, 'must be a content block')
    const type = value.type
    if (typeof type !== 'string' || !allowed.has(type)) {
      throw new UnboundedFieldError(`${path}.type`, type === 'document'
        ? 'is a document, and Anthropic documents no token bound for one'
        : `${quoted(type)} blocks cannot be bounded by the budget gate`)
    }
    onlyFields(value, BLOCK_FIELDS[type]!, path)
    mark(value.cache_control, `${path}.cache_control`)
    if (type === 'text' && typeof value.text !== 'string') throw new InvalidFieldError(`${path}.text`, 'must be a string')
    if (type === 'image') {
      if (!isObject(value.source) || !IMAGE_SOURCES.has(value.source.type as string)) throw new InvalidFieldError(`${path}.source`, 'must be a base64, url or file image source')
      if (price.maxImageTokens === undefined) throw new UnboundedFieldError(path, 'is an image, and the price table gives this model no image bound')
      images++
      return 0 // counted at the model's worst case, not by the bytes of its data
    }
    if (type === 'search_result') {
      if (value.citations !== undefined && !(isObject(value.citations) && value.citations.enabled !== true)) {
        throw new UnboundedFieldError(`${path}.citations`, 'turns citations on, which adds a system prompt of undocumented size')
      }
      if (!Array.isArray(value.content)) throw new InvalidFieldError(`${path}.content`, 'must be a list of text blocks')
      value.content.forEach((part, index) => block(part, `${path}.content.${index}`, TEXT_ONLY))
    }
    if (type === 'tool_result' && value.content !== undefined && typeof value.content !== 'string') {
      if (!Array.isArray(value.content)) throw new InvalidFieldError(`${path}.content`, 'must be a string or a list of blocks')
      const { content, ...rest } = value
      return bytesOf(rest) + content.reduce<number>((sum, part, index) => sum + block(part, `${path}.content.${index}`, TOOL_RESULT_BLOCKS), 0)
    }
    return bytesOf(value)
  }

  if (body.system !== undefined) {
    if (typeof body.system === 'string') inputTokens += bytesOf(body.system)
    else if (Array.isArray(body.system)) body.system.forEach((part, index) => { inputTokens += block(part, `system.${index}`, TEXT_ONLY) })
    else throw new InvalidFieldError('system', 'must be a string or a list of text blocks')
  }

  if (!Array.isArray(body.messages)) throw new InvalidFieldError('messages', 'must be a list of messages')
  body.messages.forEach((message: unknown, index: number) => {
    const path = `messages.${index}`
    if (!isObject(message)) throw new InvalidFieldError(path, 'must be an object')
    onlyFields(message, new Set(['role', 'content']), path)
    if (message.role !== 'user' && message.role !== 'assistant') throw new InvalidFieldError(`${path}.role`, "must be 'user' or 'assistant'")
    inputTokens += TOKENS_PER_MESSAGE
    if (typeof message.content === 'string') inputTokens += bytesOf(message.content)
    else if (Array.isArray(message.content)) message.content.forEach((part, partIndex) => { inputTokens += block(part, `${path}.content.${partIndex}`, MESSAGE_BLOCKS) })
    else throw new InvalidFieldError(`${path}.content`, 'must be a string or a list of content blocks')
  })

  if (body.tools !== undefined) {
    if (!Array.isArray(body.tools)) throw new InvalidFieldError('tools', 'must be a list of tool definitions')
    body.tools.forEach((tool: unknown, index: number) => {
      const path = `tools.${index}`
      if (!isObject(tool)) throw new InvalidFieldError(path, 'must be an object')
      checkTool(tool, path)
      mark(tool.cache_control, `${path}.cache_control`)
      inputTokens += bytesOf(tool)
    })
    if (body.tools.length > 0) inputTokens += TOOL_USE_SYSTEM_PROMPT_TOKENS
  }
  if (body.tool_choice !== undefined) inputTokens += bytesOf(body.tool_choice)
  inputTokens += images * (price.maxImageTokens ?? 0)
  return { inputTokens, requested: requested as number, writes }
}

const TEXT_ONLY = new Set(['text'])

/** A custom tool (the caller runs it; its definition is counted); Anthropic's own tools are refused. */
function checkTool (tool: Record<string, unknown>, path: string): void {
  const type = tool.type
  if (type !== undefined && type !== null && type !== 'custom') {
    const name = typeof type === 'string' ? type : ''
    throw new UnboundedFieldError(`${path}.type`, SERVER_TOOL.test(name)
      ? `${quoted(type)} is a server tool: its results become input tokens with no documented bound (max_uses bounds its fee, not its tokens)`
      : `${quoted(type)} is an Anthropic-defined tool, whose definition adds system-prompt tokens the budget gate does not bound: define it as a custom tool`)
  }
  onlyFields(tool, CUSTOM_TOOL_FIELDS, path)
  if (typeof tool.name !== 'string') throw new InvalidFieldError(`${path}.name`, 'must be a string')
}

/** thinking: its budget is part of max_tokens, and Anthropic takes it only below max_tokens. */
function checkThinking (thinking: unknown, maxTokens: number): void {
  if (thinking === undefined) return
  if (!isObject(thinking)) throw new InvalidFieldError('thinking', "must be { type: 'enabled', budget_tokens } or { type: 'adaptive' | 'disabled' }")
  if (thinking.type === 'disabled') return onlyFields(thinking, new Set(['type']), 'thinking')
  if (thinking.type === 'adaptive') return onlyFields(thinking, new Set(['type', 'display']), 'thinking')
  if (thinking.type !== 'enabled') throw new UnboundedFieldError('thinking.type', `${quoted(thinking.type)} thinking cannot be bounded by the budget gate`)
  onlyFields(thinking, new Set(['type', 'budget_tokens', 'display']), 'thinking')
  const budget = thinking.budget_tokens
  if (!Number.isSafeInteger(budget) || (budget as number) < 1 || (budget as number) >= maxTokens) {
    throw new InvalidFieldError('thinking.budget_tokens', 'must be a positive integer below max_tokens')
  }
}

function checkOptions (body: Record<string, unknown>): void {
  if (body.service_tier !== undefined && body.service_tier !== 'auto' && body.service_tier !== 'standard_only') {
    throw new InvalidFieldError('service_tier', "must be 'auto' or 'standard_only'")
  }
  if (body.speed !== undefined && body.speed !== null && body.speed !== 'standard') {
    throw new UnboundedFieldError('speed', "asks for fast mode, billed at a premium the price table does not give: only 'standard'")
  }
  if (body.output_config !== undefined) {
    if (!isObject(body.output_config)) throw new InvalidFieldError('output_config', 'must be an object')
    if (body.output_config.format !== undefined && body.output_config.format !== null) {
      throw new UnboundedFieldError('output_config.format', 'asks for structured output, whose added prompt is of undocumented size')
    }
    onlyFields(body.output_config, new Set(['effort', 'format']), 'output_config')
  }
  if (body.tool_choice !== undefined) {
    const choice = body.tool_choice
    if (!isObject(choice) || !['auto', 'any', 'tool', 'none'].includes(choice.type as string)) throw new InvalidFieldError('tool_choice', "must be { type: 'auto' | 'any' | 'tool' | 'none' }")
    onlyFields(choice, new Set(['type', 'name', 'disable_parallel_tool_use']), 'tool_choice')
  }
}

/** The output billed for a call asking for at most `maxTokens` (max_tokens includes the thinking budget). */
function outputTokensFor (price: ModelPrice, maxTokens: number): number {
  return Math.min(maxTokens, price.maxOutputTokens) + (price.reasoningBeyondLimitTokens ?? 0)
}

/** The dearest of the ways the input can be billed: fresh, or all written at each ttl a mark asks for; each times the multiplier for where it runs. */
function worstCost (price: ModelPrice, inputTokens: number, outputTokens: number, writes: Set<'5m' | '1h'>, priceMultiplier: PriceMultiplier | undefined): Money {
  const billed = { inputTokens, outputTokens, ...(priceMultiplier === undefined ? {} : { priceMultiplier }) }
  let worst = toUnits(costOfTokens(price, billed))
  for (const ttl of writes) {
    const written = toUnits(costOfTokens(price, { ...billed, ...(ttl === '1h' ? { cacheWrite1hTokens: inputTokens } : { cacheWriteTokens: inputTokens }) }))
    if (written > worst) worst = written
  }
  return fromUnits(price.perRequest === undefined ? worst : worst + toUnits(price.perRequest))
}

export async function estimateMessagesCost (input: unknown, prices: PriceBook, model?: string): Promise<CostEstimate> {
  const { request: body, chosen, priced } = pricedCall(input, prices, model)
  const { inputTokens, requested, writes } = boundMessages(body, priced.price)
  const multiplier = inferenceGeoMultiplier(body.inference_geo, billedNames(chosen, priced))
  const at = (limit: number): CostEstimate => {
    const outputTokens = outputTokensFor(priced.price, limit)
    return { model: chosen, amount: worstCost(priced.price, inputTokens, outputTokens, writes, multiplier), tokens: inputTokens + outputTokens, atOutputLimit: at }
  }
  return at(requested)
}

export const messagesOutputLimit: OutputLimit = {
  requested: (body) => Number.isSafeInteger(body.max_tokens) && (body.max_tokens as number) >= 0 ? body.max_tokens as number : null,
  withLimit: (body, tokens) => {
    const thinking = body.thinking
    if (!isObject(thinking) || thinking.type !== 'enabled' || !Number.isSafeInteger(thinking.budget_tokens) || (thinking.budget_tokens as number) < tokens) {
      return { ...body, max_tokens: tokens }
    }
    // Anthropic refuses a budget at or above max_tokens, and one under its minimum.
    const budget = tokens - 1
    return { ...body, max_tokens: tokens, thinking: budget >= MIN_THINKING_BUDGET ? { ...thinking, budget_tokens: budget } : { type: 'disabled' } }
  }
}

const TOKENS = (value: unknown): value is number => Number.isSafeInteger(value) && (value as number) >= 0

/**
 * TokenUsage from Anthropic's usage object. Anthropic's input_tokens leaves out cache reads and writes:
 * the gate's inputTokens is their sum. On a model that bills US-only inference, a usage whose
 * inference_geo is not 'global' carries the 11/10 multiplier. Null when a count is not a non-negative
 * safe integer (a cache count left out would be charged as nothing), or when input_tokens or
 * output_tokens is missing.
 */
export function usageOf (usage: Record<string, unknown>, model: string): TokenUsage | null {
  const part = (value: unknown): number | null => value === undefined || value === null ? 0 : TOKENS(value) ? value : null
  const input = usage.input_tokens
  const output = usage.output_tokens
  if (!TOKENS(input) || !TOKENS(output)) return null
  const reads = part(usage.cache_read_input_tokens)
  const created = part(usage.cache_creation_input_tokens)
  const breakdown = usage.cache_creation
  if (breakdown !== undefined && breakdown !== null && !isObject(breakdown)) return null
  const writes1h = isObject(breakdown) ? part(breakdown.ephemeral_1h_input_tokens) : 0
  const writes5m = isObject(breakdown) ? part(breakdown.ephemeral_5m_input_tokens) : 0
  if (reads === null || created === null || writes1h === null || writes5m === null) return null
  // The total and the breakdown reconciled upward: every written token the one or the other counts.
  const cacheWriteTokens = Math.max(created - writes1h, writes5m)
  const inputTokens = input + reads + cacheWriteTokens + writes1h
  if (!Number.isSafeInteger(inputTokens)) return null
  return {
    model,
    inputTokens,
    outputTokens: output,
    ...(reads > 0 ? { cachedInputTokens: reads } : {}),
    ...(cacheWriteTokens > 0 ? { cacheWriteTokens } : {}),
    ...(writes1h > 0 ? { cacheWrite1hTokens: writes1h } : {}),
    ...(billsUsOnlyInference(model) && usage.inference_geo !== 'global' ? { priceMultiplier: US_ONLY_INFERENCE } : {})
  }
}

function parse (text: string): unknown {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

const modelOr = (named: unknown, requestedModel: string): string => typeof named === 'string' && named !== '' ? named : requestedModel

export function messagesUsageFromBody (payload: string, requestedModel: string): TokenUsage | null {
  const body = parse(payload)
  if (!isObject(body) || !isObject(body.usage)) return null
  return usageOf(body.usage, modelOr(body.model, requestedModel))
}

/**
 * message_start carries the model and the input counts (its output_tokens is a token or so); each
 * message_delta carries cumulative counts, output_tokens always, the others when they changed. Usage is
 * known only once a message_delta has come: a stream cut before it is charged its estimate.
 */
export function messagesStreamUsage (requestedModel: string): StreamUsageReader {
  let model = requestedModel
  // No prototype: a count named __proto__ is a key like any other, never the object's prototype.
  const counts: Record<string, unknown> = Object.create(null)
  let delta = false
  return {
    event (name, data) {
      const event = parse(data)
      if (!isObject(event)) return
      const type = typeof event.type === 'string' ? event.type : name
      if (type === 'message_start' && isObject(event.message)) {
        model = modelOr(event.message.model, requestedModel)
        if (isObject(event.message.usage)) Object.assign(counts, event.message.usage)
      } else if (type === 'message_delta' && isObject(event.usage)) {
        // Cumulative: each count given replaces the one before; a null one is not given.
        for (const [key, value] of Object.entries(event.usage)) if (value !== null) counts[key] = value
        delta = true
      }
    },
    usage: () => delta ? usageOf(counts, model) : null
  }
}

// Anthropic's error `type` for each kind; the official client picks its error class by status.
const ANTHROPIC_TYPES: Record<RefusalKind, string> = {
  invalid_request: 'invalid_request_error',
  insufficient_quota: 'billing_error',
  rate_limit_requests: 'rate_limit_error',
  rate_limit_tokens: 'rate_limit_error',
  unavailable: 'overloaded_error',
  server_error: 'api_error'
}

/**
 * Anthropic's { type: 'error', error: { type, message } }, with the gate's code, param and figures
 * beside them (as in OpenAI's shape), and the code as details.error_code, which @anthropic-ai/sdk
 * reads into its errors' errorCode.
 */
export function messagesErrorBody (refusal: Refusal): Record<string, unknown> {
  return {
    type: 'error',
    error: {
      ...refusal.details,
      code: refusal.code,
      param: refusal.param,
      details: { error_code: refusal.code },
      type: ANTHROPIC_TYPES[refusal.kind],
      message: refusal.message
    },
    request_id: null
  }
}

export const messagesApi: ModelApi = {
  name: 'messages',
  estimate: estimateMessagesCost,
  outputLimit: messagesOutputLimit,
  usageFromBody: messagesUsageFromBody,
  streamUsage: messagesStreamUsage,
  errorBody: messagesErrorBody
}
