// An OpenAI-compatible POST /v1/chat/completions behind the budget gate: the built-in mock provider by
// default, or a real OpenAI-compatible upstream when UPSTREAM_URL is set. Errors use OpenAI's shape.
import { randomUUID } from 'node:crypto'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { answerErrorsAs, authenticating, endpoint, forward, openAIFailure, sseEvent, startEventStream } from './apis/common.js'
import { mockCompletion, mockTokens, mockUsage, type ChatRequest } from './mock-provider.js'

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

export const chatCompletions: FastifyPluginAsyncTypebox<ChatCompletionsOptions> = async (app, options) => {
  answerErrorsAs(app, 'chat completion', openAIFailure)
  app.post('/v1/chat/completions', { schema: { body: ChatBody }, ...authenticating(options.authenticate) }, async (request, reply) => {
    // The body as the gate left it (clamp may have lowered its output cap), with the model the gate chose (auto-downgrade).
    const body: ChatRequest = { ...request.body, model: request.budgetGate?.model ?? request.body.model }
    if (options.upstreamUrl !== undefined) {
      return await forward(request, reply, {
        url: endpoint(options.upstreamUrl, '/chat/completions'),
        headers: options.upstreamApiKey === undefined ? {} : { authorization: `Bearer ${options.upstreamApiKey}` },
        // A stream's usage comes in its last chunk only when asked for.
        body: body.stream === true ? { ...body, stream_options: { ...streamOptionsOf(body), include_usage: true } } : body,
        stream: body.stream === true
      })
    }
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
    sseEvent({ id, object: 'chat.completion.chunk', created, model: body.model, choices: [{ index: 0, delta, finish_reason: finish }], ...extra })
  startEventStream(reply)
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

/** The client's own stream_options (kept: only include_usage is the gateway's), when they are an object. */
function streamOptionsOf (body: ChatRequest): Record<string, unknown> {
  const { stream_options: options } = body as { stream_options?: unknown }
  return typeof options === 'object' && options !== null && !Array.isArray(options) ? options as Record<string, unknown> : {}
}
