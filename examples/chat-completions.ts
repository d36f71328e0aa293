// An OpenAI-compatible POST /v1/chat/completions behind the budget gate: the built-in mock provider by
// default, or a real OpenAI-compatible upstream when UPSTREAM_URL is set. Errors use OpenAI's shape.
import { randomUUID } from 'node:crypto'
import type { ServerResponse } from 'node:http'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import Ajv from 'ajv'
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import { mockCompletion, mockTokens, mockUsage, type ChatRequest } from './mock-provider.js'
import { SseParser, type SseEvent } from './sse.js'

export interface ChatCompletionsOptions {
  /** An OpenAI-compatible base URL (…/v1); unset: the mock provider. */
  upstreamUrl?: string
  upstreamApiKey?: string
  /** The mock provider's pause between streamed tokens. */
  mockTokenDelayMs?: number
  /** Runs in the route's onRequest, before the body is read and before any budget work; throw an error with a 4xx statusCode (and a code) to refuse. */
  authenticate?: (request: FastifyRequest) => unknown
}

const ChatBody = Type.Object({
  model: Type.String({ minLength: 1, maxLength: 200 }),
  messages: Type.Array(Type.Object({
    role: Type.Union([Type.Literal('system'), Type.Literal('developer'), Type.Literal('user'), Type.Literal('assistant'), Type.Literal('tool')]),
    content: Type.Union([Type.String(), Type.Array(Type.Object({ type: Type.String(), text: Type.Optional(Type.String()) })), Type.Null()])
  }), { minItems: 1 }),
  max_tokens: Type.Optional(Type.Integer({ minimum: 1 })),
  max_completion_tokens: Type.Optional(Type.Integer({ minimum: 1 })),
  stream: Type.Optional(Type.Boolean())
})

// Fastify's default validator would coerce {"max_tokens": "20"} to 20; an API should say it is wrong.
const ajv = new Ajv.default({ coerceTypes: false, removeAdditional: false, allErrors: false })

/** Fastify's codes for a request it could not read, as stable OpenAI-style codes; other codes are kept. */
const CLIENT_ERROR_CODES: Record<string, string> = {
  FST_ERR_CTP_INVALID_JSON_BODY: 'invalid_json',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'invalid_json',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'unsupported_media_type',
  FST_ERR_CTP_BODY_TOO_LARGE: 'request_too_large',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'invalid_request'
}

export const chatCompletions: FastifyPluginAsyncTypebox<ChatCompletionsOptions> = async (app, options) => {
  app.setValidatorCompiler(({ schema }) => ajv.compile(schema as object))
  app.setErrorHandler((error: FastifyError, request, reply) => {
    if (error.validation !== undefined) {
      request.log.info({ err: error }, 'chat completion request refused')
      const param = error.validation[0]?.instancePath.replace(/^\//, '').replace(/\//g, '.') || null
      return reply.code(400).send({ error: { message: error.message, type: 'invalid_request_error', code: 'invalid_request', param } })
    }
    const statusCode = Number.isInteger(error.statusCode) && error.statusCode! >= 400 && error.statusCode! < 600 ? error.statusCode! : 500
    if (statusCode < 500) {
      // The client's error (a body that is not JSON, a missing API key): not the gateway's fault.
      request.log.info({ err: error }, 'chat completion request refused')
      const code = (error.code === undefined ? undefined : CLIENT_ERROR_CODES[error.code] ?? error.code) ?? 'invalid_request'
      return reply.code(statusCode).send({ error: { message: error.message, type: 'invalid_request_error', code, param: null } })
    }
    request.log.error({ err: error }, 'chat completion failed')
    return reply.code(statusCode).send({ error: { message: 'Internal error', type: 'server_error', code: error.code ?? null, param: null } })
  })

  const authenticate = options.authenticate
  app.post('/v1/chat/completions', {
    schema: { body: ChatBody },
    ...(authenticate === undefined ? {} : { onRequest: async (request: FastifyRequest) => { await authenticate(request) } })
  }, async (request, reply) => {
    // The gate may have chosen the model (auto-downgrade); call that one.
    const body: ChatRequest = { ...request.body, model: request.budgetGate?.model ?? request.body.model }
    if (options.upstreamUrl !== undefined) return await forwardToUpstream(request, reply, body, options)
    const id = `chatcmpl-${randomUUID()}`
    const created = Math.floor(Date.now() / 1000)
    if (body.stream !== true) return mockCompletion(body, id, created)
    return await streamMock(request, reply, body, id, created, options.mockTokenDelayMs ?? 10)
  })
}

/** Server-sent events, one token a chunk, usage in the last chunk. Reports usage as it goes, so a stream cut off by the client is settled for what was produced. */
async function streamMock (request: FastifyRequest, reply: FastifyReply, body: ChatRequest, id: string, created: number, delayMs: number) {
  const usage = mockUsage(body)
  const chunk = (delta: object, finish: string | null, extra: object = {}) =>
    `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model: body.model, choices: [{ index: 0, delta, finish_reason: finish }], ...extra })}\n\n`
  reply.hijack()
  reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', ...(reply.getHeaders() as Record<string, string>) })
  let produced = 0
  request.budgetGate?.reportUsage({ model: body.model, inputTokens: usage.prompt_tokens, outputTokens: 0 })
  reply.raw.write(chunk({ role: 'assistant', content: '' }, null))
  for (const token of mockTokens(body)) {
    if (reply.raw.destroyed) return
    await new Promise((resolve) => setTimeout(resolve, delayMs))
    if (reply.raw.destroyed) return
    reply.raw.write(chunk({ content: token }, null))
    produced++
    request.budgetGate?.reportUsage({ model: body.model, inputTokens: usage.prompt_tokens, outputTokens: produced })
  }
  reply.raw.write(chunk({}, 'stop', { usage }))
  reply.raw.end('data: [DONE]\n\n')
}

async function forwardToUpstream (request: FastifyRequest, reply: FastifyReply, body: ChatRequest, options: ChatCompletionsOptions) {
  const abort = new AbortController()
  // 'close' of the response: it finished, or the client went away (then stop reading the upstream).
  reply.raw.once('close', () => { if (!reply.raw.writableFinished) abort.abort() })
  const upstream = await fetch(`${options.upstreamUrl!.replace(/\/$/, '')}/chat/completions`, {
    method: 'POST',
    signal: abort.signal,
    headers: { 'content-type': 'application/json', ...(options.upstreamApiKey === undefined ? {} : { authorization: `Bearer ${options.upstreamApiKey}` }) },
    body: JSON.stringify(body.stream === true ? { ...body, stream_options: { ...streamOptionsOf(body), include_usage: true } } : body)
  })
  if (body.stream !== true || !upstream.ok || upstream.body === null) {
    // JSON: the gate reads `usage` from the body itself.
    return await reply.code(upstream.status).type('application/json').send(await upstream.text())
  }
  reply.hijack()
  reply.raw.writeHead(upstream.status, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', ...(reply.getHeaders() as Record<string, string>) })
  // The bytes go to the client as the upstream sent them; a parsed copy of each event is for accounting only.
  const parser = new SseParser()
  const account = streamAccounting(request, body)
  try {
    for await (const bytes of upstream.body) {
      if (reply.raw.destroyed) break // the client went away
      if (!reply.raw.write(bytes)) await drained(reply.raw)
      for (const event of parser.push(bytes)) account(event)
    }
    for (const event of parser.end()) account(event)
  } catch (error) {
    // After hijack nothing may be thrown: Fastify could no longer answer, and the client would wait forever.
    if (!abort.signal.aborted) request.log.error({ err: error }, 'the upstream stream failed; ending the response')
  } finally {
    // Always end: the upstream finished, failed or was cut. The gate settles when the response closes.
    reply.raw.end()
  }
}

/**
 * Reports usage to the gate from the stream's events: only the provider's own count, an event with
 * `usage` (the final chunk, asked for with stream_options.include_usage), with its model as the
 * upstream named it (maybe a dated snapshot) and the prompt tokens read from the provider's cache
 * (usage.prompt_tokens_details.cached_tokens, priced at the cache-read rate; a count over the prompt is
 * left out, the prompt then at the input rate). A stream that ends without one, complete or cut, reports
 * nothing, and the gate charges its estimate: the chunks it passed on say nothing of how many tokens
 * they held (one chunk can carry hundreds), nor of what the provider generated after a cut.
 */
function streamAccounting (request: FastifyRequest, body: ChatRequest): (event: SseEvent) => void {
  return (event) => {
    if (event.data === '[DONE]') return
    let chunk: { model?: unknown, usage?: { prompt_tokens?: unknown, completion_tokens?: unknown, prompt_tokens_details?: { cached_tokens?: unknown } | null } | null }
    try {
      chunk = JSON.parse(event.data)
      if (typeof chunk !== 'object' || chunk === null || Array.isArray(chunk)) throw new TypeError('not a JSON object')
    } catch (error) {
      request.log.warn({ err: error, event: event.event, bytes: event.data.length, start: event.data.slice(0, 100) },
        'the upstream sent an event that is not a JSON object: passed to the client, not counted')
      return
    }
    const { prompt_tokens: inputTokens, completion_tokens: outputTokens } = chunk.usage ?? {}
    if (!Number.isSafeInteger(inputTokens) || !Number.isSafeInteger(outputTokens)) return
    const model = typeof chunk.model === 'string' && chunk.model !== '' ? chunk.model : body.model
    const cached = chunk.usage?.prompt_tokens_details?.cached_tokens
    const cachedInputTokens = Number.isSafeInteger(cached) && (cached as number) > 0 && (cached as number) <= (inputTokens as number) ? cached as number : undefined
    request.budgetGate?.reportUsage({ model, inputTokens: inputTokens as number, outputTokens: outputTokens as number, ...(cachedInputTokens === undefined ? {} : { cachedInputTokens }) })
  }
}

/** The client's own stream_options (kept: only include_usage is the gateway's), when they are an object. */
function streamOptionsOf (body: ChatRequest): Record<string, unknown> {
  const { stream_options: options } = body as { stream_options?: unknown }
  return typeof options === 'object' && options !== null && !Array.isArray(options) ? options as Record<string, unknown> : {}
}

/** Resolves when the response can take more, or is gone. */
async function drained (response: ServerResponse): Promise<void> {
  await new Promise<void>((resolve) => {
    const done = () => {
      response.off('drain', done)
      response.off('close', done)
      resolve()
    }
    response.on('drain', done)
    response.on('close', done)
  })
}
