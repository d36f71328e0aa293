// OpenAI's Responses API (POST /v1/responses) for the gate: the worst case of a call, its usage from a
// JSON body or from the API's own event stream, and refusals in OpenAI's error shape.
//
// Decisions where the issue is silent:
// - The input is counted by the chat rule (tokens.ts), the Responses items mapped onto chat messages
//   (instructions a developer message, function_call an assistant tool call, consecutive calls grouped as
//   parallel ones, function_call_output a tool result, reasoning summaries and text as assistant text),
//   plus TOKENS_PER_ITEM for every item and TOKENS_PER_REQUEST: the Responses framing is not published,
//   so the chat rule's allowances are raised, never lowered.
// - An image with detail 'original' is refused: the price table's maxImageTokens bounds an image at
//   high detail only. An item_reference (a stored item) is refused like previous_response_id: its input
//   is not in the request.
// - Fields the issue does not list (context_management, prompt_cache_retention, fields added to the API
//   later) are refused as unbounded; a bounded field set to null is the same as absent.
// - reasoning (effort, summary) is accepted: reasoning tokens, summaries included, are output tokens
//   under max_output_tokens. include only adds to what the response shows, not to what is billed.
import { InvalidFieldError, UnboundedFieldError, quoted } from '../kernel/errors.js'
import { MAX_NESTING, walkForDepthOrKey } from '../kernel/json-limits.js'
import { fromUnits, toUnits, type Money } from '../kernel/money.js'
import { pricedCall, type CostEstimate } from '../pricing/index.js'
import { injectedPromptTokens } from '../pricing/index.js'
import { costOf, type ModelPrice, type PriceBook, type TokenUsage } from '../pricing/index.js'
import { chatPromptTokens, tokenCounter } from '../pricing/index.js'
import type { ModelApi, OutputLimit, StreamUsageReader } from './model-api.js'
import { openAIErrorBody } from './openai-error.js'
import { atListPriceTier } from './service-tier.js'

type Json = Record<string, unknown>

const BOUNDED_FIELDS = new Set([
  'model', 'input', 'instructions', 'max_output_tokens', 'tools', 'tool_choice', 'parallel_tool_calls',
  'max_tool_calls', 'reasoning', 'text', 'stream', 'stream_options', 'store', 'metadata', 'temperature',
  'top_p', 'top_logprobs', 'truncation', 'user', 'service_tier', 'include', 'prompt_cache_key', 'safety_identifier'
])
// Fields that bring input, or a bill, that the request does not show: refused with the reason.
const UNSEEN_INPUT: Record<string, string> = {
  previous_response_id: 'brings the stored input of an earlier response, which the budget gate cannot see or bound',
  conversation: 'brings the stored items of a conversation, which the budget gate cannot see or bound',
  prompt: 'brings a stored prompt template, whose text the budget gate cannot see or bound',
  background: 'runs the call in the background, past the request the budget gate settles'
}
const SERVICE_TIERS_AT_LIST_PRICE = new Set(['auto', 'default', 'flex'])
const ROLES = new Set(['user', 'assistant', 'system', 'developer'])
// Generous framing on top of the chat rule's: each item's delimiters, and the request's own.
const TOKENS_PER_ITEM = 4
const TOKENS_PER_REQUEST = 8
// The chat rule's framing, for models whose tokenizer is unknown (their bytes are counted instead).
const TOKENS_PER_MESSAGE = 4
const TOKENS_PER_REPLY = 3

const isObject = (value: unknown): value is Json => typeof value === 'object' && value !== null && !Array.isArray(value)
const present = (value: unknown): boolean => value !== undefined && value !== null
/** A value for a message: a string quoted, anything else by its kind (String() throws on an object whose toString is not a function). */
const bytesOf = (value: unknown): number => Buffer.byteLength(JSON.stringify(value) ?? '', 'utf8')

/** What bounds a call: its input tokens and the output limit it asks for (0: none). */
interface CallBound { inputTokens: number, requested: number }

/** The input, read: chat messages for the tokenizer's rule, and what the rule cannot count. */
interface ReadInput {
  messages: Json[]
  items: number
  images: number
  /** Bytes of encrypted reasoning: billed as tokens, and it cannot be tokenized. */
  encryptedBytes: number
}

function checkFields (item: Json, allowed: readonly string[], path: string): void {
  for (const key of Object.keys(item)) {
    if (!allowed.includes(key)) throw new UnboundedFieldError(`${path}.${key}`, 'is not a field whose cost the budget gate can bound')
  }
}

function stringField (item: Json, key: string, path: string, optional = false): string | undefined {
  const value = item[key]
  if (optional && !present(value)) return undefined
  if (typeof value !== 'string') throw new InvalidFieldError(`${path}.${key}`, 'must be a string')
  return value
}

/** One content part as a chat part: text counted by the tokenizer, an image left to its worst case. */
function readPart (part: unknown, path: string, price: ModelPrice, read: ReadInput): Json {
  if (!isObject(part)) throw new InvalidFieldError(path, 'must be an object')
  switch (part.type) {
    case 'input_text':
      checkFields(part, ['type', 'text'], path)
      return { type: 'text', text: stringField(part, 'text', path) }
    case 'output_text': {
      checkFields(part, ['type', 'text', 'annotations', 'logprobs'], path)
      const { annotations, logprobs } = part
      // Annotations and logprobs are counted as bytes (chat's rule for a part's other fields), should they be rendered.
      return { type: 'text', text: stringField(part, 'text', path), ...(present(annotations) ? { annotations } : {}), ...(present(logprobs) ? { logprobs } : {}) }
    }
    case 'refusal':
      checkFields(part, ['type', 'refusal'], path)
      return { type: 'refusal', refusal: stringField(part, 'refusal', path) }
    case 'input_image': {
      checkFields(part, ['type', 'detail', 'image_url', 'file_id'], path)
      if (part.detail === 'original') throw new UnboundedFieldError(`${path}.detail`, "'original' detail is billed past the price table's image bound (high detail)")
      if (price.maxImageTokens === undefined) throw new UnboundedFieldError(path, 'is an image, and the price table gives this model no image bound')
      read.images++
      return { type: 'image_url' } // counted at the model's worst case, not by the bytes of its URL
    }
    case 'input_file':
      throw new UnboundedFieldError(path, 'is a file, whose input tokens have no documented bound')
    default:
      throw new UnboundedFieldError(`${path}.type`, `${quoted(part.type)} parts cannot be bounded by the budget gate`)
  }
}

function readContent (content: unknown, path: string, price: ModelPrice, read: ReadInput): string | Json[] {
  if (typeof content === 'string') return content
  if (!Array.isArray(content)) throw new InvalidFieldError(path, 'must be a string or a list of content parts')
  return content.map((part, index) => readPart(part, `${path}.${index}`, price, read))
}

const TEXT_PARTS: Record<string, string> = { summary: 'summary_text', content: 'reasoning_text' }

function readReasoning (item: Json, path: string, read: ReadInput): Json {
  checkFields(item, ['type', 'id', 'summary', 'content', 'encrypted_content', 'status'], path)
  const parts: Json[] = []
  for (const [key, type] of Object.entries(TEXT_PARTS)) {
    const list = item[key]
    if (!present(list)) continue
    if (!Array.isArray(list)) throw new InvalidFieldError(`${path}.${key}`, 'must be a list')
    for (const [index, part] of list.entries()) {
      const at = `${path}.${key}.${index}`
      if (!isObject(part) || part.type !== type) throw new InvalidFieldError(at, `must be a '${type}' part`)
      checkFields(part, ['type', 'text'], at)
      parts.push({ type: 'text', text: stringField(part, 'text', at) })
    }
  }
  const encrypted = stringField(item, 'encrypted_content', path, true)
  if (encrypted !== undefined) read.encryptedBytes += Buffer.byteLength(encrypted, 'utf8')
  return { role: 'assistant', content: parts }
}

/** The input items as chat messages, every field checked against what the item type allows. */
function readInput (body: Json, price: ModelPrice): ReadInput {
  const read: ReadInput = { messages: [], items: 0, images: 0, encryptedBytes: 0 }
  if (present(body.instructions)) {
    if (typeof body.instructions !== 'string') throw new InvalidFieldError('instructions', 'must be a string')
    read.messages.push({ role: 'developer', content: body.instructions })
    read.items++
  }
  const input = body.input
  if (!present(input)) return read
  if (typeof input === 'string') {
    read.messages.push({ role: 'user', content: input })
    read.items++
    return read
  }
  if (!Array.isArray(input)) throw new InvalidFieldError('input', 'must be a string or a list of input items')
  let calls: Json[] | null = null // the tool calls of the assistant message being built from consecutive function_call items
  for (const [index, item] of input.entries()) {
    const path = `input.${index}`
    if (!isObject(item)) throw new InvalidFieldError(path, 'must be an object')
    read.items++
    const type = item.type ?? 'message'
    if (type !== 'function_call') calls = null
    switch (type) {
      case 'message': {
        checkFields(item, ['type', 'role', 'content', 'id', 'status', 'phase'], path)
        if (typeof item.role !== 'string' || !ROLES.has(item.role)) throw new InvalidFieldError(`${path}.role`, `must be one of ${[...ROLES].join(', ')}`)
        read.messages.push({ role: item.role, content: readContent(item.content, `${path}.content`, price, read) })
        break
      }
      case 'function_call': {
        checkFields(item, ['type', 'call_id', 'name', 'arguments', 'namespace', 'id', 'status'], path)
        const call = { id: stringField(item, 'call_id', path), type: 'function', function: { name: stringField(item, 'name', path), arguments: stringField(item, 'arguments', path) } }
        const namespace = stringField(item, 'namespace', path, true)
        if (calls === null || namespace !== undefined) {
          calls = [call]
          // A namespace is counted as bytes, beside the call (chat's rule for a message's other fields).
          read.messages.push({ role: 'assistant', content: null, tool_calls: calls, ...(namespace === undefined ? {} : { namespace }) })
          if (namespace !== undefined) calls = null
        } else {
          calls.push(call)
        }
        break
      }
      case 'function_call_output': {
        checkFields(item, ['type', 'call_id', 'output', 'id', 'status'], path)
        read.messages.push({ role: 'tool', tool_call_id: stringField(item, 'call_id', path), content: readContent(item.output, `${path}.output`, price, read) })
        break
      }
      case 'reasoning':
        read.messages.push(readReasoning(item, path, read))
        break
      case 'item_reference':
        throw new UnboundedFieldError(path, 'refers to a stored item, whose input the budget gate cannot see or bound')
      default:
        throw new UnboundedFieldError(`${path}.type`, `${quoted(type)} items cannot be bounded by the budget gate`)
    }
  }
  return read
}

/**
 * Only function tools: the model asks, the caller runs them, and their definitions are counted as input.
 * A server-side tool (web search, file search, code interpreter, image generation, computer use, MCP,
 * shell, custom tools) runs at the provider, and its results become input tokens of later steps with no
 * documented bound: max_tool_calls bounds how many, not how large. Returned as chat's tool definitions.
 */
function readTools (body: Json): Json[] | null {
  const tools = body.tools
  if (!present(tools)) return null
  if (!Array.isArray(tools)) throw new InvalidFieldError('tools', 'must be a list of tools')
  return tools.map((tool, index) => {
    const path = `tools.${index}`
    if (!isObject(tool)) throw new InvalidFieldError(path, 'must be an object')
    if (tool.type !== 'function') {
      throw new UnboundedFieldError(`${path}.type`, `${quoted(tool.type)} tools run at the provider, and their results are input of later steps with no documented bound (max_tool_calls does not bound them): only 'function' tools are accepted`)
    }
    checkFields(tool, ['type', 'name', 'description', 'parameters', 'strict'], path)
    const { type: _type, ...definition } = tool
    stringField(tool, 'name', path)
    return { type: 'function', function: definition }
  })
}

// tool_choice: a mode, a function, or a subset of the (function) tools; any other type names a server-side tool.
const TOOL_CHOICE_MODES = new Set(['none', 'auto', 'required'])
const TOOL_CHOICE_TYPES = new Set(['function', 'allowed_tools'])

function checkToolChoice (choice: unknown): void {
  if (!present(choice)) return
  if (typeof choice === 'string') {
    if (!TOOL_CHOICE_MODES.has(choice)) throw new InvalidFieldError('tool_choice', `must be one of ${[...TOOL_CHOICE_MODES].join(', ')} or an object`)
    return
  }
  if (!isObject(choice)) throw new InvalidFieldError('tool_choice', 'must be a string or an object')
  if (typeof choice.type !== 'string' || !TOOL_CHOICE_TYPES.has(choice.type)) {
    throw new UnboundedFieldError('tool_choice.type', `${quoted(choice.type)} names a tool that runs at the provider: only function tools are accepted`)
  }
}

function positiveInteger (body: Json, field: string): number {
  const value = body[field]
  if (!present(value)) return 0
  if (!Number.isSafeInteger(value) || (value as number) < 1) throw new InvalidFieldError(field, 'must be a positive integer')
  return value as number
}

async function boundCall (body: Json, price: ModelPrice, model: unknown): Promise<CallBound> {
  for (const field of Object.keys(body)) {
    const unseen = UNSEEN_INPUT[field]
    if (unseen !== undefined) {
      if (present(body[field]) && body[field] !== false) throw new UnboundedFieldError(field, unseen)
    } else if (!BOUNDED_FIELDS.has(field)) {
      throw new UnboundedFieldError(field, 'is not a field whose cost the budget gate can bound')
    }
  }
  if (present(body.service_tier) && !SERVICE_TIERS_AT_LIST_PRICE.has(body.service_tier as string)) {
    throw new UnboundedFieldError('service_tier', `must be one of ${[...SERVICE_TIERS_AT_LIST_PRICE].join(', ')}: other tiers bill above the price table`)
  }
  const requested = positiveInteger(body, 'max_output_tokens')
  positiveInteger(body, 'max_tool_calls')
  for (const field of ['reasoning', 'text', 'stream_options', 'metadata'] as const) {
    if (present(body[field]) && !isObject(body[field])) throw new InvalidFieldError(field, 'must be an object')
  }
  // Nested past what any schema needs, a body would overflow the stack of JSON.stringify below.
  if (walkForDepthOrKey(body, MAX_NESTING, null) === 'deep') throw new InvalidFieldError('body', `is nested more than ${MAX_NESTING} levels deep`)
  const read = readInput(body, price)
  const tools = readTools(body)
  checkToolChoice(body.tool_choice)
  const text = present(body.text) ? body.text : undefined
  const count = typeof model === 'string' ? tokenCounter(model) : null
  let promptTokens: number
  if (count === null) {
    // Every byte of what becomes input, JSON-encoded: byte-level BPE never makes a token of less than a byte.
    promptTokens = bytesOf(read.messages) + [tools, body.tool_choice, text].reduce<number>((sum, part) => sum + (present(part) ? bytesOf(part) : 0), 0) +
      TOKENS_PER_MESSAGE * read.messages.length + TOKENS_PER_REPLY
  } else {
    // The text config's format (a JSON schema) is counted as chat's response_format is: its JSON under a heading.
    promptTokens = await chatPromptTokens({ messages: read.messages, tools: tools ?? undefined, tool_choice: body.tool_choice ?? undefined, response_format: text }, count)
  }
  const inputTokens = promptTokens + read.encryptedBytes + TOKENS_PER_ITEM * read.items + TOKENS_PER_REQUEST +
    read.images * (price.maxImageTokens ?? 0) + injectedPromptTokens({ tools: tools ?? undefined, tool_choice: body.tool_choice }, [model, body.model])
  return { inputTokens, requested }
}

/** The output tokens of a call asking for at most `requested` (0: the model's maximum), and what the provider bills past that limit. */
function outputTokensFor (price: ModelPrice, requested: number): number {
  const capped = requested === 0 ? price.maxOutputTokens : Math.min(requested, price.maxOutputTokens)
  return capped + (price.reasoningBeyondLimitTokens ?? 0)
}

function callCost (price: ModelPrice, inputTokens: number, outputTokens: number): Money {
  const tokens = costOf(price, inputTokens, outputTokens)
  return price.perRequest === undefined ? tokens : fromUnits(toUnits(tokens) + toUnits(price.perRequest))
}

/**
 * The worst case of a Responses call, in tokens. Input: instructions and every input item (by the
 * model's tokenizer and the chat rule for OpenAI models, else every byte of their JSON), function tool
 * definitions, tool_choice and the text format's schema, each image at the model's worst case, the bytes
 * of encrypted reasoning, and generous framing per item. Output: max_output_tokens (reasoning included)
 * or the model's maximum, and what the provider bills past it.
 */
export async function worstCaseTokens (body: Json, price: ModelPrice, model: unknown = body.model): Promise<{ inputTokens: number, outputTokens: number }> {
  const { inputTokens, requested } = await boundCall(body, price, model)
  return { inputTokens, outputTokens: outputTokensFor(price, requested) }
}

export async function estimateResponsesCost (input: unknown, prices: PriceBook, model?: string): Promise<CostEstimate> {
  const { request: body, chosen, priced } = pricedCall(input, prices, model)
  // The price table's name picks the tokenizer: an alias (an Azure deployment's name) is that model.
  const { inputTokens, requested } = await boundCall(body, priced.price, priced.model)
  const at = (limit: number): CostEstimate => {
    const outputTokens = outputTokensFor(priced.price, limit)
    return { model: chosen, amount: callCost(priced.price, inputTokens, outputTokens), tokens: inputTokens + outputTokens, atOutputLimit: at }
  }
  return at(requested)
}

const TOKENS = (value: unknown): value is number => Number.isSafeInteger(value) && (value as number) >= 0

/** A Responses `usage` object, read: null when its counts are not trusted; a cached count larger than the input is left out. */
function usageOf (response: unknown, requestedModel: string): TokenUsage | null {
  if (!isObject(response) || !isObject(response.usage)) return null
  const usage = response.usage
  if (!TOKENS(usage.input_tokens) || !TOKENS(usage.output_tokens)) return null
  const model = typeof response.model === 'string' && response.model !== '' ? response.model : requestedModel
  const result: TokenUsage = { model, inputTokens: usage.input_tokens, outputTokens: usage.output_tokens }
  const cached = isObject(usage.input_tokens_details) ? usage.input_tokens_details.cached_tokens : undefined
  if (TOKENS(cached) && cached <= usage.input_tokens) result.cachedInputTokens = cached
  return result
}

function parse (text: string): unknown {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

/** The events whose response carries the call's final usage; no other event does. */
const FINAL_EVENTS = new Set(['response.completed', 'response.incomplete', 'response.failed'])
const MAY_BE_FINAL = /"response\.(?:completed|incomplete|failed)"/

function streamUsage (requestedModel: string): StreamUsageReader {
  let usage: TokenUsage | null = null
  return {
    event (name, data) {
      // Deltas are most of a stream: parsed only when the event could be a final one.
      if (name !== undefined ? !FINAL_EVENTS.has(name) : !MAY_BE_FINAL.test(data)) return
      const event = parse(data)
      if (!isObject(event) || typeof event.type !== 'string' || !FINAL_EVENTS.has(event.type)) return
      const read = usageOf(event.response, requestedModel)
      if (read !== null) usage = read
    },
    usage: () => usage
  }
}

const outputLimit: OutputLimit = {
  requested: (body, price) => {
    const value = body.max_output_tokens
    if (!present(value)) return price.maxOutputTokens
    return Number.isSafeInteger(value) && (value as number) >= 1 ? value as number : null
  },
  withLimit: (body, tokens) => ({ ...body, max_output_tokens: tokens })
}

export const responsesApi: ModelApi = {
  name: 'responses',
  estimate: estimateResponsesCost,
  outputLimit,
  usageFromBody: (payload, requestedModel) => usageOf(parse(payload), requestedModel),
  streamUsage,
  errorBody: openAIErrorBody,
  forwarded: atListPriceTier
}
