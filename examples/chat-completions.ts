// An OpenAI-compatible POST /v1/chat/completions behind the budget gate: the built-in mock provider by
// default, or a real OpenAI-compatible upstream when UPSTREAM_URL is set. Errors use OpenAI's shape.
import { randomUUID } from 'node:crypto'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import Ajv from 'ajv'
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import { mockCompletion, mockTokens, mockUsage, type ChatRequest } from './mock-provider.js'

export interface ChatCompletionsOptions {
  /** An OpenAI-compatible base URL (…/v1); unset: the mock provider. */
  upstreamUrl?: string
  upstreamApiKey?: string
  /** The mock provider's pause between streamed tokens. */
  mockTokenDelayMs?: number
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

export const chatCompletions: FastifyPluginAsyncTypebox<ChatCompletionsOptions> = async (app, options) => {
  app.setValidatorCompiler(({ schema }) => ajv.compile(schema as object))
  app.setErrorHandler((error: FastifyError, request, reply) => {
    if (error.validation !== undefined) {
      const param = error.validation[0]?.instancePath.replace(/^\//, '').replace(/\//g, '.') || null
      return reply.code(400).send({ error: { message: error.message, type: 'invalid_request_error', code: 'invalid_request', param } })
    }
    request.log.error({ err: error }, 'chat completion failed')
    const statusCode = error.statusCode !== undefined && error.statusCode >= 400 ? error.statusCode : 500
    return reply.code(statusCode).send({ error: { message: statusCode >= 500 ? 'Internal error' : error.message, type: 'server_error', code: error.code ?? null, param: null } })
  })

  app.post('/v1/chat/completions', { schema: { body: ChatBody } }, async (request, reply) => {
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
  request.raw.once('close', () => { if (!reply.raw.writableFinished) abort.abort() })
  const upstream = await fetch(`${options.upstreamUrl!.replace(/\/$/, '')}/chat/completions`, {
    method: 'POST',
    signal: abort.signal,
    headers: { 'content-type': 'application/json', ...(options.upstreamApiKey === undefined ? {} : { authorization: `Bearer ${options.upstreamApiKey}` }) },
    body: JSON.stringify(body.stream === true ? { ...body, stream_options: { include_usage: true } } : body)
  })
  if (body.stream !== true || !upstream.ok || upstream.body === null) {
    // JSON: the gate reads `usage` from the body itself.
    return await reply.code(upstream.status).type('application/json').send(await upstream.text())
  }
  reply.hijack()
  reply.raw.writeHead(upstream.status, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', ...(reply.getHeaders() as Record<string, string>) })
  // Until the final usage chunk arrives, count what was produced: each delta chunk is about one token.
  const promptTokens = mockUsage(body).prompt_tokens
  let produced = 0
  let buffer = ''
  const decoder = new TextDecoder()
  try {
    for await (const bytes of upstream.body) {
      reply.raw.write(bytes)
      buffer += decoder.decode(bytes, { stream: true })
      for (let end = buffer.indexOf('\n\n'); end !== -1; end = buffer.indexOf('\n\n')) {
        const event = buffer.slice(0, end).replace(/^data: /, '')
        buffer = buffer.slice(end + 2)
        if (event === '[DONE]') continue
        const data = JSON.parse(event) as { model?: string, usage?: { prompt_tokens: number, completion_tokens: number } | null }
        if (data.usage != null) {
          request.budgetGate?.reportUsage({ model: data.model ?? body.model, inputTokens: data.usage.prompt_tokens, outputTokens: data.usage.completion_tokens })
        } else {
          request.budgetGate?.reportUsage({ model: data.model ?? body.model, inputTokens: promptTokens, outputTokens: ++produced })
        }
      }
    }
  } catch (error) {
    if (!abort.signal.aborted) throw error
  }
  reply.raw.end()
}
