// The gate runs every gated route through its model API: which API a route speaks (named or inferred
// from its path, never guessed), the usage read from a stream the route returns or feeds to streamed(),
// and the operator's estimateCost over the API's own.
import { Readable } from 'node:stream'
import Fastify from 'fastify'
import t from 'tap'
import budgets from '../lib/index.js'
import { apiForUrl } from '../lib/model-apis/index.js'
import { streamFeeder } from '../lib/http/gate/stream-usage.js'
import { compareMoney, fromUnits } from '../lib/kernel/money.js'
import { ADMIN_TOKEN } from './fixtures/app.js'
import { createTestDatabase, createTestSql } from './fixtures/database.js'
import { buildGateway } from './fixtures/gateway.js'

/** gpt-4o-mini at 0.15 and 0.6 per 1M tokens, rounded up to 10 decimals, as the gate prices it. */
function miniCost (input: number, output: number): string {
  return fromUnits((BigInt(input) * 1_500_000_000n + BigInt(output) * 6_000_000_000n + 999_999n) / 1_000_000n)
}

const BODY = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: 50, stream: true }
const HEADERS = { 'x-relay-team-id': 'platform' }

function chunk (fields: Record<string, unknown>): string {
  return `data: ${JSON.stringify({ id: 'chatcmpl-1', object: 'chat.completion.chunk', created: 1, model: 'gpt-4o-mini', ...fields })}\n\n`
}

/** A chat stream with non-ASCII content, a comment, a named event the reader ignores, and (optionally) the usage chunk. */
function chatStream (usage: Record<string, unknown> | null): string {
  return [
    ': keep-alive\n\n',
    chunk({ choices: [{ index: 0, delta: { role: 'assistant', content: 'héllo 👋 wörld' } }] }),
    'data: not json at all\n\n',
    chunk({ choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] }),
    ...(usage === null ? [] : [chunk({ choices: [], usage })]),
    'data: [DONE]\n\n'
  ].join('')
}

t.test('the API is inferred from the path\'s end, behind any prefix, and never from a sub-path', async (t) => {
  const cases: Array<[string, string | null]> = [
    ['/v1/chat/completions', 'chat'],
    ['/openai/v1/chat/completions', 'chat'],
    ['/chat/completions', 'chat'],
    ['/v1/responses', 'responses'],
    ['/openai/v1/responses', 'responses'],
    ['/v1/messages', 'messages'],
    ['/anthropic/v1/messages', 'messages'],
    ['/v1/embeddings', 'embeddings'],
    ['/v1/responses/:id', null],
    ['/v1/responses/:id/cancel', null],
    ['/v1/messages/count_tokens', null],
    ['/v1/chat/completions/:id', null],
    ['/v1/completions', null],
    ['/v1/my-responses', null],
    ['/v1/dated', null]
  ]
  for (const [url, api] of cases) t.equal(apiForUrl(url), api, url)
})

t.test('a gated route whose API cannot be told fails registration, naming the route; an unknown API in the options is an option error', async (t) => {
  const { sql } = await createTestSql(t)

  // Declared after the plugin at the top level: the declaration itself throws.
  const top = Fastify()
  t.teardown(async () => await top.close())
  await top.register(budgets, { database: sql, adminToken: ADMIN_TOKEN, gate: { routes: ['/v1/dated'], sweepIntervalMs: 0 }, notifications: { intervalMs: 0 } })
  t.throws(() => top.post('/v1/dated', async () => ({})), { code: 'BUDGET_ERR_OPTIONS', message: /POST \/v1\/dated.*cannot be told from its path/ })

  // Declared in a plugin, marked with config: ready() rejects.
  const marked = Fastify()
  t.teardown(async () => await marked.close())
  marked.register(budgets, { database: sql, adminToken: ADMIN_TOKEN, gate: { sweepIntervalMs: 0 }, notifications: { intervalMs: 0 } })
  marked.register(async (app) => { app.post('/v1/custom', { config: { budgetGate: true } }, async () => ({})) })
  await t.rejects(async () => await marked.ready(), { code: 'BUDGET_ERR_OPTIONS', message: /POST \/v1\/custom/ })

  // An API name in config the gate does not know.
  const unknown = Fastify()
  t.teardown(async () => await unknown.close())
  unknown.register(budgets, { database: sql, adminToken: ADMIN_TOKEN, gate: { sweepIntervalMs: 0 }, notifications: { intervalMs: 0 } })
  unknown.register(async (app) => { app.post('/v1/custom', { config: { budgetGate: 'completions' as 'chat' } }, async () => ({})) })
  await t.rejects(async () => await unknown.ready(), { code: 'BUDGET_ERR_OPTIONS', message: /POST \/v1\/custom speaks "completions"/ })

  // An API name in the options the gate does not know, or a route that is neither URL nor { url, api }.
  const url = await createTestDatabase(t)
  for (const routes of [[{ url: '/v1/x', api: 'completions' }], [{ url: '/v1/x' }], [42], 'x']) {
    const app = Fastify()
    app.register(budgets, { database: url, adminToken: ADMIN_TOKEN, gate: { routes: routes as never } })
    await t.rejects(async () => await app.ready(), { code: 'BUDGET_ERR_OPTIONS', message: /gate\.routes/ }, JSON.stringify(routes))
    await app.close()
  }
})

t.test('a route named with { url, api } or config: { budgetGate: api } is gated although its path names no API', async (t) => {
  const { app, createBudget, settled, sql } = await buildGateway(t, {
    gate: { routes: ['/v1/chat/completions', { url: '/v1/listed', api: 'chat' }], sweepIntervalMs: 0 },
    routes: (app) => {
      app.post('/v1/listed', async () => ({ model: 'gpt-4o-mini', choices: [], usage: { prompt_tokens: 10, completion_tokens: 5 } }))
      app.post('/v1/marked', { config: { budgetGate: 'chat' } }, async () => ({ model: 'gpt-4o-mini', choices: [], usage: { prompt_tokens: 10, completion_tokens: 5 } }))
      app.post('/proxy/v1/chat/completions', { config: { budgetGate: true } }, async () => ({ model: 'gpt-4o-mini', choices: [], usage: { prompt_tokens: 10, completion_tokens: 5 } }))
    }
  })
  await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1' })
  for (const url of ['/v1/listed', '/v1/marked', '/proxy/v1/chat/completions']) {
    const response = await app.inject({ method: 'POST', url, headers: HEADERS, body: { ...BODY, stream: false } })
    t.equal(response.statusCode, 200, url)
    t.ok(response.headers['x-budget-id'], `${url} went through the gate`)
    const refused = await app.inject({ method: 'POST', url, headers: HEADERS, body: { ...BODY, stream: false, max_tokens: 'many' } })
    t.equal(refused.statusCode, 400, `${url} is bounded by chat completions' rules`)
    t.match(refused.json(), { error: { type: 'invalid_request_error', param: 'max_tokens' } })
  }
  await settled()
  const records = await sql`select amount::text as amount, metadata from budget_usage_records`
  t.equal(records.length, 3)
  for (const record of records) t.match(record.metadata, { costBasis: 'usage', inputTokens: 10, outputTokens: 5 })
})

t.test('a route that returns an event stream is charged the usage its chunks report, and the client gets the stream unchanged', async (t) => {
  const usage = { prompt_tokens: 12, completion_tokens: 7 }
  const stream = chatStream(usage)
  const { app, createBudget, settled, sql } = await buildGateway(t, {
    gate: { sweepIntervalMs: 0 },
    routes: (app) => {
      app.post('/proxy/v1/chat/completions', { config: { budgetGate: true } }, async (_request, reply) => {
        void reply.header('content-type', 'text/event-stream')
        // Chunks of 5 bytes: events, lines and characters all cut across chunks.
        const bytes = Buffer.from(stream)
        return Readable.from((function * () { for (let at = 0; at < bytes.length; at += 5) yield bytes.subarray(at, at + 5) })())
      })
    }
  })
  await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1' })
  const response = await app.inject({ method: 'POST', url: '/proxy/v1/chat/completions', headers: HEADERS, body: BODY })
  t.equal(response.statusCode, 200)
  t.equal(response.body, stream, 'byte for byte')
  await settled()
  const records = await sql`select amount::text as amount, metadata from budget_usage_records`
  t.equal(records.length, 1)
  t.equal(compareMoney(records[0]!.amount as string, miniCost(12, 7)), 0, 'charged the usage, not the estimate')
  t.match(records[0]!.metadata, { costBasis: 'usage', inputTokens: 12, outputTokens: 7, modelId: 'gpt-4o-mini' })
})

t.test('streamed() reads the usage of a stream fed at awkward byte boundaries (mid-character, between \\r and \\n)', async (t) => {
  const usage = { prompt_tokens: 30, completion_tokens: 9, prompt_tokens_details: { cached_tokens: 4 } }
  // CRLF line ends, as some upstreams send them.
  const bytes = Buffer.from(chatStream(usage).replace(/\n/g, '\r\n'))
  const cuts: number[] = []
  for (let at = 1; at < bytes.length; at++) {
    const midCharacter = (bytes[at]! & 0xc0) === 0x80
    const midLineEnd = bytes[at - 1] === 0x0d && bytes[at] === 0x0a
    if (midCharacter || midLineEnd) cuts.push(at)
  }
  t.ok(cuts.length > 10, 'the stream is cut inside characters and line ends')
  const { app, createBudget, settled, sql } = await buildGateway(t, {
    gate: { sweepIntervalMs: 0 },
    routes: (app) => {
      app.post('/v1/written', { config: { budgetGate: 'chat' } }, async (request, reply) => {
        reply.hijack()
        reply.raw.writeHead(200, { 'content-type': 'text/event-stream' })
        let from = 0
        for (const at of [...cuts, bytes.length]) {
          const piece = bytes.subarray(from, at)
          reply.raw.write(piece)
          request.budgetGate!.streamed(piece)
          from = at
        }
        reply.raw.end()
      })
    }
  })
  await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1' })
  const response = await app.inject({ method: 'POST', url: '/v1/written', headers: HEADERS, body: BODY })
  t.equal(response.statusCode, 200)
  await settled()
  const records = await sql`select amount::text as amount, metadata from budget_usage_records`
  t.equal(records.length, 1)
  t.match(records[0]!.metadata, { costBasis: 'usage', inputTokens: 30, outputTokens: 9, cachedInputTokens: 4 })
})

t.test('the stream parser decodes characters and line ends cut across chunks, strings and bytes alike', async (t) => {
  const text = 'event: delta\r\ndata: {"text":"héllo 👋"}\r\n\r\ndata: two\rdata: lines\r\r: comment\n\ndata: last\n\n'
  const bytes = Buffer.from(text)
  const expected = [['delta', '{"text":"héllo 👋"}'], [undefined, 'two\nlines'], [undefined, 'last']]
  for (const size of [1, 2, 3, 5, 7]) {
    const seen: Array<[string | undefined, string]> = []
    const feed = streamFeeder({ event: (name, data) => { seen.push([name, data]) }, usage: () => null }, () => { t.fail('no usage') })
    for (let at = 0; at < bytes.length; at += size) feed(new Uint8Array(bytes.subarray(at, at + size)))
    t.same(seen, expected, `bytes in chunks of ${size}`)
  }
  const seen: Array<[string | undefined, string]> = []
  const feed = streamFeeder({ event: (name, data) => { seen.push([name, data]) }, usage: () => null }, () => {})
  for (let at = 0; at < text.length; at += 4) feed(text.slice(at, at + 4))
  t.same(seen, expected, 'strings')
})

t.test('a stream without a usage chunk is charged its estimate', async (t) => {
  const stream = chatStream(null)
  const { app, createBudget, settled, sql } = await buildGateway(t, {
    gate: { sweepIntervalMs: 0 },
    routes: (app) => {
      app.post('/proxy/v1/chat/completions', { config: { budgetGate: true } }, async (_request, reply) => {
        void reply.header('content-type', 'text/event-stream')
        return Readable.from([Buffer.from(stream)])
      })
    }
  })
  await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1' })
  const response = await app.inject({ method: 'POST', url: '/proxy/v1/chat/completions', headers: HEADERS, body: BODY })
  t.equal(response.statusCode, 200)
  t.equal(response.body, stream)
  await settled()
  const records = await sql`select amount::text as amount, metadata from budget_usage_records`
  t.equal(records.length, 1)
  t.match(records[0]!.metadata, { costBasis: 'estimate', estimateReason: 'no-usage' })
  t.equal(compareMoney(records[0]!.amount as string, records[0]!.metadata.estimatedCost as string), 0, 'the amount is the estimate')
  t.ok(compareMoney(records[0]!.amount as string, miniCost(1, 50)) >= 0, 'which bounds the 50 output tokens asked for')
})

t.test('the operator\'s estimateCost replaces the API\'s estimate on every gated route', async (t) => {
  const estimates: string[] = []
  const { app, createBudget, settled, sql } = await buildGateway(t, {
    gate: {
      sweepIntervalMs: 0,
      estimateCost: (request, _prices, model) => {
        estimates.push(request.url)
        return { model: model ?? 'gpt-4o-mini', amount: '0.25' }
      }
    },
    routes: (app) => {
      app.post('/v1/marked', { config: { budgetGate: 'chat' } }, async () => ({ model: 'gpt-4o-mini', choices: [] }))
    }
  })
  const budget = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1' })
  // A body chat completions' own estimate refuses (400): the operator's estimate is asked instead.
  const response = await app.inject({ method: 'POST', url: '/v1/marked', headers: HEADERS, body: { model: 'gpt-4o-mini', input: 'not a chat body' } })
  t.equal(response.statusCode, 200)
  t.equal(response.headers['x-budget-id'], budget.id)
  t.equal(response.headers['x-budget-remaining'], '0.75', 'the operator\'s estimate is held')
  t.same(estimates, ['/v1/marked'])
  await settled()
  const records = await sql`select amount::text as amount, metadata from budget_usage_records`
  t.equal(records.length, 1)
  t.equal(compareMoney(records[0]!.amount as string, '0.25'), 0, 'no usage: charged the operator\'s estimate')
  t.match(records[0]!.metadata, { costBasis: 'estimate', estimatedCost: '0.25' })
})
