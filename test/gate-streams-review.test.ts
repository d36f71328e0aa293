// Hostile streams after the first review's fixes (issue 20): the stream feeder's line-end gating and
// finish, the OpenAI service-tier pin through clamp and streams, a lying upstream, and two processes.
import { Readable } from 'node:stream'
import t from 'tap'
import { streamFeeder } from '../lib/http/gate/stream-usage.js'
import { chatApi } from '../lib/model-apis/chat.js'
import { responsesApi } from '../lib/model-apis/responses.js'
import type { TokenUsage } from '../lib/pricing/pricing.js'
import { toUnits } from '../lib/kernel/money.js'
import { buildGateway, spendTo } from './fixtures/gateway.js'
import { findViolations } from './fixtures/invariants.js'
import { startApiUpstream } from './fixtures/upstream-apis.js'

const HEADERS = { 'x-relay-team-id': 'platform' }
const CHAT_BODY = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: 50, stream: true }

function chatChunk (fields: Record<string, unknown>): string {
  return JSON.stringify({ id: 'chatcmpl-1', object: 'chat.completion.chunk', created: 1, model: 'gpt-4o-mini', choices: [], ...fields })
}

function collect () {
  const events: Array<[string | undefined, string]> = []
  let usage: TokenUsage | null = null
  const inner = chatApi.streamUsage('gpt-4o-mini')
  const feed = streamFeeder({ event: (name, data) => { events.push([name, data]); inner.event(name, data) }, usage: () => inner.usage() }, (read) => { usage = read })
  return { feed, events, usage: () => usage }
}

t.test('a complete event closed by a lone CR, followed by an unterminated last line, is dispatched: the call is charged the usage the client received', async (t) => {
  // "data: {usage}\r\r" is a complete event (WHATWG: end-of-line = CRLF / CR / LF). The parser holds the
  // final CR back in case an LF follows. The next chunk ("data: [DONE]", no line end) resolves it for any
  // client (a CR followed by 'd' is a line end), but streamFeeder keeps text without a line end from the
  // parser, and finish() sees endsWithCR false (the last push did not end with CR): the held CR is never
  // resolved and the usage event is never dispatched.
  const usageEvent = `data: ${chatChunk({ usage: { prompt_tokens: 12, completion_tokens: 7 } })}\r\r`
  const unit = collect()
  unit.feed(Buffer.from(usageEvent))
  unit.feed(Buffer.from('data: [DONE]'))
  unit.feed.finish()
  t.match(unit.usage(), { inputTokens: 12, outputTokens: 7 }, `the usage event is dispatched (events seen: ${unit.events.length})`)

  // Through the gate, a route's returned stream: the client gets the usage, the gate charges the estimate.
  const gateway = await buildGateway(t, {
    gate: { sweepIntervalMs: 0 },
    routes: (app) => {
      app.post('/review-rc/cr/v1/chat/completions', { config: { budgetGate: 'chat' } }, async (_request, reply) => {
        void reply.header('content-type', 'text/event-stream')
        return Readable.from([Buffer.from(usageEvent), Buffer.from('data: [DONE]')])
      })
    }
  })
  await gateway.createBudget({ scopeType: 'team', scopeId: 'platform', amount: '10' })
  const response = await gateway.app.inject({ method: 'POST', url: '/review-rc/cr/v1/chat/completions', headers: HEADERS, body: CHAT_BODY })
  t.equal(response.statusCode, 200)
  t.ok(response.body.includes('"completion_tokens":7'), 'the client received the usage event')
  await gateway.settled()
  const [record] = await gateway.sql`select amount::text as amount, metadata from budget_usage_records`
  t.match(record!.metadata, { costBasis: 'usage', inputTokens: 12, outputTokens: 7 }, `charged the usage the client received (got ${JSON.stringify({ basis: record!.metadata.costBasis, reason: record!.metadata.estimateReason, amount: record!.amount })})`)
})

t.test('the feeder under finish twice, text after finish, a string after split bytes, CR|LF split across chunks, one byte at a time, many events in one chunk', async (t) => {
  const usageEvent = (input: number) => `data: ${chatChunk({ usage: { prompt_tokens: input, completion_tokens: 1 } })}\n\n`

  const twice = collect()
  twice.feed(Buffer.from(`data: ${chatChunk({ usage: { prompt_tokens: 3, completion_tokens: 1 } })}\r\r`))
  twice.feed.finish()
  twice.feed.finish()
  t.equal(twice.events.length, 1, 'finish twice dispatches once')
  t.match(twice.usage(), { inputTokens: 3 })

  // CR at the end of one chunk, LF at the start of the next: one line end, not two (no early dispatch of a half event).
  const split = collect()
  split.feed('data: {"a":1}\r')
  split.feed('\ndata: {"b":2}\r\n\r\n')
  t.same(split.events.map(([, data]) => data), ['{"a":1}\n{"b":2}'], 'CRLF split across chunks is one line end')

  // A multi-byte character cut across byte chunks, then a string chunk: the decoder is flushed (U+FFFD), the event survives.
  const mixed = collect()
  const euro = Buffer.from('data: {"x":"€"}\n\n')
  mixed.feed(euro.subarray(0, 13))
  mixed.feed(euro.subarray(13))
  mixed.feed(usageEvent(5))
  t.match(mixed.usage(), { inputTokens: 5 })
  t.equal(mixed.events[0]?.[1], '{"x":"€"}')

  // Text after finish does not throw.
  mixed.feed.finish()
  t.doesNotThrow(() => { mixed.feed(usageEvent(6)) })

  // One byte at a time over a 64 KiB event: still read.
  const tiny = collect()
  const bytes = Buffer.from(`data: ${chatChunk({ choices: [{ index: 0, delta: { content: 'A'.repeat(65536) } }] })}\n\n${usageEvent(9)}`)
  for (let at = 0; at < bytes.length; at++) tiny.feed(bytes.subarray(at, at + 1))
  t.match(tiny.usage(), { inputTokens: 9 })

  // Twenty thousand events in one chunk: every one dispatched, the last usage kept.
  const many = collect()
  many.feed(Buffer.from(Array.from({ length: 20000 }, (_, i) => usageEvent(i + 1)).join('')))
  t.equal(many.events.length, 20000)
  t.match(many.usage(), { inputTokens: 20000 })
})

t.test('a usage reader that throws (the API module patched to one) is charged the estimate and warned, no hold left; a completed event with counts that are not integers likewise', async (t) => {
  const original = responsesApi.streamUsage
  t.teardown(() => { responsesApi.streamUsage = original })
  let throwing = true
  responsesApi.streamUsage = (model) => {
    const inner = original(model)
    return { event: (name, data) => { if (throwing) throw new Error('reader broke'); inner.event(name, data) }, usage: () => inner.usage() }
  }
  const gateway = await buildGateway(t, {
    gate: { sweepIntervalMs: 0 },
    captureLogs: true,
    routes: (app) => {
      app.post('/review-rc/throw/v1/responses', { config: { budgetGate: 'responses' } }, async (_request, reply) => {
        void reply.header('content-type', 'text/event-stream')
        return Readable.from([Buffer.from('event: response.completed\ndata: {"type":"response.completed","response":{"usage":{"input_tokens":"x","output_tokens":{"toString":false}}}}\n\n')])
      })
    }
  })
  await gateway.createBudget({ scopeType: 'team', scopeId: 'platform', amount: '10' })
  const body = { model: 'gpt-4o-mini', input: 'hi', max_output_tokens: 50, stream: true }
  const response = await gateway.app.inject({ method: 'POST', url: '/review-rc/throw/v1/responses', headers: HEADERS, body })
  t.equal(response.statusCode, 200)
  throwing = false
  t.equal((await gateway.app.inject({ method: 'POST', url: '/review-rc/throw/v1/responses', headers: HEADERS, body })).statusCode, 200)
  await gateway.settled()
  const records = await gateway.sql`select metadata from budget_usage_records`
  t.equal(records.length, 2)
  for (const record of records) t.match(record.metadata, { costBasis: 'estimate', estimateReason: 'no-usage' })
  t.ok(gateway.logs.some((line) => String(line.msg).startsWith('reading a streamed response')), 'the reader\'s failure is warned')
  t.same(await findViolations(gateway.sql), [])
})

t.test("an admitted Responses call is forwarded with service_tier 'default' when it names none or 'auto', also clamped and streamed; 'flex' is kept", async (t) => {
  const upstream = await startApiUpstream(t, { mode: (body) => (body.stream === true ? 'sse' : 'json') })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const budget = await gateway.createBudget({ scopeType: 'team', scopeId: 'platform', amount: '0.001', nearLimit: 'clamp' })
  await spendTo(gateway.app, budget.id, '0.0009')
  const ask = async (extra: Record<string, unknown>) => await gateway.app.inject({
    method: 'POST', url: '/v1/responses', headers: HEADERS, body: { model: 'gpt-4o-mini', input: 'Write a long story', max_output_tokens: 4000, ...extra }
  })
  for (const extra of [{}, { service_tier: 'auto' }, { stream: true }, { stream: true, service_tier: 'auto' }, { service_tier: 'flex' }]) {
    const before = upstream.calls.length
    const response = await ask(extra)
    t.equal(response.statusCode, 200, JSON.stringify(extra))
    t.ok(response.headers['x-budget-clamped-max-tokens'] !== undefined, 'clamped')
    t.equal(upstream.calls.length, before + 1)
    t.equal(upstream.calls.at(-1)!.body.service_tier, extra.service_tier === 'flex' ? 'flex' : 'default', `${JSON.stringify(extra)}: the upstream saw the pinned tier`)
    await gateway.settled()
  }
  t.same(await findViolations(gateway.sql), [])
})

t.test('a lying Responses upstream (usage far above the estimate) is charged in full and warned; the hard budget ends over its amount (README: charged in full)', async (t) => {
  const lie = { input_tokens: 5_000_000, output_tokens: 5_000_000, total_tokens: 10_000_000 }
  const gateway = await buildGateway(t, {
    gate: { sweepIntervalMs: 0 },
    captureLogs: true,
    routes: (app) => {
      app.post('/review-rc/lie/v1/responses', { config: { budgetGate: 'responses' } }, async (_request, reply) => {
        void reply.header('content-type', 'text/event-stream')
        return Readable.from([Buffer.from(`event: response.completed\ndata: ${JSON.stringify({ type: 'response.completed', response: { id: 'r', object: 'response', model: 'gpt-4o-mini', status: 'completed', output: [], usage: lie } })}\n\n`)])
      })
    }
  })
  const budget = await gateway.createBudget({ scopeType: 'team', scopeId: 'platform', amount: '0.01' })
  const response = await gateway.app.inject({ method: 'POST', url: '/review-rc/lie/v1/responses', headers: HEADERS, body: { model: 'gpt-4o-mini', input: 'hi', max_output_tokens: 50, stream: true } })
  t.equal(response.statusCode, 200)
  await gateway.settled()
  const [record] = await gateway.sql`select amount::text as amount, metadata from budget_usage_records`
  t.match(record!.metadata, { costBasis: 'usage', inputTokens: 5_000_000, outputTokens: 5_000_000 }, 'charged the usage in full')
  t.ok(toUnits(record!.amount as string) > toUnits(record!.metadata.estimatedCost as string), `${record!.amount as string} over its estimate ${record!.metadata.estimatedCost as string}`)
  t.ok(gateway.logs.some((line) => line.msg === 'a call cost more than its estimate'), 'warned')
  const status = await gateway.status(budget.id)
  t.comment(`the hard budget of 0.01 stands at ${status.currentAmount as string}; violations: ${JSON.stringify(await findViolations(gateway.sql))}`)
  const next = await gateway.app.inject({ method: 'POST', url: '/review-rc/lie/v1/responses', headers: HEADERS, body: { model: 'gpt-4o-mini', input: 'hi', max_output_tokens: 50, stream: true } })
  t.equal(next.statusCode, 402, 'the next call is refused')
})

t.test('two gateway processes on one database, Responses and Messages streams from worst-case, cut and hanging upstreams, a third of the clients leaving: after settlement no hold is left, the cache equals the records, no hard budget is over', async (t) => {
  const { createTestDatabase } = await import('./fixtures/database.js')
  const { startGatewayProcess } = await import('./fixtures/gateway-process.js')
  const postgres = (await import('postgres')).default
  const upstream = await startApiUpstream(t, { chunkDelayMs: 3 })
  const url = await createTestDatabase(t)
  const sql = postgres(url, { onnotice: () => {} })
  t.teardown(async () => await sql.end())
  const adminToken = 'review-rc-admin-token-0123456789'
  const processes: Array<Awaited<ReturnType<typeof startGatewayProcess>>> = []
  for (let i = 0; i < 2; i++) {
    const gateway = await startGatewayProcess({ DATABASE_URL: url, ADMIN_TOKEN: adminToken, UPSTREAM_URL: upstream.url, ANTHROPIC_UPSTREAM_URL: upstream.url, ANTHROPIC_API_KEY: 'test' })
    processes.push(gateway)
    t.teardown(async () => await gateway.stop())
  }
  for (const [scopeType, scopeId, amount] of [['team', 'platform', '0.05'], ['organization', 'acme', '0.08']]) {
    const response = await fetch(`${processes[0]!.url}/api/v1/budgets`, {
      method: 'POST',
      headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: scopeId, scopeType, scopeId, amount, currency: 'USD', period: 'monthly', startDate: '2024-01-01' })
    })
    t.equal(response.status, 201, await response.text())
  }
  const modes = ['worst', 'sse', 'sse-cut', 'sse-no-usage', 'hang'] as const
  const statuses = await Promise.all(Array.from({ length: 80 }, async (_, i) => {
    const mode = modes[i % modes.length]!
    const responses = i % 2 === 0
    const prompt = `[call ${i}] [upstream:${mode}] Write about budgets`
    const body = responses
      ? { model: 'gpt-4o-mini', input: prompt, max_output_tokens: 400 + (i % 7) * 100, stream: true }
      : { model: 'claude-sonnet-4-5', max_tokens: 200 + (i % 5) * 50, stream: true, messages: [{ role: 'user', content: [{ type: 'text', text: prompt, ...(i % 3 === 0 ? { cache_control: { type: 'ephemeral', ttl: '1h' } } : {}) }] }] }
    const abort = new AbortController()
    const leaves = mode === 'hang' || i % 3 === 0
    const timer = leaves ? setTimeout(() => { abort.abort() }, 20 + (i % 4) * 15) : undefined
    try {
      const response = await fetch(`${processes[i % 2]!.url}${responses ? '/v1/responses' : '/v1/messages'}`, {
        method: 'POST', signal: abort.signal,
        headers: { 'content-type': 'application/json', 'x-relay-team-id': 'platform', 'x-relay-organization-id': 'acme', 'x-api-key': 'test', 'anthropic-version': '2023-06-01' },
        body: JSON.stringify(body)
      })
      await response.arrayBuffer()
      return response.status
    } catch {
      return 'left'
    } finally {
      clearTimeout(timer)
    }
  }))
  t.comment(JSON.stringify(statuses.reduce<Record<string, number>>((counts, status) => ({ ...counts, [status]: (counts[status] ?? 0) + 1 }), {})))
  t.ok(statuses.every((status) => status === 200 || status === 402 || status === 'left' || status === 429), 'no 5xx')
  t.ok(statuses.includes(402), 'the budgets refused some')
  const deadline = Date.now() + 30_000
  while ((await sql`select count(*)::int as n from budget_reservations`)[0]!.n > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100))
  // Stop both (SIGTERM: drain, settle, return leases), then read the tables.
  for (const gateway of processes) await gateway.stop()
  t.same(await findViolations(sql), [], 'the escrow rule holds')
  const forwarded = upstream.calls.filter((call) => call.api === 'responses')
  t.ok(forwarded.length > 0 && forwarded.every((call) => call.body.service_tier === 'default'), `every forwarded Responses call (${forwarded.length}) named service_tier 'default'`)
  t.ok(upstream.calls.filter((call) => call.api === 'messages').every((call) => call.body.service_tier === undefined), 'Messages calls are forwarded without a tier added')
})
