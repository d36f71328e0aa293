// OpenAI's Responses API, POST /v1/responses: a mock provider that speaks it (JSON and its event
// stream, as OpenAI's client and its stream helper read them), or a forwarder to UPSTREAM_URL.
// The mock's usage follows from the request: the prompt's tokens (instructions and input items), a
// reasoning model's reasoning tokens, and a reply cut at max_output_tokens (the response is then
// `incomplete`, as OpenAI's is); a long prompt sent again is read from its prompt cache.
import { randomBytes } from 'node:crypto'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type, type Static } from '@sinclair/typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import {
  answerErrorsAs, authenticating, countTokens, endpoint, forward, mockWords, openAIFailure, pace, PromptCache, replyTokens, sseEvent, startEventStream
} from './common.js'

export interface ResponsesOptions {
  /** An OpenAI base URL (…/v1); unset: the mock provider. */
  upstreamUrl?: string
  upstreamApiKey?: string
  /** The mock provider's pause between streamed tokens. */
  mockTokenDelayMs?: number
  /** Runs in the route's onRequest, before the body is read and before any budget work. */
  authenticate?: (request: FastifyRequest) => unknown
}

// What the mock reads; everything else (tools, text, metadata, ...) passes to the gate and the upstream as sent.
const ResponsesBody = Type.Object({
  model: Type.String({ minLength: 1, maxLength: 200 }),
  input: Type.Optional(Type.Union([Type.String(), Type.Array(Type.Object({}))])),
  instructions: Type.Optional(Type.Union([Type.String(), Type.Null()])),
  max_output_tokens: Type.Optional(Type.Union([Type.Integer({ minimum: 1 }), Type.Null()])),
  reasoning: Type.Optional(Type.Union([Type.Object({ effort: Type.Optional(Type.Union([Type.String(), Type.Null()])) }), Type.Null()])),
  prompt_cache_key: Type.Optional(Type.String()),
  stream: Type.Optional(Type.Union([Type.Boolean(), Type.Null()]))
})
export type ResponsesRequest = Static<typeof ResponsesBody> & Record<string, unknown>

export interface ResponsesUsage {
  input_tokens: number
  input_tokens_details: { cached_tokens: number }
  output_tokens: number
  output_tokens_details: { reasoning_tokens: number }
  total_tokens: number
}

/** The mock's reply when max_output_tokens does not say: its longest. */
const DEFAULT_OUTPUT_CAP = 256
/** Reasoning tokens a reasoning model spends at each effort (before the cap), and OpenAI's default effort. */
const REASONING_TOKENS: Record<string, number> = { minimal: 0, low: 16, medium: 64, high: 256 }
// OpenAI caches prompts of 1024 tokens or more, in 128-token steps, for 5 to 10 minutes.
const CACHE_MIN_TOKENS = 1024
const CACHE_STEP_TOKENS = 128
const CACHE_TTL_MS = 5 * 60_000

const isReasoningModel = (model: string) => /^(o\d|gpt-5)/.test(model)

/** One input item as a message: its role (a tool's output has none) and its text: a message's content, a function call's arguments, a tool's output. */
function itemMessage (item: Record<string, unknown>): { role: string, text: string } {
  const { role, content, arguments: args, output, name } = item
  const parts: unknown[] = [name, args, typeof output === 'string' ? output : output === undefined ? undefined : JSON.stringify(output)]
  if (typeof content === 'string') parts.push(content)
  else if (Array.isArray(content)) for (const part of content) parts.push((part as { text?: unknown } | null)?.text)
  return { role: typeof role === 'string' ? role : '', text: parts.filter((part): part is string => typeof part === 'string').join('\n') }
}

/**
 * The prompt's text (what a prompt cache compares), and its tokens as OpenAI counts them: the chat
 * format's 3 tokens a message, its role, and 3 for the reply. Instructions are a developer message, an
 * input string a user message.
 */
function prompt (request: ResponsesRequest): { text: string, tokens: number } {
  const items: Array<{ role: string, text: string }> = []
  if (typeof request.instructions === 'string') items.push({ role: 'developer', text: request.instructions })
  if (typeof request.input === 'string') items.push({ role: 'user', text: request.input })
  else for (const item of request.input ?? []) items.push(itemMessage(item as Record<string, unknown>))
  return {
    text: items.map((item) => item.text).join('\n'),
    tokens: 3 + items.reduce((sum, item) => sum + 3 + countTokens(request.model, item.role) + countTokens(request.model, item.text), 0)
  }
}

export interface ResponsesPlan {
  usage: ResponsesUsage
  /** The visible reply's tokens. */
  words: string[]
  /** The reply was cut at max_output_tokens. */
  incomplete: boolean
}

/**
 * What the mock answers: never more output than max_output_tokens, reasoning included (a reasoning
 * model spends at most half the cap thinking, so some answer always fits).
 */
export function planResponse (request: ResponsesRequest, cache: PromptCache): ResponsesPlan {
  const { text, tokens: inputTokens } = prompt(request)
  const cap = request.max_output_tokens ?? DEFAULT_OUTPUT_CAP
  const wanted = isReasoningModel(request.model) ? REASONING_TOKENS[request.reasoning?.effort ?? 'medium'] ?? REASONING_TOKENS.medium! : 0
  const reasoning = Math.min(wanted, Math.floor(cap / 2))
  const visible = replyTokens(inputTokens, cap - reasoning)
  let cached = 0
  if (inputTokens >= CACHE_MIN_TOKENS) {
    cached = Math.min(cache.read(text), inputTokens)
    cache.write(text, CACHE_MIN_TOKENS + Math.floor((inputTokens - CACHE_MIN_TOKENS) / CACHE_STEP_TOKENS) * CACHE_STEP_TOKENS, CACHE_TTL_MS)
  }
  const outputTokens = reasoning + visible
  return {
    usage: {
      input_tokens: inputTokens,
      input_tokens_details: { cached_tokens: cached },
      output_tokens: outputTokens,
      output_tokens_details: { reasoning_tokens: reasoning },
      total_tokens: inputTokens + outputTokens
    },
    words: mockWords(visible),
    incomplete: reasoning < wanted || visible < 8 + inputTokens
  }
}

const newId = (prefix: string) => `${prefix}_${randomBytes(24).toString('hex')}`

/** The response object, at a point of its life: in progress (no output yet), or finished with `output`. */
function responseObject (request: ResponsesRequest, id: string, createdAt: number, plan: ResponsesPlan, output: object[] | null) {
  const finished = output !== null
  return {
    id,
    object: 'response',
    created_at: createdAt,
    status: !finished ? 'in_progress' : plan.incomplete ? 'incomplete' : 'completed',
    error: null,
    incomplete_details: finished && plan.incomplete ? { reason: 'max_output_tokens' } : null,
    instructions: request.instructions ?? null,
    max_output_tokens: request.max_output_tokens ?? null,
    model: request.model,
    output: output ?? [],
    parallel_tool_calls: true,
    previous_response_id: null,
    reasoning: { effort: isReasoningModel(request.model) ? request.reasoning?.effort ?? 'medium' : null, summary: null },
    store: false,
    temperature: 1,
    text: { format: { type: 'text' } },
    tool_choice: 'auto',
    tools: [],
    top_p: 1,
    truncation: 'disabled',
    usage: finished ? plan.usage : null,
    metadata: {}
  }
}

const outputText = (text: string) => ({ type: 'output_text', text, annotations: [], logprobs: [] })

function messageItem (id: string, text: string, plan: ResponsesPlan) {
  return { type: 'message', id, status: plan.incomplete ? 'incomplete' : 'completed', role: 'assistant', content: [outputText(text)] }
}

function reasoningItem (plan: ResponsesPlan): object[] {
  return plan.usage.output_tokens_details.reasoning_tokens > 0 ? [{ type: 'reasoning', id: newId('rs'), summary: [] }] : []
}

export function mockResponse (request: ResponsesRequest, plan: ResponsesPlan) {
  const output = [...reasoningItem(plan), messageItem(newId('msg'), plan.words.join(''), plan)]
  return responseObject(request, newId('resp'), Math.floor(Date.now() / 1000), plan, output)
}

/**
 * The Responses event stream, one token a delta: response.created, the output items as they open, fill and
 * close, then response.completed (response.incomplete when cut at the cap) with the full response and its usage.
 * Reports usage as it goes, so a stream the client cuts is settled for what was produced.
 */
async function streamMock (request: FastifyRequest, reply: FastifyReply, body: ResponsesRequest, plan: ResponsesPlan, delayMs: number) {
  const id = newId('resp')
  const createdAt = Math.floor(Date.now() / 1000)
  const response = startEventStream(reply)
  let sequence = 0
  const send = (type: string, fields: object) => response.write(sseEvent({ type, sequence_number: sequence++, ...fields }, type))
  const { usage } = plan
  const report = (outputTokens: number) => request.budgetGate?.reportUsage({
    model: body.model,
    inputTokens: usage.input_tokens,
    outputTokens,
    ...(usage.input_tokens_details.cached_tokens > 0 ? { cachedInputTokens: usage.input_tokens_details.cached_tokens } : {})
  })
  report(0)
  send('response.created', { response: responseObject(body, id, createdAt, plan, null) })
  send('response.in_progress', { response: responseObject(body, id, createdAt, plan, null) })
  const output: object[] = []
  for (const item of reasoningItem(plan)) {
    send('response.output_item.added', { output_index: output.length, item })
    if (!await pace(response, delayMs)) return
    report(usage.output_tokens_details.reasoning_tokens) // thought, though nothing of it is shown
    send('response.output_item.done', { output_index: output.length, item })
    output.push(item)
  }
  const itemId = newId('msg')
  const at = { item_id: itemId, output_index: output.length, content_index: 0 }
  send('response.output_item.added', { output_index: output.length, item: { type: 'message', id: itemId, status: 'in_progress', role: 'assistant', content: [] } })
  send('response.content_part.added', { ...at, part: outputText('') })
  let text = ''
  for (const [produced, word] of plan.words.entries()) {
    if (!await pace(response, delayMs)) return
    send('response.output_text.delta', { ...at, delta: word, logprobs: [] })
    text += word
    report(usage.output_tokens_details.reasoning_tokens + produced + 1)
  }
  send('response.output_text.done', { ...at, text, logprobs: [] })
  send('response.content_part.done', { ...at, part: outputText(text) })
  const message = messageItem(itemId, text, plan)
  send('response.output_item.done', { output_index: output.length, item: message })
  output.push(message)
  send(plan.incomplete ? 'response.incomplete' : 'response.completed', { response: responseObject(body, id, createdAt, plan, output) })
  response.end()
}

export const responses: FastifyPluginAsyncTypebox<ResponsesOptions> = async (app, options) => {
  answerErrorsAs(app, 'responses', openAIFailure)
  const cache = new PromptCache()
  app.post('/v1/responses', { schema: { body: ResponsesBody }, ...authenticating(options.authenticate) }, async (request, reply) => {
    // The body as the gate left it (clamp may have lowered max_output_tokens), with the model the gate chose.
    const body: ResponsesRequest = { ...request.body, model: request.budgetGate?.model ?? request.body.model }
    if (options.upstreamUrl !== undefined) {
      return await forward(request, reply, {
        url: endpoint(options.upstreamUrl, '/responses'),
        headers: options.upstreamApiKey === undefined ? {} : { authorization: `Bearer ${options.upstreamApiKey}` },
        body,
        stream: body.stream === true
      })
    }
    const plan = planResponse(body, cache)
    if (body.stream !== true) return mockResponse(body, plan)
    return await streamMock(request, reply, body, plan, options.mockTokenDelayMs ?? 10)
  })
}
