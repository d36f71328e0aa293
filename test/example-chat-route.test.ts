// The example chat completions route (examples/chat-completions.ts) in front of an upstream that speaks
// SSE the way real ones do: comments, \r\n and \r line ends, `data:` without a space, multi-line data,
// event and id fields, bytes split anywhere; and its error answers.
import { createServer, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import Fastify from 'fastify'
import OpenAI from 'openai'
import t from 'tap'
import budgets, { DEFAULT_PRICES, type TokenUsage } from '../lib/index.js'
import { chatCompletions } from '../examples/chat-completions.js'
import { parseGatewayKeys } from '../examples/gateway-keys.js'
import { ADMIN_TOKEN } from './fixtures/app.js'
import { createTestSql } from './fixtures/database.js'
import { startUpstream } from './fixtures/upstream.js'

interface TestContext {
  teardown: (fn: () => unknown) => void
}

const SNAPSHOT = 'gpt-4o-mini-2024-07-18'
const pause = async (ms: number) => await new Promise((resolve) => setTimeout(resolve, ms))
const chunk = (delta: object | null, extra: object = {}) => JSON.stringify({
  id: 'chatcmpl-up', object: 'chat.completion.chunk', created: 0, model: SNAPSHOT,
  choices: delta === null ? [] : [{ index: 0, delta, finish_reason: null }], ...extra
})

/** An upstream that writes `pieces` one write at a time (a few ms apart), then ends, or drops the connection. */
async function sseUpstream (t: TestContext, pieces: string[], { cut = false } = {}) {
  const server = createServer((request, response: ServerResponse) => {
    request.resume()
    request.on('end', () => {
      void (async () => {
        response.writeHead(200, { 'content-type': 'text/event-stream' })
        for (const piece of pieces) {
          if (response.destroyed) return
          response.write(piece)
          await pause(3)
        }
        if (cut) response.destroy()
        else response.end()
      })()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`
}

/** The budgets plugin and the example route on a fresh database, listening; logs and reported usage kept. */
async function gateway (t: TestContext, upstreamUrl: string) {
  const { sql } = await createTestSql(t)
  const logs: Array<{ level: number, msg?: string }> = []
  const app = Fastify({ forceCloseConnections: true, logger: { level: 'info', stream: { write: (line: string) => { logs.push(JSON.parse(line)) } } } })
  const reported: Array<TokenUsage | null> = []
  app.addHook('onRequest', async (request, reply) => {
    reply.raw.once('close', () => { if (request.budgetGate != null) reported.push(request.budgetGate.usage) })
  })
  await app.register(budgets, {
    database: sql,
    adminToken: ADMIN_TOKEN,
    // The snapshot priced as its model, so this test does not depend on how the gate resolves snapshots.
    gate: { routes: ['/v1/chat/completions'], prices: { ...DEFAULT_PRICES, [SNAPSHOT]: DEFAULT_PRICES['gpt-4o-mini']! } },
    notifications: { intervalMs: 0 }
  })
  await app.register(chatCompletions, { upstreamUrl })
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(async () => await app.close())
  const budget = await app.budgetRegistry.createBudget({ name: 'Platform', scopeType: 'team', scopeId: 'platform', amount: '1', currency: 'USD', period: 'monthly', startDate: '2024-01-01' })
  async function settled () {
    for (const deadline = Date.now() + 10_000; ;) {
      const [row] = await sql`select count(*)::int as count from budget_reservations`
      if (row!.count === 0 && reported.length > 0) return
      if (Date.now() > deadline) throw new Error('not settled')
      await pause(20)
    }
  }
  const records = async () => await sql<Array<{ amount: string }>>`select amount::text from budget_usage_records`
  return { app, address, logs, reported, budget, settled, records, sql }
}

const MESSAGES = [{ role: 'user' as const, content: 'Hello there' }]

/** fetch with a deadline: a response that never ends fails the test instead of hanging it. */
async function post (address: string, body: unknown, headers: Record<string, string> = { 'content-type': 'application/json' }) {
  const response = await fetch(`${address}/v1/chat/completions`, {
    method: 'POST', headers: { 'x-relay-team-id': 'platform', ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body), signal: AbortSignal.timeout(8000)
  })
  return { response, text: await response.text() }
}

t.test('a stream with keep-alive comments, \\r\\n, data: without a space and multi-line data ends for the openai client, and is charged from its final usage', async (t) => {
  const usageChunk = chunk(null, { usage: { prompt_tokens: 11, completion_tokens: 3, total_tokens: 14 } })
  const helloChunk = `data:${chunk({ content: 'Hello' })}\n\n`
  const upstream = await sseUpstream(t, [
    ': keep-alive\r\n\r\n',
    `id: 1\r\nevent: message\r\ndata: ${chunk({ role: 'assistant', content: '' })}\r\n\r\n`,
    ': OPENROUTER PROCESSING\n\n',
    helloChunk.slice(0, 20), helloChunk.slice(20), // a line split between reads
    // One JSON value over two data lines (joined with \n, which JSON reads as white space).
    `data: {"id":"chatcmpl-up","object":"chat.completion.chunk",\ndata: "created":0,"model":"${SNAPSHOT}","choices":[{"index":0,"delta":{"content":" world"},"finish_reason":null}]}\n\n`,
    `data: ${chunk({ content: '!' })}\r`, '\n\r\n', // \r\n split between reads
    ': keep-alive\n\n',
    `data: ${usageChunk}\r\n\r\n`,
    ': keep-alive\r\n\r\n',
    'data: [DONE]\r\n\r\n'
  ])
  const { address, reported, settled, records } = await gateway(t, upstream)
  const openai = new OpenAI({ baseURL: `${address}/v1`, apiKey: 'unused', defaultHeaders: { 'x-relay-team-id': 'platform' }, maxRetries: 0 })
  const stream = await openai.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES, max_tokens: 20, stream: true }, { signal: AbortSignal.timeout(8000) })
  let text = ''
  let usage: OpenAI.CompletionUsage | undefined
  for await (const part of stream) {
    text += part.choices[0]?.delta.content ?? ''
    usage = part.usage ?? usage
  }
  t.equal(text, 'Hello world!', 'every delta arrived and the stream ended')
  t.same(usage, { prompt_tokens: 11, completion_tokens: 3, total_tokens: 14 })
  await settled()
  t.same(reported, [{ model: SNAPSHOT, inputTokens: 11, outputTokens: 3 }], "the final chunk's tokens, with the model as the upstream named it")
  // 11 x 0.15 + 3 x 0.6 per 1M tokens
  t.same((await records()).map((record) => record.amount), ['0.0000034500'])
})

t.test('an event whose data is not JSON passes through to the client and is not counted; the call is charged from its final usage', async (t) => {
  const upstream = await sseUpstream(t, [
    `data: ${chunk({ role: 'assistant', content: '' })}\n\n`,
    `data: ${chunk({ content: 'Hi' })}\n\n`,
    'data: {"choices": [{"delta": {"content": oops, not json\n\n',
    `data: ${chunk({ content: '!' })}\n\n`,
    `data: ${chunk(null, { usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 } })}\n\n`,
    'data: [DONE]\n\n'
  ])
  const { address, logs, reported, settled } = await gateway(t, upstream)
  const { response, text } = await post(address, { model: 'gpt-4o-mini', messages: MESSAGES, max_tokens: 20, stream: true })
  t.equal(response.status, 200)
  t.ok(text.includes('data: {"choices": [{"delta": {"content": oops, not json\n\n'), 'the bytes as the upstream sent them')
  t.ok(text.endsWith('data: [DONE]\n\n'), 'and the rest of the stream after them')
  await settled()
  t.same(reported, [{ model: SNAPSHOT, inputTokens: 5, outputTokens: 2 }])
  t.same(logs.filter((line) => line.level >= 50), [], 'nothing at error')
})

t.test('an upstream that drops mid-stream: the client still gets an end, and the call is charged its estimate', async (t) => {
  const upstream = await sseUpstream(t, [
    `data: ${chunk({ role: 'assistant', content: '' })}\n\n`,
    `data: ${chunk({ content: 'one' })}\n\n`,
    `data: ${chunk({ content: ' two' })}\n\n`,
    'data: {"id":"chatcmpl-up","obj' // half an event, then the connection drops
  ], { cut: true })
  const { address, reported, settled, sql } = await gateway(t, upstream)
  const { response, text } = await post(address, { model: 'gpt-4o-mini', messages: MESSAGES, max_tokens: 20, stream: true })
  t.equal(response.status, 200)
  t.ok(text.includes(' two'), 'what came before the drop')
  await settled()
  // No usage chunk: what the provider billed is unknown (the chunks passed on do not say how many tokens they held).
  t.same(reported, [null], 'no usage reported')
  const charged = await sql<Array<{ atEstimate: boolean, metadata: Record<string, unknown> }>>`
    select amount = (metadata->>'estimatedCost')::numeric as "atEstimate", metadata from budget_usage_records`
  t.equal(charged.length, 1, 'charged once, not released as free')
  t.match(charged[0]?.metadata, { costBasis: 'estimate', estimateReason: 'no-usage' })
  t.ok(charged[0]?.atEstimate, 'at its estimate')
})

t.test('a complete stream without a usage chunk is charged its estimate, not a token a chunk; the upstream was asked for usage', async (t) => {
  const upstream = await startUpstream(t, { mode: 'sse-no-usage' })
  const { address, reported, settled, sql } = await gateway(t, upstream.url)
  // The answer waits until the call's hold has been read: that amount is the estimate.
  const release = upstream.hold()
  const sending = post(address, {
    model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Tell me about budgets, gateways and tokens' }], max_tokens: 600, stream: true,
    stream_options: { include_obfuscation: false }
  })
  await upstream.waitForCalls(1)
  const [held] = await sql<Array<{ amount: string }>>`select amount::text from budget_reservations`
  release()
  const { response, text } = await sending
  t.equal(response.status, 200)
  t.ok(text.endsWith('data: [DONE]\n\n'), 'the stream ended normally')
  t.ok(upstream.calls[0]!.chunksSent > 0 && upstream.calls[0]!.usage === null, `${upstream.calls[0]!.chunksSent} content chunks, no usage`)
  t.same(upstream.calls[0]!.body.stream_options, { include_obfuscation: false, include_usage: true }, "usage asked for, the client's other stream options kept")
  await settled()
  t.same(reported, [null], 'no usage reported to the gate')
  const charged = await sql<Array<{ exact: boolean, amount: string, metadata: Record<string, unknown> }>>`
    select amount = ${held!.amount}::numeric as exact, amount::text, metadata from budget_usage_records`
  t.equal(charged.length, 1, 'charged once')
  t.match(charged[0]?.metadata, { costBasis: 'estimate', estimateReason: 'no-usage' }, 'labelled as the estimate')
  t.ok(charged[0]?.exact, `charged ${charged[0]?.amount}, the estimate held ${held!.amount}`)
})

t.test("a client's error is invalid_request_error with a stable code, logged at info; a server error stays server_error at error", async (t) => {
  const { address, logs, reported } = await gateway(t, 'http://127.0.0.1:9/v1') // nothing listens on port 9
  const malformed = await post(address, '{"model":')
  t.equal(malformed.response.status, 400)
  t.same(JSON.parse(malformed.text), { error: { message: JSON.parse(malformed.text).error.message, type: 'invalid_request_error', code: 'invalid_json', param: null } })
  const empty = await post(address, '')
  t.equal(empty.response.status, 400)
  t.match(JSON.parse(empty.text), { error: { type: 'invalid_request_error', code: 'invalid_json' } })
  const text = await post(address, '<chat/>', { 'content-type': 'application/xml' })
  t.equal(text.response.status, 415)
  t.match(JSON.parse(text.text), { error: { type: 'invalid_request_error', code: 'unsupported_media_type' } })
  t.same(logs.filter((line) => line.level >= 40), [], 'nothing at warn or error for the client\'s mistakes')
  t.equal(logs.filter((line) => line.level === 30 && line.msg === 'chat completion request refused').length, 3, 'each at info')
  t.same(reported, [], 'no budget work for a body that could not be read')

  const unreachable = await post(address, { model: 'gpt-4o-mini', messages: MESSAGES, max_tokens: 5 })
  t.equal(unreachable.response.status, 500)
  t.match(JSON.parse(unreachable.text), { error: { type: 'server_error', message: 'Internal error' } })
  t.ok(logs.some((line) => line.level === 50 && line.msg === 'chat completion failed'), 'the gateway\'s own failure at error')
})

t.test('GATEWAY_KEYS: what parses, and what is refused with a message that names the problem', async (t) => {
  const keys = parseGatewayKeys('{"sk-alice": {"user": "alice", "team": "platform", "organization": "acme"}, "sk-bob": {"team": "data"}}')
  t.equal(keys.size, 2)
  t.notOk([...keys.keys()].some((key) => key.includes('sk-')), 'held as digests, not as the keys')
  const capped = parseGatewayKeys('{"sk-carol": {"team": "platform", "maxCallCost": "0.50"}}')
  t.same([...capped.values()], [{ scopes: { team: 'platform' }, maxCallCost: '0.5' }], 'a key may carry the operator\'s cap on one call')
  t.same([...keys.values()].map((key) => key.maxCallCost), [null, null], 'none when it does not')
  for (const [value, message] of [
    ['not json', /not JSON/],
    [' ', /set but empty/],
    ['[]', /JSON object of API keys/],
    ['"sk-alice"', /JSON object of API keys/],
    ['{}', /names no API key/],
    ['{"sk-alice": "platform"}', /must map to an object of scopes/],
    ['{"sk-alice": {}}', /names no scope/],
    ['{"sk-alice": {"tean": "platform"}}', /unknown scope 'tean'/],
    ['{"sk-alice": {"team": 5}}', /scope 'team' must be a string/],
    ['{"sk-alice": {"team": "has space"}}', /scope 'team' must be a string/],
    ['{"sk alice": {"team": "platform"}}', /key #1 must be printable/],
    ['{"sk-alice": {"team": "platform", "maxCallCost": "0"}}', /maxCallCost must be a decimal above zero/],
    ['{"sk-alice": {"team": "platform", "maxCallCost": "1e3"}}', /maxCallCost must be a decimal above zero/],
    ['{"sk-alice": {"maxCallCost": "0.5"}}', /names no scope/]
  ] as const) {
    t.throws(() => parseGatewayKeys(value), { message }, value)
  }
  t.throws(() => parseGatewayKeys('{"sk-secret-key": {"team": 5}}'), { message: /^(?!.*sk-secret-key)/ }, 'a message never shows the key')
})
