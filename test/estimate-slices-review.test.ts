// Attacks on the sliced (asynchronous) estimate: lib/kernel/loop-slices.ts, lib/pricing/tokens.ts,
// lib/kernel/json-limits.ts (jsonTextInSlices, jsonTextShape), lib/pricing/estimate.ts, lib/model-apis/*.ts
// estimate(), the gate's estimateAt. Interleaved estimates give what each gives alone; clients that
// leave mid-estimate leave nothing held.
import type { FastifyInstance } from 'fastify'
import fc from 'fast-check'
import t from 'tap'
import { jsonTextInSlices } from '../lib/kernel/json-limits.js'
import { slices } from '../lib/kernel/loop-slices.js'
import { forgetCountedPieces } from '../lib/pricing/tokens.js'
import { toUnits } from '../lib/kernel/money.js'
import { buildGateway } from './fixtures/gateway.js'
import { checkInvariants, waitForSettled } from './fixtures/invariants.js'

const finest = () => slices({ ms: 0, work: 1 })

function randomWords (bytes: number, seed: number): string {
  let state = seed
  const next = () => { state = (state * 1103515245 + 12345) % 2147483648; return state }
  const words: string[] = []
  let length = 0
  while (length < bytes) {
    const word = Array.from({ length: 2 + (next() % 11) }, () => String.fromCharCode(97 + (next() % 26))).join('')
    words.push(word)
    length += word.length + 1
  }
  return words.join(' ').slice(0, bytes)
}

// ---------------------------------------------------------------------------------------------------
// jsonTextInSlices against JSON.stringify
// ---------------------------------------------------------------------------------------------------

t.test('jsonTextInSlices calls a nested toJSON with its property name, as JSON.stringify does', async (t) => {
  const value = { a: { toJSON (key: string) { return `key=${key}` } }, b: { c: { d: 1 } } }
  t.equal(await jsonTextInSlices(value, finest()), JSON.stringify(value), 'same text as JSON.stringify')
  // and in an array, JSON.stringify passes the index as a string
  const list = [{ toJSON (key: string) { return `i=${key}` } }, { x: { y: 1 } }]
  t.equal(await jsonTextInSlices(list, finest()), JSON.stringify(list), 'same text for array elements')
})

t.test('holds: jsonTextInSlices equals JSON.stringify for any JSON-like value (fast-check, finest slices)', async (t) => {
  const leaf = fc.oneof(
    fc.constant(-0), fc.constant(undefined), fc.constant(null), fc.double(), fc.integer(), fc.boolean(),
    fc.string({ unit: 'binary' }), fc.string({ unit: fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c)) }),
    fc.constant(() => 1), fc.constant(Symbol('s')), fc.date({ noInvalidDate: true })
  )
  const key = fc.oneof(fc.string(), fc.constant('__proto__'), fc.constant('toJSON'), fc.constant('0'), fc.constant('10'), fc.constant('-1'))
  const { tree } = fc.letrec((tie) => ({
    tree: fc.oneof({ depthSize: 'small', withCrossShrink: true }, leaf, tie('array'), tie('object'), tie('sparse')),
    array: fc.array(tie('tree'), { maxLength: 5 }),
    sparse: fc.sparseArray(tie('tree'), { maxLength: 6 }),
    object: fc.array(fc.tuple(key, tie('tree')), { maxLength: 5 }).map((entries) => {
      const object: Record<string, unknown> = {}
      for (const [name, value] of entries) Object.defineProperty(object, name, { value, enumerable: true, writable: true, configurable: true })
      ;(object as Record<symbol, unknown>)[Symbol('hidden')] = { a: 1 }
      return object
    })
  }))
  await fc.assert(fc.asyncProperty(tree, async (value) => {
    let expected: string | undefined
    let threw: unknown = null
    try { expected = JSON.stringify(value) } catch (error) { threw = error }
    if (threw !== null) {
      await t.rejects(jsonTextInSlices(value, finest()))
      return
    }
    const got = await jsonTextInSlices(value, finest())
    if (got !== expected) throw new Error(`differs: ${String(expected).slice(0, 200)} / ${String(got).slice(0, 200)}`)
  }), { numRuns: 400 })
  // BigInt throws what JSON.stringify throws; nesting past MAX_NESTING (thousands deep) throws a RangeError or is written whole
  const withBig = { a: { b: [1, 2n] }, c: { d: {} } }
  await t.rejects(jsonTextInSlices(withBig, finest()), TypeError, 'BigInt: TypeError as JSON.stringify')
  let deep: unknown = 1
  for (let i = 0; i < 200; i++) deep = { x: deep, y: [i] }
  t.equal(await jsonTextInSlices(deep, finest()), JSON.stringify(deep), '200 deep: same text')
  let deeper: unknown = []
  for (let i = 0; i < 100_000; i++) deeper = [deeper, 1]
  let stringifyError: unknown = null
  try { JSON.stringify(deeper) } catch (error) { stringifyError = error }
  if (stringifyError !== null) await t.rejects(jsonTextInSlices(deeper, finest()), RangeError, 'too deep: RangeError as JSON.stringify')
})

// ---------------------------------------------------------------------------------------------------
// Through the gateway: concurrency, departures, hostile bodies
// ---------------------------------------------------------------------------------------------------

type Api = 'chat' | 'responses' | 'messages' | 'embeddings'
const PATHS: Record<Api, string> = { chat: '/v1/chat/completions', responses: '/v1/responses', messages: '/v1/messages', embeddings: '/v1/embeddings' }

/** Distinct bodies, large enough to take many slices, over the four APIs and both tokenizer kinds. */
function bodyFor (index: number): { api: Api, body: Record<string, unknown> } {
  const words = randomWords(20_000 + 9_000 * (index % 7), 1000 + index)
  const chinese = '预算网关令牌模型成本限制周期每个团队本月调用支出'.repeat(200 + 37 * index)
  switch (index % 6) {
    case 0: return { api: 'chat', body: { model: 'gpt-4o', max_tokens: 7 + index, messages: [{ role: 'system', content: words }, { role: 'user', content: chinese }] } }
    case 1: return {
      api: 'chat',
      body: {
        model: 'gpt-4o-mini', max_tokens: 9,
        messages: Array.from({ length: 400 + index * 13 }, (_, i) => ({ role: i % 2 === 0 ? 'user' : 'assistant', name: `n${i % 5}`, content: `${words.slice(i * 40, i * 40 + 40)} ${i}` })),
        tools: [{ type: 'function', function: { name: 'lookup', description: words.slice(0, 3000), parameters: { type: 'object', properties: Object.fromEntries(Array.from({ length: 300 + index }, (_, i) => [`p${i}`, { type: 'string', enum: [`v${i}`, `${index}`] }])) } } }],
        response_format: { type: 'json_schema', json_schema: { name: 'out', schema: { type: 'object', properties: Object.fromEntries(Array.from({ length: 200 }, (_, i) => [`q${i}`, { type: 'integer' }])) } } }
      }
    }
    case 2: return { api: 'chat', body: { model: 'claude-3-5-sonnet', max_tokens: 11, messages: [{ role: 'user', content: words + chinese }] } }
    case 3: return { api: 'responses', body: { model: 'gpt-4o', max_output_tokens: 13, instructions: words.slice(0, 5000), input: [{ role: 'user', content: [{ type: 'input_text', text: words }] }, { type: 'function_call', call_id: 'c1', name: 'f', arguments: JSON.stringify({ a: words.slice(0, 2000), b: [1, 2, 3] }) }, { type: 'function_call_output', call_id: 'c1', output: chinese }] } }
    case 4: return { api: 'messages', body: { model: 'claude-sonnet-4-5', max_tokens: 17, system: words.slice(0, 4000), messages: [{ role: 'user', content: words + chinese }] } }
    default: return { api: 'embeddings', body: { model: 'text-embedding-3-small', input: [words, chinese, words.slice(7)] } }
  }
}

async function post (app: FastifyInstance, api: Api, user: string, body: Record<string, unknown>) {
  return await app.inject({
    method: 'POST', url: PATHS[api],
    headers: { 'x-relay-team-id': 'team-a', 'x-relay-user-id': user, ...(api === 'messages' ? { 'anthropic-version': '2023-06-01' } : {}) },
    body
  })
}

async function records (sql: any): Promise<Map<string, { amount: string, estimatedCost: string, basis: string }>> {
  const rows = await sql`select user_id as "user", amount::text as amount, metadata->>'estimatedCost' as "estimatedCost", metadata->>'costBasis' as basis from budget_usage_records`
  return new Map(rows.map((row: any) => [row.user, { amount: row.amount, estimatedCost: row.estimatedCost, basis: row.basis }]))
}

t.test('holds: many different bodies estimated concurrently through the gateway hold what each holds alone, to the last digit, and never under the bill', async (t) => {
  // timeoutMs raised: the in-process mock provider tokenizes every prompt synchronously (test CPU, not the gate's)
  const gateway = await buildGateway(t, { gate: { timeoutMs: 120_000 } })
  await gateway.createBudget({ amount: '100000' })
  const N = 12
  const bodies = Array.from({ length: N }, (_, i) => bodyFor(i))
  // alone, one at a time, in a process that forgot every piece
  forgetCountedPieces()
  for (const [i, { api, body }] of bodies.entries()) {
    const response = await post(gateway.app, api, `alone-${i}`, body)
    t.equal(response.statusCode, 200, `alone ${i} (${api}): ${response.body.slice(0, 160)}`)
  }
  await waitForSettled(gateway.sql)
  // together, twice over (each body twice, interleaved with its twin), pieces forgotten again
  forgetCountedPieces()
  let ticks = 0
  const ticker = setInterval(() => { ticks++ }, 1)
  const responses = await Promise.all([...bodies.entries(), ...bodies.entries()].map(async ([i, { api, body }], n) => ({ i, api, response: await post(gateway.app, api, `together-${i}-${n < N ? 'a' : 'b'}`, body) })))
  clearInterval(ticker)
  for (const { i, api, response } of responses) t.equal(response.statusCode, 200, `together ${i} (${api}): ${response.body.slice(0, 160)}`)
  await waitForSettled(gateway.sql)
  const seen = await records(gateway.sql)
  const differs: string[] = []
  const under: string[] = []
  for (const [i, { api }] of bodies.entries()) {
    const alone = seen.get(`alone-${i}`)
    for (const twin of ['a', 'b']) {
      const together = seen.get(`together-${i}-${twin}`)
      if (alone === undefined || together === undefined) { differs.push(`${i}: missing record`); continue }
      if (alone.estimatedCost !== together.estimatedCost) differs.push(`${i} ${api}: alone ${alone.estimatedCost}, together ${together.estimatedCost}`)
      if (together.basis === 'usage' && toUnits(together.amount) > toUnits(together.estimatedCost)) under.push(`${i} ${api}: billed ${together.amount} > held ${together.estimatedCost}`)
    }
  }
  t.same(differs, [], `every estimate the same together as alone (${seen.size} records: ${[...seen.keys()].slice(0, 6).join(' ')})`)
  t.same(under, [], 'no bill over its estimate (tightness >= 1.000)')
  t.ok(ticks > 0, `the loop ran timers while the estimates ran (${ticks})`)
  await checkInvariants(t, gateway.sql)
})

t.test('holds: a burst of 48 concurrent large chat bodies to a cheap upstream gets no 503 (the deadline is not eaten by interleaved estimates)', async (t) => {
  const upstream = (await import('fastify')).default()
  upstream.post('/v1/chat/completions', async (request) => {
    const body = request.body as { model: string }
    return { id: 'x', object: 'chat.completion', created: 0, model: body.model, choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }], usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } }
  })
  const upstreamUrl = `${await upstream.listen({ port: 0, host: '127.0.0.1' })}/v1`
  t.teardown(async () => await upstream.close())
  const gateway = await buildGateway(t, { upstreamServer: upstreamUrl, gate: { timeoutMs: 120_000 } })
  await gateway.createBudget({ amount: '100000' })
  const bodies = Array.from({ length: 48 }, (_, i) => bodyFor([0, 1, 2][i % 3]! + 6 * (i % 4))).map(({ body }) => body)
  forgetCountedPieces()
  const started = Date.now()
  const statuses = await Promise.all(bodies.map(async (body, i) => (await post(gateway.app, 'chat', `burst-${i}`, body)).statusCode))
  const took = Date.now() - started
  await waitForSettled(gateway.sql)
  t.same(statuses.filter((status) => status >= 500), [], `no 5xx with a healthy database (${took} ms for the burst): ${statuses.join(',')}`)
  await checkInvariants(t, gateway.sql)
})

t.test('holds: clients that leave while their large estimate is still running across turns leave nothing held and see no 5xx', async (t) => {
  let reached = 0
  const gateway = await buildGateway(t, { captureLogs: true, routes: (app: FastifyInstance) => { app.addHook('preHandler', async () => { reached++ }) } })
  await gateway.createBudget({ amount: '100000' })
  const address = await gateway.app.listen({ port: 0, host: '127.0.0.1' })
  const statuses: Array<number | string> = []
  await Promise.all(Array.from({ length: 12 }, async (_, i) => {
    const { api, body } = bodyFor(i)
    const big = api === 'chat' || api === 'responses' || api === 'messages' || api === 'embeddings' ? body : body
    const abort = new AbortController()
    // leave after the body went and while the estimate runs (a few ms in), at staggered points
    setTimeout(() => { abort.abort() }, 2 + (i % 6) * 3)
    try {
      const response = await fetch(`${address}${PATHS[api]}`, {
        method: 'POST', signal: abort.signal,
        headers: { 'content-type': 'application/json', 'x-relay-team-id': 'team-a', 'x-relay-user-id': `leaver-${i}`, ...(api === 'messages' ? { 'anthropic-version': '2023-06-01' } : {}) },
        body: JSON.stringify(big)
      })
      statuses.push(response.status)
      await response.text()
    } catch {
      statuses.push('left')
    }
  }))
  await new Promise((resolve) => setTimeout(resolve, 500))
  await waitForSettled(gateway.sql)
  t.same(statuses.filter((status) => typeof status === 'number' && status >= 500), [], `no 5xx: ${statuses.join(',')}`)
  t.ok(reached > 0, `${reached} of 12 reached the gate's preHandler (the estimate) before leaving`)
  t.same(gateway.logs.filter((line) => line.level >= 50).map((line) => line.msg), [], 'no error logged')
  await checkInvariants(t, gateway.sql)
})

t.test('holds: hostile bodies across all four APIs never answer 5xx (fast-check)', async (t) => {
  const gateway = await buildGateway(t)
  await gateway.createBudget({ amount: '100000' })
  const weird = fc.oneof(
    fc.string({ unit: 'binary', maxLength: 40 }), fc.constant('\ud800'), fc.constant('<|endoftext|>'), fc.constant('a\u0000b'),
    fc.integer(), fc.double(), fc.constant(-0), fc.constant(null), fc.boolean(), fc.constant(1e308), fc.constant('cache_control')
  )
  const { tree } = fc.letrec((tie) => ({
    tree: fc.oneof({ depthSize: 'small' }, weird, tie('array'), tie('object')),
    array: fc.array(tie('tree'), { maxLength: 4 }),
    object: fc.dictionary(fc.oneof(fc.string({ maxLength: 8 }), fc.constantFrom('role', 'content', 'type', 'text', 'name', 'tool_calls', 'function', 'arguments', 'tool_call_id', 'cache_control', 'input', 'toJSON', 'constructor')), tie('tree'), { maxKeys: 4 })
  }))
  const model = fc.constantFrom('gpt-4o', 'gpt-4o-mini', 'claude-3-5-sonnet', 'claude-sonnet-4-5', 'text-embedding-3-small', 'deepseek-chat', 'nope')
  const body = fc.record({
    api: fc.constantFrom<Api>('chat', 'responses', 'messages', 'embeddings'),
    model,
    main: tree,
    extra: fc.dictionary(fc.constantFrom('tools', 'response_format', 'tool_choice', 'functions', 'function_call', 'n', 'max_tokens', 'max_output_tokens', 'system', 'instructions', 'input', 'messages', 'text', 'stream'), tree, { maxKeys: 3 }),
    deep: fc.integer({ min: 0, max: 80 })
  })
  const bad: string[] = []
  await fc.assert(fc.asyncProperty(body, async ({ api, model, main, extra, deep }) => {
    let nested: unknown = main
    for (let i = 0; i < deep; i++) nested = i % 2 === 0 ? [nested] : { x: nested }
    const field = api === 'embeddings' ? 'input' : api === 'responses' ? 'input' : 'messages'
    const payload = { model, max_tokens: 5, ...extra, [field]: api === 'embeddings' || api === 'responses' ? nested : [{ role: 'user', content: nested }] }
    const response = await post(gateway.app, api, 'hostile', payload)
    if (response.statusCode >= 500) bad.push(`${api} ${response.statusCode} ${response.body.slice(0, 200)} <- ${JSON.stringify(payload).slice(0, 300)}`)
  }), { numRuns: 300 })
  t.same(bad.slice(0, 5), [], `no 5xx (${bad.length} seen)`)
  await waitForSettled(gateway.sql)
  await checkInvariants(t, gateway.sql)
})
