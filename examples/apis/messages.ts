// Anthropic's Messages API, POST /v1/messages: a mock provider that speaks it (JSON and its event
// stream, as Anthropic's client reads them), or a forwarder to ANTHROPIC_UPSTREAM_URL with
// ANTHROPIC_API_KEY. Errors in Anthropic's shape: { type: 'error', error: { type, message } }.
// The mock's usage follows from the request: the prompt's tokens (system, messages, tools), a reply cut
// at max_tokens (stop_reason max_tokens), and prompt caching as Anthropic bills it: the prefix up to the
// last cache_control breakpoint is written to the cache the first time (5 minutes, or 1 hour with
// ttl '1h') and read from it while it lives; input_tokens counts only what is after it.
import { randomBytes } from 'node:crypto'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type, type Static } from '@sinclair/typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { TokenUsage } from '../../lib/index.js'
import {
  answerErrorsAs, authenticating, countTokens, endpoint, forward, mockWords, pace, PromptCache, replyTokens, sseEvent, startEventStream, type ApiFailure
} from './common.js'

export interface MessagesOptions {
  /** Anthropic's base URL with its version (https://api.anthropic.com/v1); unset: the mock provider. */
  upstreamUrl?: string
  /** Sent upstream as x-api-key. */
  upstreamApiKey?: string
  /** The mock provider's pause between streamed tokens. */
  mockTokenDelayMs?: number
  /** Runs in the route's onRequest, before the body is read and before any budget work. */
  authenticate?: (request: FastifyRequest) => unknown
}

/** The API version sent upstream when the client names none. */
export const ANTHROPIC_VERSION = '2023-06-01'

const Block = Type.Object({ type: Type.String(), text: Type.Optional(Type.String()) })
// What the mock reads; everything else (tools' schemas, thinking, metadata, ...) passes to the gate and the upstream as sent.
const MessagesBody = Type.Object({
  model: Type.String({ minLength: 1, maxLength: 200 }),
  max_tokens: Type.Integer({ minimum: 1 }),
  messages: Type.Array(Type.Object({
    role: Type.Union([Type.Literal('user'), Type.Literal('assistant')]),
    content: Type.Union([Type.String(), Type.Array(Block)])
  }), { minItems: 1 }),
  system: Type.Optional(Type.Union([Type.String(), Type.Array(Block)])),
  tools: Type.Optional(Type.Array(Type.Object({}))),
  stream: Type.Optional(Type.Boolean())
})
export type MessagesRequest = Static<typeof MessagesBody> & Record<string, unknown>

export interface MessagesUsage {
  input_tokens: number
  cache_creation_input_tokens: number
  cache_read_input_tokens: number
  cache_creation: { ephemeral_5m_input_tokens: number, ephemeral_1h_input_tokens: number }
  output_tokens: number
  service_tier: 'standard'
}

// Anthropic caches a prefix of 1024 tokens or more (2048 on Haiku; the mock keeps one rule).
const CACHE_MIN_TOKENS = 1024
const TTL_MS = { '5m': 5 * 60_000, '1h': 60 * 60_000 }

interface Breakpoint { text: string, tokens: number, ttl: '5m' | '1h' }

/**
 * The prompt's parts in Anthropic's order (tools, system, messages), each with its tokens: about four
 * bytes a token, and a few for each message's framing. The prompt's breakpoints are where a part
 * carries cache_control: the prefix up to there, and how long it is kept.
 */
function prompt (request: MessagesRequest): { tokens: number, breakpoints: Breakpoint[] } {
  let text = ''
  let tokens = 0
  const breakpoints: Breakpoint[] = []
  const add = (part: string, framing: number, cacheControl: unknown) => {
    text += part + '\n'
    tokens += framing + countTokens(request.model, part)
    if (typeof cacheControl === 'object' && cacheControl !== null) {
      breakpoints.push({ text, tokens, ttl: (cacheControl as { ttl?: unknown }).ttl === '1h' ? '1h' : '5m' })
    }
  }
  const blocks = (content: string | Array<Record<string, unknown>>, framing: number) => {
    if (typeof content === 'string') add(content, framing, undefined)
    else content.forEach((block, i) => add(typeof block.text === 'string' ? block.text : JSON.stringify(block), i === 0 ? framing : 0, block.cache_control))
  }
  for (const tool of request.tools ?? []) add(JSON.stringify(tool), 3, (tool as { cache_control?: unknown }).cache_control)
  if (request.system !== undefined) blocks(request.system as string | Array<Record<string, unknown>>, 3)
  for (const message of request.messages) blocks(message.content as string | Array<Record<string, unknown>>, 3 + countTokens(request.model, message.role))
  return { tokens, breakpoints }
}

export interface MessagesPlan {
  usage: MessagesUsage
  words: string[]
  stopReason: 'end_turn' | 'max_tokens'
}

/** What the mock answers: never more output than max_tokens; the longest cacheable prefix read if cached, else written. */
export function planMessage (request: MessagesRequest, cache: PromptCache): MessagesPlan {
  const { tokens, breakpoints } = prompt(request)
  const last = breakpoints.filter((breakpoint) => breakpoint.tokens >= CACHE_MIN_TOKENS).at(-1)
  let read = 0
  let written = 0
  if (last !== undefined) {
    read = cache.read(last.text)
    if (read === 0) {
      written = last.tokens
      cache.write(last.text, last.tokens, TTL_MS[last.ttl])
    }
  }
  const output = replyTokens(tokens, request.max_tokens)
  return {
    usage: {
      input_tokens: tokens - read - written,
      cache_creation_input_tokens: written,
      cache_read_input_tokens: read,
      cache_creation: { ephemeral_5m_input_tokens: last?.ttl === '1h' ? 0 : written, ephemeral_1h_input_tokens: last?.ttl === '1h' ? written : 0 },
      output_tokens: output,
      service_tier: 'standard'
    },
    words: mockWords(output),
    stopReason: output < 8 + tokens ? 'max_tokens' : 'end_turn'
  }
}

const newId = () => `msg_${randomBytes(12).toString('base64url')}`

export function mockMessage (request: MessagesRequest, plan: MessagesPlan) {
  return {
    id: newId(),
    type: 'message',
    role: 'assistant',
    model: request.model,
    content: [{ type: 'text', text: plan.words.join('') }],
    stop_reason: plan.stopReason,
    stop_sequence: null,
    usage: plan.usage
  }
}

/** The usage as the gate counts it: every input token, those written to and read from the cache among them. */
function tokenUsage (model: string, usage: MessagesUsage, outputTokens: number): TokenUsage {
  return {
    model,
    inputTokens: usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens,
    outputTokens,
    ...(usage.cache_read_input_tokens > 0 ? { cachedInputTokens: usage.cache_read_input_tokens } : {}),
    ...(usage.cache_creation.ephemeral_5m_input_tokens > 0 ? { cacheWriteTokens: usage.cache_creation.ephemeral_5m_input_tokens } : {}),
    ...(usage.cache_creation.ephemeral_1h_input_tokens > 0 ? { cacheWrite1hTokens: usage.cache_creation.ephemeral_1h_input_tokens } : {})
  }
}

/**
 * The Messages event stream, one token a text_delta: message_start (the input usage, one output token so
 * far), the text block's start, deltas and stop, message_delta (stop_reason and the cumulative usage),
 * message_stop. Reports usage as it goes, so a stream the client cuts is settled for what was produced.
 */
async function streamMock (request: FastifyRequest, reply: FastifyReply, body: MessagesRequest, plan: MessagesPlan, delayMs: number) {
  const response = startEventStream(reply)
  const send = (type: string, fields: object = {}) => response.write(sseEvent({ type, ...fields }, type))
  const message = mockMessage(body, plan)
  request.budgetGate?.reportUsage(tokenUsage(body.model, plan.usage, 1))
  send('message_start', { message: { ...message, content: [], stop_reason: null, usage: { ...plan.usage, output_tokens: 1 } } })
  send('content_block_start', { index: 0, content_block: { type: 'text', text: '' } })
  send('ping')
  for (const [produced, word] of plan.words.entries()) {
    if (!await pace(response, delayMs)) return
    send('content_block_delta', { index: 0, delta: { type: 'text_delta', text: word } })
    request.budgetGate?.reportUsage(tokenUsage(body.model, plan.usage, produced + 1))
  }
  send('content_block_stop', { index: 0 })
  const { input_tokens: input, cache_creation_input_tokens: written, cache_read_input_tokens: read, output_tokens: output } = plan.usage
  send('message_delta', {
    delta: { stop_reason: plan.stopReason, stop_sequence: null },
    usage: { input_tokens: input, cache_creation_input_tokens: written, cache_read_input_tokens: read, output_tokens: output }
  })
  send('message_stop')
  response.end()
}

// Anthropic's error type for each status it answers with.
const ERROR_TYPES: Record<number, string> = {
  400: 'invalid_request_error', 401: 'authentication_error', 403: 'permission_error', 404: 'not_found_error',
  413: 'request_too_large', 429: 'rate_limit_error', 529: 'overloaded_error'
}

/** A failure in Anthropic's error shape. */
export function anthropicFailure (failure: ApiFailure) {
  const type = ERROR_TYPES[failure.statusCode] ?? (failure.clientError ? 'invalid_request_error' : 'api_error')
  return { type: 'error', error: { type, message: failure.param === null ? failure.message : `${failure.param}: ${failure.message}` } }
}

/** The client's header, when it sent one. */
function header (request: FastifyRequest, name: string): string | undefined {
  const value = request.headers[name]
  return Array.isArray(value) ? value.join(',') : value
}

export const messages: FastifyPluginAsyncTypebox<MessagesOptions> = async (app, options) => {
  answerErrorsAs(app, 'messages', anthropicFailure)
  const cache = new PromptCache()
  app.post('/v1/messages', { schema: { body: MessagesBody }, ...authenticating(options.authenticate) }, async (request, reply) => {
    // The body as the gate left it (clamp may have lowered max_tokens), with the model the gate chose.
    const body: MessagesRequest = { ...request.body, model: request.budgetGate?.model ?? request.body.model }
    if (options.upstreamUrl !== undefined) {
      const beta = header(request, 'anthropic-beta')
      return await forward(request, reply, {
        url: endpoint(options.upstreamUrl, '/messages'),
        headers: {
          'anthropic-version': header(request, 'anthropic-version') ?? ANTHROPIC_VERSION,
          ...(beta === undefined ? {} : { 'anthropic-beta': beta }),
          ...(options.upstreamApiKey === undefined ? {} : { 'x-api-key': options.upstreamApiKey })
        },
        body,
        stream: body.stream === true
      })
    }
    const plan = planMessage(body, cache)
    if (body.stream !== true) return mockMessage(body, plan)
    return await streamMock(request, reply, body, plan, options.mockTokenDelayMs ?? 10)
  })
}
