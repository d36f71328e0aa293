// Hostile streams against the gate's stream reading: streamed(), the readThrough tap on a returned
// Readable, the APIs' stream usage readers (issue 20's adversarial review). How long one long line
// holds the event loop is measured by bench/stream-feed.ts, not here.
import { Readable } from 'node:stream'
import t from 'tap'
import { streamFeeder } from '../lib/http/gate/stream-usage.js'
import { chatApi } from '../lib/model-apis/chat.js'
import { responsesApi } from '../lib/model-apis/responses.js'
import { compareMoney, fromUnits } from '../lib/kernel/money.js'
import { buildGateway } from './fixtures/gateway.js'
import { findViolations } from './fixtures/invariants.js'

const HEADERS = { 'x-relay-team-id': 'platform' }
const CHAT_BODY = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: 50, stream: true }

/** gpt-4o-mini at 0.15 and 0.6 per 1M tokens, rounded up to 10 decimals, as the gate prices it. */
function miniCost (input: number, output: number): string {
  return fromUnits((BigInt(input) * 1_500_000_000n + BigInt(output) * 6_000_000_000n + 999_999n) / 1_000_000n)
}

function chatChunk (fields: Record<string, unknown>): string {
  return JSON.stringify({ id: 'chatcmpl-1', object: 'chat.completion.chunk', created: 1, model: 'gpt-4o-mini', choices: [], ...fields })
}

/** A gateway with one extra gated route that answers with `stream()` as its returned Readable. */
async function gatewayReturning (t: Parameters<typeof buildGateway>[0], url: string, api: 'chat' | 'responses' | 'messages', stream: () => Readable) {
  const gateway = await buildGateway(t, {
    gate: { sweepIntervalMs: 0 },
    routes: (app) => {
      app.post(url, { config: { budgetGate: api } }, async (_request, reply) => {
        void reply.header('content-type', 'text/event-stream')
        return stream()
      })
    }
  })
  await gateway.createBudget({ scopeType: 'team', scopeId: 'platform', amount: '10' })
  return gateway
}

t.test('one long SSE line (a Responses response.completed of 8 MiB) fed in 16 KiB chunks is read whole: its usage is found', async (t) => {
  // The Responses API sends response.completed as ONE data line holding the whole response object: with
  // a generated image (base64) or a long output it is megabytes, and it reaches the gateway in TCP-sized
  // pieces. eventsource-parser's feed() concatenates the held incomplete line with each new chunk and
  // searches the whole of it for \r and \n again (splitLines from index 0): quadratic in the line.
  const filler = 'A'.repeat(8 * 1024 * 1024)
  const completed = JSON.stringify({
    type: 'response.completed',
    response: { id: 'resp_1', object: 'response', model: 'gpt-4o-mini', status: 'completed', output: [{ type: 'image_generation_call', result: filler }], usage: { input_tokens: 9, output_tokens: 40, total_tokens: 49 } }
  })
  const bytes = Buffer.from(`event: response.completed\ndata: ${completed}\n\n`)
  let usage: unknown = null
  const feed = streamFeeder(responsesApi.streamUsage('gpt-4o-mini'), (read) => { usage = read })
  let slowestMs = 0
  const started = performance.now()
  for (let at = 0; at < bytes.length; at += 16384) {
    const before = performance.now()
    feed(bytes.subarray(at, at + 16384))
    slowestMs = Math.max(slowestMs, performance.now() - before)
  }
  const tookMs = performance.now() - started
  t.match(usage, { inputTokens: 9, outputTokens: 40 }, 'the usage is read in the end')
  t.comment(`8 MiB line in 16 KiB chunks: ${Math.round(tookMs)} ms of the event loop in all, slowest chunk ${Math.round(slowestMs)} ms`)
})

t.test('the same 8 MiB of a stream cut into short lines is read', async (t) => {
  const reader = chatApi.streamUsage('gpt-4o-mini')
  let usage: unknown = null
  const feed = streamFeeder(reader, (read) => { usage = read })
  const line = `data: ${chatChunk({ choices: [{ index: 0, delta: { content: 'A'.repeat(900) } }] })}\n\n`
  const bytes = Buffer.from(line.repeat(Math.ceil(8 * 1024 * 1024 / line.length)) + `data: ${chatChunk({ usage: { prompt_tokens: 3, completion_tokens: 4 } })}\n\n`)
  const started = performance.now()
  for (let at = 0; at < bytes.length; at += 16384) feed(bytes.subarray(at, at + 16384))
  const tookMs = performance.now() - started
  t.comment(`8 MiB in short lines: ${Math.round(tookMs)} ms`)
  t.match(usage, { inputTokens: 3, outputTokens: 4 })
})

t.test('a stream whose lines end with CR alone, its last event closed by a final CR, is charged its usage: the gate finishes its parser when the stream ends', async (t) => {
  // CR alone is a line end (WHATWG event stream: end-of-line = CRLF / CR / LF), so "data: {usage}\r\r" is
  // a complete event. The parser holds a trailing CR in case an LF follows; at the end of the stream
  // nothing flushes it (no parser.reset({ consume: true }), no decoder flush), and the usage event the
  // client received is never dispatched to the reader.
  const stream = [
    `data: ${chatChunk({ choices: [{ index: 0, delta: { role: 'assistant', content: 'hello' } }] })}\r\r`,
    `data: ${chatChunk({ usage: { prompt_tokens: 12, completion_tokens: 7 } })}\r\r`
  ].join('')
  const { app, settled, sql } = await gatewayReturning(t, '/review/cr/v1/chat/completions', 'chat', () => Readable.from([Buffer.from(stream)]))
  const response = await app.inject({ method: 'POST', url: '/review/cr/v1/chat/completions', headers: HEADERS, body: CHAT_BODY })
  t.equal(response.statusCode, 200)
  t.equal(response.body, stream, 'the client got the usage event')
  await settled()
  const [record] = await sql`select amount::text as amount, metadata from budget_usage_records`
  t.match(record!.metadata, { costBasis: 'usage', inputTokens: 12, outputTokens: 7 }, `charged the usage the client received (got ${JSON.stringify({ basis: record!.metadata.costBasis, amount: record!.amount })})`)
  t.equal(compareMoney(record!.amount as string, miniCost(12, 7)), 0)
})

t.test('usage sent twice (the last repeated, then a lower count) is charged once, as the last count; 1e3 and 1.0 are read as integers; a BOM, id and retry fields do not hide an event', async (t) => {
  const stream = '\uFEFF' + [
    'retry: 1000\n',
    `id: 1\ndata: ${chatChunk({ choices: [{ index: 0, delta: { content: 'hi' } }] })}\n\n`,
    `data: ${chatChunk({ usage: { prompt_tokens: 50, completion_tokens: 50 } })}\n\n`,
    `id: 2\ndata: ${chatChunk({ usage: { prompt_tokens: 50, completion_tokens: 50 } })}\n\n`,
    `data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":1e1,"completion_tokens":3.0}}\n\n`,
    'data: [DONE]\n\n'
  ].join('')
  const { app, settled, sql } = await gatewayReturning(t, '/review/twice/v1/chat/completions', 'chat', () => Readable.from([Buffer.from(stream)]))
  const response = await app.inject({ method: 'POST', url: '/review/twice/v1/chat/completions', headers: HEADERS, body: CHAT_BODY })
  t.equal(response.statusCode, 200)
  await settled()
  const records = await sql`select amount::text as amount, metadata from budget_usage_records`
  t.equal(records.length, 1, 'one record')
  t.match(records[0]!.metadata, { costBasis: 'usage', inputTokens: 10, outputTokens: 3 })
  t.equal(compareMoney(records[0]!.amount as string, miniCost(10, 3)), 0)
  t.same(await findViolations(sql), [])
})

t.test('a returned Readable that errors mid-stream, after its usage, is charged that usage; one that errors before any usage is charged its estimate; no hold is left', async (t) => {
  const usageLine = `data: ${chatChunk({ usage: { prompt_tokens: 5, completion_tokens: 6 } })}\n\n`
  let afterUsage = true
  const { app, settled, sql } = await gatewayReturning(t, '/review/err/v1/chat/completions', 'chat', () => {
    const withUsage = afterUsage
    return new Readable({
      read () {
        if (this.readableLength === 0 && !(this as { sent?: boolean }).sent) {
          (this as { sent?: boolean }).sent = true
          this.push(Buffer.from(withUsage ? usageLine : `data: ${chatChunk({ choices: [{ index: 0, delta: { content: 'x' } }] })}\n\n`))
          setTimeout(() => this.destroy(new Error('upstream reset')), 20)
        }
      }
    })
  })
  const first = await app.inject({ method: 'POST', url: '/review/err/v1/chat/completions', headers: HEADERS, body: CHAT_BODY }).catch((error: Error) => error)
  afterUsage = false
  const second = await app.inject({ method: 'POST', url: '/review/err/v1/chat/completions', headers: HEADERS, body: CHAT_BODY }).catch((error: Error) => error)
  t.comment(`first: ${'statusCode' in first ? first.statusCode : first.message}; second: ${'statusCode' in second ? second.statusCode : second.message}`)
  await settled()
  const records = await sql`select amount::text as amount, metadata from budget_usage_records order by metadata->>'costBasis' desc`
  t.equal(records.length, 2)
  t.match(records[0]!.metadata, { costBasis: 'usage', inputTokens: 5, outputTokens: 6 })
  t.match(records[1]!.metadata, { costBasis: 'estimate', estimateReason: 'no-usage' })
  t.same(await findViolations(sql), [])
})

t.test('a client that hangs up mid-stream over real HTTP (returned Readable and streamed()) leaves no hold and is charged its estimate', async (t) => {
  const { app, settled, sql } = await buildGateway(t, {
    gate: { sweepIntervalMs: 0 },
    routes: (app) => {
      app.post('/review/slow/v1/chat/completions', { config: { budgetGate: 'chat' } }, async (_request, reply) => {
        void reply.header('content-type', 'text/event-stream')
        return Readable.from((async function * () {
          for (let i = 0; i < 200; i++) {
            yield Buffer.from(`data: ${chatChunk({ choices: [{ index: 0, delta: { content: 'x' } }] })}\n\n`)
            await new Promise((resolve) => setTimeout(resolve, 10))
          }
          yield Buffer.from(`data: ${chatChunk({ usage: { prompt_tokens: 5, completion_tokens: 6 } })}\n\n`)
        })())
      })
      app.post('/review/hijack/v1/chat/completions', { config: { budgetGate: 'chat' } }, async (request, reply) => {
        reply.hijack()
        reply.raw.writeHead(200, { 'content-type': 'text/event-stream' })
        for (let i = 0; i < 200 && !reply.raw.destroyed; i++) {
          const piece = Buffer.from(`data: ${chatChunk({ choices: [{ index: 0, delta: { content: 'x' } }] })}\n\n`)
          reply.raw.write(piece)
          request.budgetGate!.streamed(piece)
          await new Promise((resolve) => setTimeout(resolve, 10))
        }
        reply.raw.end()
      })
    }
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address() as { port: number }
  const { createBudget } = { createBudget: async () => await app.inject({ method: 'POST', url: '/api/v1/budgets', headers: { authorization: 'Bearer test-admin-token-0123456789' }, body: { name: 'b', scopeType: 'team', scopeId: 'platform', amount: '10', currency: 'USD', period: 'monthly', startDate: '2024-01-01' } }) }
  await createBudget()
  for (const path of ['/review/slow/v1/chat/completions', '/review/hijack/v1/chat/completions']) {
    const abort = new AbortController()
    const answer = await fetch(`http://127.0.0.1:${address.port}${path}`, { method: 'POST', headers: { ...HEADERS, 'content-type': 'application/json', connection: 'close' }, body: JSON.stringify(CHAT_BODY), signal: abort.signal })
    const reader = answer.body!.getReader()
    await reader.read()
    abort.abort()
  }
  await settled()
  const records = await sql`select metadata from budget_usage_records`
  t.equal(records.length, 2)
  for (const record of records) t.match(record.metadata, { costBasis: 'estimate', estimateReason: 'no-usage' })
  t.same(await findViolations(sql), [])
})

t.test('a route listed in gate.routes and declared as "/" under a plugin prefix is gated at the prefix with a trailing slash too (Fastify copies the route, hooks and all)', async (t) => {
  // Fastify's prefixTrailingSlash ('both', its default) declares a plugin's '/' route twice: at
  // '/prefix' and at '/prefix/'. gatedApi matches gate.routes by the exact URL, so the second one is
  // neither listed nor marked, and the gate never sees it.
  let served = 0
  const { app, sql, createBudget } = await buildGateway(t, {
    gate: { sweepIntervalMs: 0, routes: ['/proxied/v1/chat/completions'] },
    routes: (app) => {
      void app.register(async (scoped) => {
        scoped.post('/', async () => {
          served++
          return { id: 'c', object: 'chat.completion', model: 'gpt-4o-mini', choices: [], usage: { prompt_tokens: 100000, completion_tokens: 100000 } }
        })
      }, { prefix: '/proxied/v1/chat/completions' })
    }
  })
  // A budget with no room at all: a gated call is refused with 402.
  await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '0.0000000001' })
  const exact = await app.inject({ method: 'POST', url: '/proxied/v1/chat/completions', headers: HEADERS, body: { ...CHAT_BODY, stream: false } })
  t.equal(exact.statusCode, 402, 'the listed URL is gated')
  const slashed = await app.inject({ method: 'POST', url: '/proxied/v1/chat/completions/', headers: HEADERS, body: { ...CHAT_BODY, stream: false } })
  const records = await sql`select count(*)::int as count from budget_usage_records`
  t.comment(`the trailing-slash URL answered ${slashed.statusCode}; the route's handler ran ${served} time(s); usage records: ${records[0]!.count as number}`)
  t.equal(slashed.statusCode, 402, 'the same route with a trailing slash is gated too')
  t.equal(served, 0, 'no call reached the handler past an empty budget')
})

t.test('three gated streaming requests pipelined on one socket, the client gone after the first bytes: both holds end, none is left live', async (t) => {
  const { connect } = await import('node:net')
  let started = 0
  const { app, settled, sql } = await buildGateway(t, {
    gate: { sweepIntervalMs: 0 },
    routes: (app) => {
      app.post('/review/pipe/v1/chat/completions', { config: { budgetGate: 'chat' } }, async (_request, reply) => {
        started++
        void reply.header('content-type', 'text/event-stream')
        return Readable.from((async function * () {
          for (let i = 0; i < 100; i++) {
            yield Buffer.from(`data: ${chatChunk({ choices: [{ index: 0, delta: { content: 'x' } }] })}\n\n`)
            await new Promise((resolve) => setTimeout(resolve, 10))
          }
          yield Buffer.from(`data: ${chatChunk({ usage: { prompt_tokens: 5, completion_tokens: 6 } })}\n\n`)
        })())
      })
    }
  })
  await app.inject({ method: 'POST', url: '/api/v1/budgets', headers: { authorization: 'Bearer test-admin-token-0123456789' }, body: { name: 'b', scopeType: 'team', scopeId: 'platform', amount: '10', currency: 'USD', period: 'monthly', startDate: '2024-01-01' } })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  const body = JSON.stringify(CHAT_BODY)
  const one = `POST /review/pipe/v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-relay-team-id: platform\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
  const socket = connect(port, '127.0.0.1')
  await new Promise((resolve) => socket.once('connect', resolve))
  socket.write(one + one + one)
  await new Promise((resolve) => socket.once('data', resolve))
  await new Promise((resolve) => setTimeout(resolve, 100))
  socket.destroy()
  await settled()
  const records = await sql`select metadata from budget_usage_records`
  t.comment(`handlers started: ${started}; usage records: ${records.length}`)
  for (const record of records) t.match(record.metadata, { costBasis: 'estimate' })
  t.same(await findViolations(sql), [])
})
