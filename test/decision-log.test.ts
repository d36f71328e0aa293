// The decision log (issue 21, item 3): each refusal, clamp and downgrade the gate makes is stored with
// the caller, the model, the estimate and the binding budget's numbers as read when it decided; served
// newest first by GET {prefix}/decisions with filters and keyset pages; swept past its retention. The
// log is written off the response path, so the tests flush it (app.budgetDecisions.flush) before reading.
import { request as httpRequest } from 'node:http'
import fc from 'fast-check'
import postgres from 'postgres'
import { Registry } from 'prom-client'
import t from 'tap'
import { ADMIN_TOKEN, PREFIX, snapshotTables } from './fixtures/app.js'
import { buildGateway, spendTo } from './fixtures/gateway.js'
import { checkInvariants, waitForSettled } from './fixtures/invariants.js'
import { modeMarker, startUpstream, UPSTREAM_MODES } from './fixtures/upstream.js'
import { createDecisionRepository, type Decision } from '../lib/gate/decision-repository.js'
import { createDecisionLog, DECISION_LOG_DEFAULTS } from '../lib/gate/decision-log.js'
import { resolveOptions } from '../lib/options.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }
type Gateway = Awaited<ReturnType<typeof buildGateway>>

async function decisions (gateway: Gateway, query: Record<string, string | number> = {}) {
  await gateway.app.budgetDecisions.flush()
  const search = new URLSearchParams(Object.entries(query).map(([key, value]): [string, string] => [key, String(value)]))
  const response = await gateway.app.inject({ url: `${PREFIX}/decisions?${search.toString()}`, headers: AUTH })
  if (response.statusCode !== 200) throw new Error(`${response.statusCode} ${response.body}`)
  return response.json() as { decisions: Array<Record<string, any>>, nextCursor: string | null }
}

t.test('a refusal is stored with its code, caller, model, estimate and the binding budget as read when it refused', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const budget = await gateway.createBudget({ name: 'team a', amount: '0.001' })
  await spendTo(gateway.app, budget.id, '0.0009999')
  const refused = await gateway.call({ team: 'team-a', user: 'alice' }, { max_tokens: 2000 })
  t.equal(refused.statusCode, 402)
  const error = refused.json().error
  const { decisions: [decision], nextCursor } = await decisions(gateway)
  t.equal(nextCursor, null)
  t.match(decision, {
    api: 'chat',
    outcome: 'refused',
    code: 'budget_exceeded',
    scopes: { team: 'team-a', user: 'alice' },
    model: 'gpt-4o-mini',
    estimate: error.details?.budget?.estimatedCost ?? String,
    currency: 'USD',
    budget: { id: budget.id, name: 'team a', limit: '0.001', current: '0.0009999', reserved: '0' }
  })
  t.notOk('requestedModel' in decision!, 'no downgrade, no requested model')
  t.notOk('tags' in decision!, 'no tags, none shown')
  t.match(decision!.requestId, /^[0-9a-f-]{36}$/)

  // A rate limit refuses: the budget whose limit it is binds, with its money as read.
  const limited = await gateway.createBudget({ name: 'limited', scopeId: 'team-r', amount: '10', rateLimits: { requestsPerMinute: 1 } })
  t.equal((await gateway.call({ team: 'team-r' }, { messages: [{ role: 'user', content: 'hi' }] })).statusCode, 200)
  await gateway.settled()
  const second = await gateway.call({ team: 'team-r' })
  t.equal(second.statusCode, 429)
  const [rate] = (await decisions(gateway, { code: 'rate_limit_exceeded' })).decisions
  t.same(rate!.budget, { id: limited.id, name: 'limited', limit: null, current: null, reserved: null }, 'a rate limit names its budget, with no money read')
  t.match(rate, { outcome: 'refused', code: 'rate_limit_exceeded', scopes: { team: 'team-r' }, model: 'gpt-4o-mini', currency: 'USD' })
  t.equal((await decisions(gateway)).decisions.length, 2, 'an admitted call is no decision')
  await checkInvariants(t, gateway.sql)
})

t.test('a clamp and a downgrade are stored with the budget that made them, the model asked for, and the estimate they answered', async (t) => {
  const upstream = await startUpstream(t)
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const clamping = await gateway.createBudget({ name: 'clamping', amount: '0.01', nearLimit: 'clamp' })
  await spendTo(gateway.app, clamping.id, '0.009')
  const clamped = await gateway.call({ team: 'team-a' }, { model: 'gpt-4o', max_tokens: 4000, tags: undefined })
  t.equal(clamped.statusCode, 200)
  t.ok(clamped.headers['x-budget-clamped-max-tokens'] !== undefined, 'clamped')
  await gateway.settled()
  const [clamp] = (await decisions(gateway, { outcome: 'clamped' })).decisions
  t.match(clamp, { outcome: 'clamped', code: 'budget_exceeded', model: 'gpt-4o', budget: { id: clamping.id, limit: '0.01', current: '0.009', reserved: '0' } })
  t.ok(Number(clamp!.estimate) > 0.001, `the estimate is the unclamped worst case, which did not fit (${clamp!.estimate as string})`)

  const downgrading = await gateway.createBudget({ name: 'downgrading', scopeId: 'team-d', amount: '1', alerts: [{ threshold: 50, actions: ['auto-downgrade'] }] })
  await spendTo(gateway.app, downgrading.id, '0.6')
  const downgraded = await gateway.app.inject({
    method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'team-d', 'x-relay-tags': 'feature=search' },
    body: { model: 'gpt-4o', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 20 }
  })
  t.equal(downgraded.statusCode, 200)
  t.equal(downgraded.headers['x-budget-downgraded-from'], 'gpt-4o')
  await gateway.settled()
  const [swap] = (await decisions(gateway, { outcome: 'downgraded' })).decisions
  t.match(swap, {
    outcome: 'downgraded', code: 'auto_downgrade', model: 'gpt-4o-mini', requestedModel: 'gpt-4o', scopes: { team: 'team-d' }, tags: { feature: 'search' },
    budget: { id: downgrading.id, limit: '1', current: '0.6', reserved: '0' }
  })
  await checkInvariants(t, gateway.sql)
})

t.test('filters and keyset pages: newest first, no duplicate and no gap while decisions keep arriving', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const log = gateway.app.budgetDecisions
  const budgets = ['0b6f1c3e-0000-4000-8000-000000000001', '0b6f1c3e-0000-4000-8000-000000000002']
  const codes = ['budget_exceeded', 'budget_blocked', 'rate_limit_exceeded']
  const base = Date.parse('2026-01-01T00:00:00Z')
  const made: Decision[] = []
  for (let i = 0; i < 300; i++) {
    // Several decisions share an instant: the id orders them.
    const decision: Decision = {
      at: new Date(base + Math.floor(i / 3) * 1000), requestId: `seed-${i}`, api: 'chat', outcome: i % 5 === 0 ? 'clamped' : 'refused', code: codes[i % 3]!,
      scopes: { team: `team-${i % 4}`, user: `user-${i % 7}` }, model: 'gpt-4o-mini', estimate: `0.000${i + 1}`, currency: 'USD',
      budget: i % 6 === 5 ? null : { id: budgets[i % 2]!, name: `b${i % 2}`, limit: '1', current: '0.5', reserved: '0.25' }
    }
    made.push(decision)
    log.note(decision)
  }
  await log.flush()

  const all = async (query: Record<string, string | number>, during?: () => Promise<void>) => {
    const seen: Array<Record<string, any>> = []
    let cursor: string | null = null
    do {
      const page = await decisions(gateway, { ...query, limit: 7, ...(cursor === null ? {} : { cursor }) })
      seen.push(...page.decisions)
      cursor = page.nextCursor
      await during?.()
    } while (cursor !== null)
    return seen
  }
  const expected = (keep: (decision: Decision) => boolean) => made.filter(keep).map((decision) => decision.requestId).sort()
  const ids = (rows: Array<Record<string, any>>) => rows.map((row) => row.requestId as string).sort()

  // Decisions arrive while the pages are read: each newer than every page read so far.
  let arriving = 0
  const seen = await all({}, async () => {
    for (let i = 0; i < 5; i++) log.note({ ...made[0]!, at: new Date(), requestId: `late-${arriving++}` })
  })
  const seeded = seen.filter((row) => (row.requestId as string).startsWith('seed-'))
  t.same(ids(seeded), expected(() => true), 'every seeded decision once: no gap, no duplicate')
  t.equal(new Set(seen.map((row) => row.id)).size, seen.length, 'no duplicate at all')
  const order = seen.map((row) => [Date.parse(row.at), BigInt(row.id)] as const)
  t.ok(order.every((key, i) => i === 0 || key[0] < order[i - 1]![0] || (key[0] === order[i - 1]![0] && key[1] < order[i - 1]![1])), 'newest first, strictly')

  const seedRange = { from: '2026-01-01T00:00:00Z', to: '2026-01-02T00:00:00Z' }
  t.same(ids(await all({ ...seedRange, budgetId: budgets[0]! })), expected((d) => d.budget?.id === budgets[0]), 'by binding budget')
  t.same(ids(await all({ ...seedRange, code: 'budget_blocked' })), expected((d) => d.code === 'budget_blocked'), 'by code')
  t.same(ids(await all({ ...seedRange, outcome: 'clamped' })), expected((d) => d.outcome === 'clamped'), 'by outcome')
  t.same(ids(await all({ ...seedRange, scopeType: 'team', scopeId: 'team-2' })), expected((d) => d.scopes.team === 'team-2'), 'by caller: team')
  t.same(ids(await all({ ...seedRange, scopeType: 'user', scopeId: 'user-3', code: 'budget_exceeded' })), expected((d) => d.scopes.user === 'user-3' && d.code === 'budget_exceeded'), 'by caller and code')
  const from = new Date(base + 20_000).toISOString()
  const to = new Date(base + 50_000).toISOString()
  t.same(ids(await all({ from, to })), expected((d) => d.at.getTime() >= base + 20_000 && d.at.getTime() < base + 50_000), 'from inclusive, to exclusive')
  const [one] = (await decisions(gateway, { ...seedRange, budgetId: budgets[1]!, limit: 1 })).decisions
  t.match(one, { budget: { id: budgets[1], limit: '1', current: '0.5', reserved: '0.25' }, currency: 'USD' }, 'money as exact decimal strings')
  const unbound = (await decisions(gateway, { ...seedRange, limit: 1000 })).decisions.filter((row) => row.budget === null)
  t.equal(unbound.length, made.filter((d) => d.budget === null).length, 'no binding budget: null')

  for (const [query, field] of [
    [{ limit: 0 }, 'querystring/limit'], [{ limit: 1001 }, 'querystring/limit'], [{ cursor: 'nope' }, 'cursor'], [{ cursor: Buffer.from('1.0').toString('base64url') }, 'cursor'],
    [{ budgetId: 'x' }, 'budgetId'], [{ scopeType: 'team' }, 'scopeId'], [{ scopeId: 'a' }, 'scopeType'], [{ from: '2026-02-01', to: '2026-01-01' }, 'to'],
    [{ outcome: 'allowed' }, 'outcome'], [{ code: 'DROP TABLE' }, 'code'], [{ from: 'yesterday' }, 'from'], [{ other: 1 }, 'other']
  ] as Array<[Record<string, string | number>, string]>) {
    const response = await gateway.app.inject({ url: `${PREFIX}/decisions?${new URLSearchParams(Object.entries(query).map(([k, v]): [string, string] => [k, String(v)])).toString()}`, headers: AUTH })
    t.equal(response.statusCode, 400, `${JSON.stringify(query)}: 400`)
    t.equal(response.json().code, 'BUDGET_ERR_VALIDATION', `${JSON.stringify(query)}: a stable code (${response.json().message as string}, about ${field})`)
  }
  t.equal((await gateway.app.inject({ url: `${PREFIX}/decisions` })).statusCode, 401, 'admin auth')
})

t.test('the retention sweep deletes decisions past retentionDays, in bounded batches, and nothing newer', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const log = gateway.app.budgetDecisions
  // The sweep the log starts with runs first (sweeps take turns): it must not take part of the 2,500 below.
  t.equal(await log.sweep(), 0, 'nothing to sweep at first')
  const day = 24 * 60 * 60_000
  const decision = (at: number, requestId: string): Decision => ({
    at: new Date(at), requestId, api: 'embeddings', outcome: 'refused', code: 'budget_exceeded', scopes: { project: 'p' }, model: 'text-embedding-3-small', estimate: '0.1', currency: 'USD', budget: null
  })
  for (let i = 0; i < 2500; i++) log.note(decision(Date.now() - 31 * day - i * 1000, `old-${i}`))
  for (let i = 0; i < 10; i++) log.note(decision(Date.now() - 29 * day + i * 1000, `kept-${i}`))
  await log.flush()
  t.equal(await log.sweep(), 2500, 'every decision past 30 days, over several batches')
  const [row] = await gateway.sql<Array<{ left: number }>>`select count(*)::int as left from budget_decision_log`
  t.equal(row!.left, 10, 'the ones within the retention stay')
  t.equal(await log.sweep(), 0, 'a second sweep finds nothing')
})

t.test('clients that leave and upstreams that misbehave: the invariants hold and every decision is stored once', async (t) => {
  const upstream = await startUpstream(t, { mode: (body) => UPSTREAM_MODES.find((mode) => JSON.stringify(body.messages).includes(modeMarker(mode))) ?? 'json' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  await gateway.createBudget({ amount: '0.02', nearLimit: 'clamp' })
  await gateway.createBudget({ name: 'blocked', scopeId: 'team-b', amount: '1', alerts: [{ threshold: 10, actions: ['block-all'] }] }).then(async (b) => { await spendTo(gateway.app, b.id, '0.5') })
  const address = await gateway.app.listen({ port: 0, host: '127.0.0.1' })
  // Upstreams that bill the most a request allows, cut streams, fail, hang or send no usage (billing past
  // max_tokens is charged in full by design, and can take a nearly full budget over: not this test's subject).
  const modes = ['json', 'sse', 'sse-cut', 'error-500', 'hang', 'json-worst-case', 'sse-no-usage'] as const
  const requests = Array.from({ length: 60 }, (_, i) => new Promise<number>((resolve) => {
    const mode = modes[i % modes.length]!
    const body = JSON.stringify({ model: 'gpt-4o', max_tokens: 1500, stream: mode.startsWith('sse'), ...(mode.startsWith('sse') ? { stream_options: { include_usage: true } } : {}), messages: [{ role: 'user', content: `story ${modeMarker(mode)}` }] })
    const request = httpRequest(`${address}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-relay-team-id': i % 4 === 0 ? 'team-b' : 'team-a' } }, (response) => {
      response.resume()
      response.on('end', () => { resolve(response.statusCode ?? 0) })
      response.on('error', () => { resolve(-1) })
      response.on('aborted', () => { resolve(-1) })
    })
    request.on('error', () => { resolve(-1) })
    request.end(body)
    // Every third client leaves: at once, or while the gate or the upstream works.
    if (i % 3 === 1 || mode === 'hang') setTimeout(() => { request.destroy() }, (i * 7) % 40)
  }))
  const statuses = await Promise.all(requests)
  t.ok(statuses.includes(402), 'some were refused')
  await waitForSettled(gateway.sql)
  await checkInvariants(t, gateway.sql)
  const stored = await gateway.sql<Array<{ requestId: string }>>`select request_id as "requestId" from budget_decision_log`
  await gateway.app.budgetDecisions.flush()
  const all = await gateway.sql<Array<{ requestId: string, outcome: string, code: string }>>`select request_id as "requestId", outcome, code from budget_decision_log`
  t.ok(all.length >= stored.length && all.length > 0, `${all.length} decisions stored`)
  t.equal(new Set(all.map((row) => row.requestId)).size, all.length, 'one decision a request')
  t.ok(all.filter((row) => row.code === 'budget_blocked').length >= statuses.filter((status, i) => status === 402 && i % 4 === 0).length, 'every blocked call that was answered is there')
})

t.test('hostile queries on GET /decisions: no 5xx, a coded 4xx, nothing changed', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const budget = await gateway.createBudget({ amount: '0.000001' })
  t.equal((await gateway.call({ team: 'team-a' })).statusCode, 402)
  await gateway.app.budgetDecisions.flush()
  const before = await snapshotTables(gateway.sql)
  const logged = async () => (await gateway.sql`select count(*)::int as n from budget_decision_log`)[0]!.n as number
  const decided = await logged()
  t.equal(decided, 1, 'the refusal is logged')
  // A request the gate cannot read is refused as invalid (400): no decision.
  t.equal((await gateway.call({ team: 'team-a' }, { max_tokens: 'many' })).statusCode, 400)
  await gateway.app.budgetDecisions.flush()
  t.equal(await logged(), decided, 'a 400 is no decision')
  const value = fc.oneof(
    fc.string({ maxLength: 40 }), fc.constantFrom('', '0', '-1', '1001', '1e3', 'NaN', '\u0000', '\ud800', '2024-02-30', '9999-12-31T23:59:59+14:00', budget.id, budget.id.toUpperCase(),
      'refused', 'team', '__proto__', Buffer.from('99999999999999999.1').toString('base64url'), Buffer.from('1.9223372036854775808').toString('base64url')),
    fc.integer().map(String)
  )
  const key = fc.constantFrom('budgetId', 'code', 'outcome', 'scopeType', 'scopeId', 'from', 'to', 'limit', 'cursor', 'x', '__proto__')
  await fc.assert(fc.asyncProperty(fc.array(fc.tuple(key, value), { maxLength: 5 }), async (pairs) => {
    const encode = (text: string) => [...Buffer.from(text)].map((byte) => `%${byte.toString(16).padStart(2, '0')}`).join('')
    const query = pairs.map(([k, v]) => `${encode(k)}=${encode(v)}`).join('&')
    const response = await gateway.app.inject({ url: `${PREFIX}/decisions?${query}`, headers: AUTH })
    if (response.statusCode >= 500) throw new Error(`${response.statusCode} for ${query}: ${response.body}`)
    if (response.statusCode !== 200 && typeof response.json().code !== 'string') throw new Error(`no code for ${query}: ${response.body}`)
  }), { numRuns: Number(process.env.HOSTILE_RUNS ?? 200) })
  await gateway.app.budgetDecisions.flush()
  t.same(await snapshotTables(gateway.sql), before, 'nothing changed')
  t.equal(await logged(), decided, 'and nothing was logged')
})

t.test('closing the plugin writes what waits', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  await gateway.createBudget({ amount: '0.000001' })
  t.equal((await gateway.call({ team: 'team-a' })).statusCode, 402)
  await gateway.app.close()
  const [row] = await gateway.sql<Array<{ n: number }>>`select count(*)::int as n from budget_decision_log`
  t.equal(row!.n, 1, 'the refusal was written at close')
})

t.test('with the database away, the buffer stays bounded: what does not fit is dropped and counted, never waited for', async (t) => {
  const away = postgres('postgres://postgres@127.0.0.1:1/none', { connect_timeout: 1, max: 1, onnotice: () => {} })
  t.teardown(async () => await away.end({ timeout: 1 }))
  const registry = new Registry()
  const warnings: unknown[] = []
  const log = createDecisionLog(createDecisionRepository(away), { ...DECISION_LOG_DEFAULTS, maxBuffered: 5, batchSize: 5 },
    { warn: (...args: unknown[]) => warnings.push(args), error: () => {} } as never, registry)
  const decision = (i: number): Decision => ({ at: new Date(), requestId: `r${i}`, api: 'chat', outcome: 'refused', code: 'budget_blocked', scopes: {}, model: 'm', estimate: '1', currency: 'USD', budget: null })
  const dropped = async () => (await registry.getSingleMetric('relaycore_budget_decision_log_dropped_total')!.get()).values[0]!.value
  for (let i = 0; i < 8; i++) log.note(decision(i)) // returns at once: no I/O
  t.equal(await dropped(), 3, 'past maxBuffered, each new decision is dropped and counted')
  await log.flush()
  t.ok(warnings.length > 0, 'the failed write is logged')
  t.equal(await dropped(), 3, 'a failed batch goes back to the buffer while there is room')
  await log.close()
  t.equal(await dropped(), 8, 'closing with the database away counts what could not be written')
})

t.test('the decisions option is checked at registration', async (t) => {
  const base = { database: 'postgres://127.0.0.1/none', adminToken: ADMIN_TOKEN }
  t.same(resolveOptions(base).decisions, DECISION_LOG_DEFAULTS, 'on, kept 30 days, by default')
  t.equal(DECISION_LOG_DEFAULTS.retentionDays, 30)
  t.same(resolveOptions({ ...base, decisions: { retentionDays: 7, enabled: false } }).decisions, { ...DECISION_LOG_DEFAULTS, retentionDays: 7, enabled: false })
  for (const decisions of [{ retentionDays: 0 }, { retentionDays: 1.5 }, { enabled: 'yes' }, { batchSize: 20_000 }, { flushIntervalMs: 0 }, 'on']) {
    t.throws(() => resolveOptions({ ...base, decisions: decisions as never }), { code: 'BUDGET_ERR_OPTIONS' }, JSON.stringify(decisions))
  }
})
