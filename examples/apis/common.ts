// What the example's model routes share, whatever API they speak: counting a mock prompt's tokens,
// the mock reply's words, writing a server-sent event stream, and forwarding a call to an upstream.
// A forwarded stream is passed on byte for byte and shown to the gate (request.budgetGate.streamed),
// which reads the provider's usage from the API's own events: the example parses nothing.
import type { ServerResponse } from 'node:http'
import Ajv from 'ajv'
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { providerTokens } from '../../lib/pricing/tokens.js'

/** The tokens of `text` as the model's tokenizer counts them (the one the gate loaded); about four bytes a token for other models. */
export function countTokens (model: string, text: string): number {
  return providerTokens(model, text) ?? Math.ceil(Buffer.byteLength(text, 'utf8') / 4)
}

const WORDS = ['budget', 'gateway', 'token', 'model', 'relay', 'cost', 'limit', 'period']

/** A mock reply of `tokens` tokens, one word each. */
export function mockWords (tokens: number): string[] {
  return Array.from({ length: tokens }, (_, i) => (i === 0 ? '' : ' ') + WORDS[i % WORDS.length]!)
}

/** A mock reply's visible output: 8 + the prompt's tokens, cut at the cap (at least 1), the chat mock's rule. */
export function replyTokens (promptTokens: number, cap: number): number {
  return Math.max(1, Math.min(cap, 8 + promptTokens))
}

// Fastify's default validator would coerce {"max_tokens": "20"} to 20; an API should say it is wrong.
const ajv = new Ajv.default({ coerceTypes: false, removeAdditional: false, allErrors: false })

/** Fastify's codes for a request it could not read, as stable codes; other codes are kept. */
const CLIENT_ERROR_CODES: Record<string, string> = {
  FST_ERR_CTP_INVALID_JSON_BODY: 'invalid_json',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'invalid_json',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'unsupported_media_type',
  FST_ERR_CTP_BODY_TOO_LARGE: 'request_too_large',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'invalid_request'
}

/** A failure as one API words it: the client's own mistake (a 4xx, with a stable code and the field at fault) or the gateway's (a 5xx). */
export interface ApiFailure {
  statusCode: number
  clientError: boolean
  code: string | null
  message: string
  param: string | null
}

/**
 * One API's validator and error handler on its (encapsulated) plugin: a body the schema refuses and a
 * request Fastify could not read are the client's mistake, logged at info; anything else is the
 * gateway's, logged at error and answered without its details. `body` words the failure in the API's shape.
 */
export function answerErrorsAs (app: FastifyInstance, what: string, body: (failure: ApiFailure) => unknown): void {
  app.setValidatorCompiler(({ schema }) => ajv.compile(schema as object))
  app.setErrorHandler((error: FastifyError, request, reply) => {
    if (error.validation !== undefined) {
      request.log.info({ err: error }, `${what} request refused`)
      const param = error.validation[0]?.instancePath.replace(/^\//, '').replace(/\//g, '.') || null
      return reply.code(400).send(body({ statusCode: 400, clientError: true, code: 'invalid_request', message: error.message, param }))
    }
    const statusCode = Number.isInteger(error.statusCode) && error.statusCode! >= 400 && error.statusCode! < 600 ? error.statusCode! : 500
    if (statusCode < 500) {
      // The client's error (a body that is not JSON, a missing API key): not the gateway's fault.
      request.log.info({ err: error }, `${what} request refused`)
      const code = (error.code === undefined ? undefined : CLIENT_ERROR_CODES[error.code] ?? error.code) ?? 'invalid_request'
      return reply.code(statusCode).send(body({ statusCode, clientError: true, code, message: error.message, param: null }))
    }
    request.log.error({ err: error }, `${what} failed`)
    return reply.code(statusCode).send(body({ statusCode, clientError: false, code: error.code ?? null, message: 'Internal error', param: null }))
  })
}

/** A failure in OpenAI's error shape (chat completions, Responses, embeddings). */
export function openAIFailure (failure: ApiFailure) {
  return { error: { message: failure.message, type: failure.clientError ? 'invalid_request_error' : 'server_error', code: failure.code, param: failure.param } }
}

/** The route's onRequest hook that authenticates the caller before the body is read, when the gateway asks for one. */
export function authenticating (authenticate: ((request: FastifyRequest) => unknown) | undefined) {
  return authenticate === undefined ? {} : { onRequest: async (request: FastifyRequest) => { await authenticate(request) } }
}

/** One server-sent event, with an `event` field when the API names its events (Responses, Messages). */
export function sseEvent (data: unknown, event?: string): string {
  return `${event === undefined ? '' : `event: ${event}\n`}data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`
}

/** Takes the response over from Fastify and starts an event stream, with the headers the gate set (x-budget-*). */
export function startEventStream (reply: FastifyReply, status = 200): ServerResponse {
  reply.hijack()
  reply.raw.writeHead(status, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', ...(reply.getHeaders() as Record<string, string>) })
  return reply.raw
}

/** Writes a mock stream's events, `delayMs` apart; false when the client went away (the stream then stops). */
export async function pace (response: ServerResponse, delayMs: number): Promise<boolean> {
  if (response.destroyed) return false
  await new Promise((resolve) => setTimeout(resolve, delayMs))
  return !response.destroyed
}

export interface Upstream {
  /** The full URL of the upstream's endpoint. */
  url: string
  headers: Record<string, string>
  /** The body as sent upstream: the client's, with the gate's model and output cap. */
  body: object
  stream: boolean
}

/**
 * Forwards one call. A JSON answer (or any answer that is not a stream: the upstream's own error) is sent
 * with reply.send, and the gate reads its usage from the body. A stream is passed on as the upstream
 * sent its bytes, and each piece is shown to the gate after it went to the client: the gate reads the
 * provider's usage from the API's events, and charges a stream cut before its usage its estimate.
 */
export async function forward (request: FastifyRequest, reply: FastifyReply, upstream: Upstream) {
  const abort = new AbortController()
  // 'close' of the response: it finished, or the client went away (then stop reading the upstream).
  reply.raw.once('close', () => { if (!reply.raw.writableFinished) abort.abort() })
  const answer = await fetch(upstream.url, {
    method: 'POST',
    signal: abort.signal,
    headers: { 'content-type': 'application/json', ...upstream.headers },
    body: JSON.stringify(upstream.body)
  })
  const isStream = (answer.headers.get('content-type') ?? '').startsWith('text/event-stream')
  if (!upstream.stream || !answer.ok || answer.body === null || !isStream) {
    return await reply.code(answer.status).type(answer.headers.get('content-type') ?? 'application/json').send(await answer.text())
  }
  const response = startEventStream(reply, answer.status)
  try {
    for await (const bytes of answer.body) {
      if (response.destroyed) break // the client went away
      const more = response.write(bytes)
      request.budgetGate?.streamed(bytes)
      if (!more) await drained(response)
    }
  } catch (error) {
    // After hijack nothing may be thrown: Fastify could no longer answer, and the client would wait forever.
    if (!abort.signal.aborted) request.log.error({ err: error }, 'the upstream stream failed; ending the response')
  } finally {
    // Always end: the upstream finished, failed or was cut. The gate settles when the response closes.
    response.end()
  }
}

/** The base URL with its trailing slash removed, and `path` after it. */
export function endpoint (baseUrl: string, path: string): string {
  return `${baseUrl.replace(/\/+$/, '')}${path}`
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

/**
 * A mock provider's prompt cache: the prompts (or prompt prefixes) it has seen, for `ttlMs`. A call whose
 * prompt starts with one it holds reads that prefix from the cache, as providers bill it: so the same
 * long prompt sent twice is written (Anthropic) or computed (OpenAI) once, and read the second time.
 */
export class PromptCache {
  private readonly entries = new Map<string, { tokens: number, expires: number }>()
  constructor (private readonly maxEntries = 1000) {}

  /** The tokens of the longest cached prefix of `text`, 0 when none. */
  read (text: string, now = Date.now()): number {
    let best = 0
    for (const [prefix, entry] of this.entries) {
      if (entry.expires <= now) this.entries.delete(prefix)
      else if (entry.tokens > best && text.startsWith(prefix)) best = entry.tokens
    }
    return best
  }

  write (prefix: string, tokens: number, ttlMs: number, now = Date.now()): void {
    this.entries.delete(prefix)
    this.entries.set(prefix, { tokens, expires: now + ttlMs })
    // The oldest go first: the mock's memory is bounded, whatever its callers send.
    for (const oldest of this.entries.keys()) {
      if (this.entries.size <= this.maxEntries) break
      this.entries.delete(oldest)
    }
  }
}
