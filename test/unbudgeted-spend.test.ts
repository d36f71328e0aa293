// The spend ledger (issue 21, item 1): every call the gate serves is a usage record, with or without a
// budget. A caller no budget covers (no budget for its team, a mistyped scope, no scopes at all) is served
// and recorded without a budget, priced as any other call, stored once per request; a budget created later
// counts only its own calls; gate.unbudgeted 'refuse' answers 402 no_applicable_budget instead; metrics
// count the calls and their cost. Real PostgreSQL; after each, the escrow invariants still hold.
import type { Sql } from 'postgres'
import t from 'tap'
import { normalizeMoney, toUnits, fromUnits } from '../lib/kernel/money.js'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'
import { checkInvariants, waitForSettled } from './fixtures/invariants.js'
import { apiModeMarker, startApiUpstream, type ApiUpstreamMode } from './fixtures/upstream-apis.js'

interface LedgerRow {
  id: string
  budgetId: string | null
  amount: string
  currency: string
  source: string
  key: string
  metadata: Record<string, unknown>
}

async function unbudgetedRows (sql: Sql): Promise<LedgerRow[]> {
  const rows = await sql<LedgerRow[]>`
    select id, budget_id as "budgetId", amount::text as amount, currency, source, idempotency_key as key, metadata
    from budget_usage_records where budget_id is null order by occurred_at, id`
  return rows.map((row) => ({ ...row, amount: normalizeMoney(row.amount) }))
}

/** Waits until `count` unbudgeted records are stored (they commit after the response, in the settlements' batches), then for quiet. */
async function recorded (sql: Sql, count: number, timeoutMs = 10_000): Promise<LedgerRow[]> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const [row] = await sql<Array<{ count: number }>>`select count(*)::int as count from budget_usage_records where budget_id is null`
    if (row!.count >= count) break
    if (Date.now() > deadline) throw new Error(`${row!.count} unbudgeted records, not ${count}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  await waitForSettled(sql)
  return await unbudgetedRows(sql)
}

const headersOf = (scopes: Record<string, string>) => Object.fromEntries(Object.entries(scopes).map(([type, id]) => [`x-relay-${type}-id`, id]))

const BODIES = {
  chat: { url: '/v1/chat/completions', body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 20 }, headers: {} },
  responses: { url: '/v1/responses', body: { model: 'gpt-4o-mini', input: 'Say hello', max_output_tokens: 50 }, headers: {} },
  embeddings: { url: '/v1/embeddings', body: { model: 'text-embedding-3-small', input: ['Say hello', 'and goodbye'] }, headers: {} },
  messages: { url: '/v1/messages', body: { model: 'claude-sonnet-4-5', max_tokens: 50, messages: [{ role: 'user', content: 'Say hello' }] }, headers: { 'anthropic-version': '2023-06-01' } }
} as const

t.test('a caller no budget covers is served and recorded without a budget, on all four APIs, priced as a budgeted call', async (t) => {
  const gateway = await buildGateway(t)
  const budget = await gateway.createBudget({ name: 'platform', scopeId: 'platform', amount: '100' })
  const answers: Array<{ api: string, scopes: Record<string, string>, status: number, budgetHeader: unknown }> = []
  const calls: Array<[keyof typeof BODIES, Record<string, string>, Record<string, string>]> = [
    ['chat', { team: 'research', user: 'bob', organization: 'acme', project: 'p1' }, { 'x-relay-tags': 'feature=summarize' }],
    ['chat', { team: 'Platform' }, {}], // a mistyped scope: no budget is for it
    ['chat', {}, {}], // no scope headers at all
    ['responses', { team: 'research' }, {}],
    ['embeddings', { team: 'research' }, {}],
    ['messages', { team: 'research' }, {}],
    ['chat', { team: 'platform' }, {}] // the budgeted twin of the first call
  ]
  for (const [api, scopes, extra] of calls) {
    const { url, body, headers } = BODIES[api]
    const response = await gateway.app.inject({ method: 'POST', url, headers: { ...headers, ...headersOf(scopes), ...extra }, body })
    answers.push({ api, scopes, status: response.statusCode, budgetHeader: response.headers['x-budget-id'] })
  }
  t.same(answers.map((answer) => answer.status), calls.map(() => 200), 'every call is served')
  t.same(answers.slice(0, 6).map((answer) => answer.budgetHeader), calls.slice(0, 6).map(() => undefined), 'no budget is named for the uncovered callers')
  t.equal(answers[6]!.budgetHeader, budget.id)

  const rows = await recorded(gateway.sql, 6)
  await gateway.settled()
  t.equal(rows.length, 6, 'one record for each uncovered call, none for the budgeted one')
  // Records of one batch share recorded_at, and calls may share a millisecond: compared in a set order.
  const named = rows.map((row) => `${String(row.metadata.modelId)} ${String(row.metadata.teamId ?? '-')}`).sort()
  t.same(named, [
    'claude-sonnet-4-5 research', 'gpt-4o-mini -', 'gpt-4o-mini Platform', 'gpt-4o-mini research', 'gpt-4o-mini research', 'text-embedding-3-small research'
  ], 'each record names its model and its caller as given')
  for (const row of rows) {
    t.equal(row.currency, 'USD')
    t.equal(row.source, 'gateway')
    t.equal(row.key, row.metadata.requestId, 'keyed by its call\'s request id')
    t.equal(row.metadata.costBasis, 'usage', 'priced from its usage')
    t.ok(typeof row.metadata.inputTokens === 'number' && typeof row.metadata.outputTokens === 'number', 'its tokens are kept')
    t.ok(toUnits(row.amount) > 0n && toUnits(row.amount) <= toUnits(row.metadata.estimatedCost as string), `${String(row.metadata.modelId)}: charged ${row.amount}, within its estimate ${String(row.metadata.estimatedCost)}`)
  }
  t.match(rows.find((row) => row.metadata.tags !== undefined)?.metadata, { userId: 'bob', teamId: 'research', organizationId: 'acme', projectId: 'p1', tags: { feature: 'summarize' } }, 'the caller\'s scopes and tags, as every gated record has them')

  // The same call charged under a budget and without one: the same estimate, the same cost.
  const [budgeted] = await gateway.sql<Array<{ amount: string, metadata: Record<string, unknown> }>>`
    select amount::text as amount, metadata from budget_usage_records where budget_id = ${budget.id}`
  const twin = rows.find((row) => row.metadata.teamId === 'Platform')!
  t.equal(normalizeMoney(budgeted!.amount), twin.amount, 'charged as the budgeted call is')
  t.equal(budgeted!.metadata.estimatedCost, twin.metadata.estimatedCost)
  t.equal((await gateway.status(budget.id)).currentAmount, normalizeMoney(budgeted!.amount), 'the budget counts its own call only')

  // The reports of a budget list its calls only: a null budget breaks no read.
  const usage = await gateway.app.inject({ url: `${PREFIX}/${budget.id}/usage`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
  t.equal(usage.statusCode, 200)
  t.equal(usage.json().records.length, 1)
  const summary = await gateway.app.inject({ url: `${PREFIX}/${budget.id}/usage/summary`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
  t.equal(summary.statusCode, 200)
  await checkInvariants(t, gateway.sql)
})

t.test('streams, a client that leaves mid-stream, and upstreams that fail or send no usage', async (t) => {
  const upstream = await startApiUpstream(t, { chunkDelayMs: 20 })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, anthropicUpstreamServer: upstream.url })
  const address = await gateway.app.listen({ port: 0, host: '127.0.0.1' })
  const send = async (api: 'responses' | 'messages', mode: ApiUpstreamMode, stream: boolean, leaveAfterBytes?: number, team = `t-${api}-${mode}`) => {
    const { url, body, headers } = BODIES[api]
    const prompt = `${apiModeMarker(mode)} Say hello at length`
    const request = api === 'responses' ? { ...body, input: prompt } : { ...body, messages: [{ role: 'user', content: prompt }] }
    const abort = new AbortController()
    const response = await fetch(`${address}${url}`, {
      method: 'POST', signal: abort.signal, headers: { 'content-type': 'application/json', ...headers, 'x-relay-team-id': team },
      body: JSON.stringify({ ...request, ...(stream ? { stream: true } : {}) })
    })
    let read = 0
    const reader = response.body!.getReader()
    try {
      for (;;) {
        const { value, done } = await reader.read()
        if (done) break
        read += value.length
        if (leaveAfterBytes !== undefined && read >= leaveAfterBytes) { abort.abort(); break }
      }
    } catch { /* the upstream cut the stream */ }
    return response.status
  }
  const statuses = [
    await send('responses', 'sse', true),
    await send('messages', 'sse', true),
    await send('responses', 'sse-no-usage', true),
    await send('messages', 'sse-cut', true),
    await send('responses', 'json-no-usage', false),
    await send('messages', 'error-500', false),
    await send('responses', 'sse', true, 1, 't-left')
  ]
  t.same(statuses, [200, 200, 200, 200, 200, 500, 200])
  const rows = await recorded(gateway.sql, 6)
  const byTeam = new Map(rows.map((row) => [row.metadata.teamId as string, row]))
  t.equal(rows.length, 6, 'every served call is recorded once; the upstream\'s error is not')
  t.notOk(byTeam.has('t-messages-error-500'), 'an upstream error served nothing and costs nothing')
  t.equal(upstream.calls.length, 7, 'every call reached the upstream')
  for (const team of ['t-responses-sse', 't-messages-sse']) t.equal(byTeam.get(team)?.metadata.costBasis, 'usage', `${team}: the stream's usage`)
  for (const team of ['t-responses-sse-no-usage', 't-messages-sse-cut', 't-responses-json-no-usage']) {
    const row = byTeam.get(team)!
    t.match(row.metadata, { costBasis: 'estimate', estimateReason: 'no-usage' }, `${team}: charged its estimate`)
    t.equal(row.amount, normalizeMoney(row.metadata.estimatedCost as string))
  }
  // The client that left at its first bytes: the call reached the upstream, so it is charged (its estimate: its usage never came).
  t.match(byTeam.get('t-left')?.metadata, { costBasis: 'estimate', estimateReason: 'no-usage' }, 'the call whose client left mid-stream is recorded at its estimate')
  await checkInvariants(t, gateway.sql)
})

t.test('chat completions: a stream, and a client that leaves mid-stream, are recorded', async (t) => {
  const gateway = await buildGateway(t, { mockTokenDelayMs: 20 })
  const address = await gateway.app.listen({ port: 0, host: '127.0.0.1' })
  const stream = async (team: string, leaveAfterBytes?: number) => {
    const abort = new AbortController()
    const response = await fetch(`${address}/v1/chat/completions`, {
      method: 'POST', signal: abort.signal, headers: { 'content-type': 'application/json', 'x-relay-team-id': team },
      body: JSON.stringify({ ...BODIES.chat.body, max_tokens: 60, stream: true })
    })
    const reader = response.body!.getReader()
    let read = 0
    for (;;) {
      const { value, done } = await reader.read()
      if (done) break
      read += value.length
      if (leaveAfterBytes !== undefined && read >= leaveAfterBytes) { abort.abort(); break }
    }
    return response.status
  }
  t.equal(await stream('streamed'), 200)
  t.equal(await stream('left', 1), 200)
  const rows = await recorded(gateway.sql, 2)
  const byTeam = new Map(rows.map((row) => [row.metadata.teamId as string, row]))
  t.equal(byTeam.get('streamed')?.metadata.costBasis, 'usage', 'the whole stream: its usage')
  const left = byTeam.get('left')
  t.ok(left !== undefined, 'the call whose client left is recorded')
  t.ok(left !== undefined && toUnits(left.amount) > 0n && toUnits(left.amount) <= toUnits(left.metadata.estimatedCost as string), 'charged, within its estimate')
  t.ok(toUnits(left!.amount) < toUnits(byTeam.get('streamed')!.amount) || left!.metadata.costBasis === 'estimate', 'charged what was produced, or its estimate')
  await checkInvariants(t, gateway.sql)
})

t.test('closing the plugin stores the records of the calls it served', async (t) => {
  const gateway = await buildGateway(t)
  const responses = await Promise.all(Array.from({ length: 20 }, async (_, i) => await gateway.call({ team: `closing-${i % 3}` })))
  t.same(responses.map((response) => response.statusCode), responses.map(() => 200))
  await gateway.app.close() // no wait before it: the close itself flushes them
  t.equal((await unbudgetedRows(gateway.sql)).length, 20, 'every served call is recorded once the plugin has closed')
  await checkInvariants(t, gateway.sql)
})

t.test('a record sent again is stored once', async (t) => {
  const gateway = await buildGateway(t)
  const integration = gateway.app.budgetIntegration
  const info = { requestId: 'retried-call-1', metadata: { modelId: 'gpt-4o-mini', teamId: 'research', costBasis: 'usage' } }
  // Twice in one batch, and once more after it committed.
  const outcomes = await Promise.all([integration.recordUnbudgetedCall('0.25', info), integration.recordUnbudgetedCall('0.25', info)])
  outcomes.push(await integration.recordUnbudgetedCall('0.25', info))
  t.same(outcomes.map((outcome) => outcome.outcome).sort(), ['already-recorded', 'already-recorded', 'recorded'])
  const rows = await unbudgetedRows(gateway.sql)
  t.equal(rows.length, 1)
  t.equal(rows[0]!.amount, '0.25')
  t.equal(rows[0]!.key, 'retried-call-1')
  await checkInvariants(t, gateway.sql)
})

t.test('a budget created later counts only what is recorded under it from its own start', async (t) => {
  const gateway = await buildGateway(t)
  for (let i = 0; i < 3; i++) t.equal((await gateway.call({ team: 'late' })).statusCode, 200)
  const before = await recorded(gateway.sql, 3)
  const budget = await gateway.createBudget({ name: 'late', scopeId: 'late', amount: '10', startDate: '2024-01-01' })
  t.equal((await gateway.status(budget.id)).currentAmount, '0', 'the earlier calls do not flow into the new budget')
  const response = await gateway.call({ team: 'late' })
  t.equal(response.headers['x-budget-id'], budget.id)
  await gateway.settled()
  await waitForSettled(gateway.sql)
  const [own] = await gateway.sql<Array<{ amount: string }>>`select amount::text as amount from budget_usage_records where budget_id = ${budget.id}`
  t.equal((await gateway.status(budget.id)).currentAmount, normalizeMoney(own!.amount), 'it counts its own call, exactly')
  t.equal((await unbudgetedRows(gateway.sql)).length, before.length, 'the call under the budget is no unbudgeted record')
  await checkInvariants(t, gateway.sql)
})

t.test('gate.unbudgeted refuse: 402 no_applicable_budget in each API\'s shape; nothing held, recorded or called', async (t) => {
  const gateway = await buildGateway(t, { gate: { unbudgeted: 'refuse' }, upstream: true })
  const budget = await gateway.createBudget({ name: 'platform', scopeId: 'platform', amount: '100' })
  const refused = [
    await gateway.call({ team: 'research' }),
    await gateway.call({ team: 'Platform' }),
    await gateway.call({})
  ]
  for (const response of refused) {
    t.equal(response.statusCode, 402)
    t.equal(response.json().error.code, 'no_applicable_budget', 'OpenAI\'s error shape, a code that says why')
    t.equal(response.json().error.type, 'insufficient_quota')
  }
  t.match(refused[0]!.json().error.message, /team 'research'/, 'the message names the caller')
  for (const api of ['responses', 'embeddings', 'messages'] as const) {
    const { url, body, headers } = BODIES[api]
    const response = await gateway.app.inject({ method: 'POST', url, headers: { ...headers, 'x-relay-team-id': 'research' }, body })
    t.equal(response.statusCode, 402, api)
    t.match(response.body, /no_applicable_budget/, `${api}: the code in its own error shape`)
    if (api === 'messages') t.equal(response.json().type, 'error', 'Anthropic\'s error shape')
  }
  t.equal(gateway.upstreamCalls(), 0, 'the upstream was never called')
  const allowed = await gateway.call({ team: 'platform' })
  t.equal(allowed.statusCode, 200, 'a covered caller is served')
  t.equal(allowed.headers['x-budget-id'], budget.id)
  await gateway.settled()
  await waitForSettled(gateway.sql)
  t.equal((await unbudgetedRows(gateway.sql)).length, 0, 'nothing recorded without a budget')
  const [held] = await gateway.sql<Array<{ count: number }>>`select count(*)::int as count from budget_reservations`
  t.equal(held!.count, 0, 'nothing held')
  const metrics = await gateway.app.inject({ url: `${PREFIX}/metrics`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
  t.match(metrics.body, /relaycore_budget_gate_decisions_total\{outcome="refused",code="no_applicable_budget"\} 6/)
  await checkInvariants(t, gateway.sql)
})

t.test('a bad gate.unbudgeted fails registration with a clear error', async (t) => {
  const { default: Fastify } = await import('fastify')
  const { default: budgets } = await import('../lib/index.js')
  const gateway = await buildGateway(t)
  for (const unbudgeted of ['deny', '', null, true]) {
    const app = Fastify()
    const failure = await (async () => { await app.register(budgets, { database: gateway.url, adminToken: ADMIN_TOKEN, gate: { routes: [], unbudgeted: unbudgeted as never } }).ready() })()
      .then(() => null, (error: Error & { code?: string }) => error)
    t.equal(failure?.code, 'BUDGET_ERR_OPTIONS', `${JSON.stringify(unbudgeted)} refused`)
    t.match(failure?.message, /gate\.unbudgeted must be 'allow' or 'refuse'/)
    await app.close()
  }
})

t.test('metrics count unbudgeted calls and their exact cost', async (t) => {
  const gateway = await buildGateway(t)
  await gateway.createBudget({ name: 'platform', scopeId: 'platform', amount: '100' })
  for (const scopes of [{ team: 'research' }, { team: 'research' }, {}, { team: 'platform' }] as Array<Record<string, string>>) t.equal((await gateway.call(scopes)).statusCode, 200)
  const { url, body, headers } = BODIES.embeddings
  t.equal((await gateway.app.inject({ method: 'POST', url, headers: { ...headers, 'x-relay-team-id': 'research' }, body })).statusCode, 200)
  const rows = await recorded(gateway.sql, 4)
  await gateway.settled()
  const total = fromUnits(rows.reduce((sum, row) => sum + toUnits(row.amount), 0n))
  const text = (await gateway.app.inject({ url: `${PREFIX}/metrics`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).body
  t.match(text, /relaycore_budget_unbudgeted_calls_total\{cost_basis="usage"\} 4\n/, 'four calls recorded without a budget')
  const cost = /relaycore_budget_unbudgeted_cost_total\{currency="USD"\} (\S+)\n/.exec(text)?.[1]
  t.equal(cost, String(Number(total)), `their cost, summed exactly (${total}) and made a float only for the scrape`)
  t.match(text, /relaycore_budget_gate_decisions_total\{outcome="allowed",code=""\} 5/, 'every call still counts as allowed')
  await checkInvariants(t, gateway.sql)
})

t.test('a record the database refuses is logged at error; the caller was served', async (t) => {
  const gateway = await buildGateway(t, { captureLogs: true })
  // A fault no retry mends, for one team's records alone.
  await gateway.sql`alter table budget_usage_records add constraint refuse_doomed check (budget_id is not null or metadata ->> 'teamId' is distinct from 'doomed') not valid`
  const response = await gateway.call({ team: 'doomed' })
  t.equal(response.statusCode, 200, 'the call was served: never a 5xx for its record')
  t.equal((await gateway.call({ team: 'fine' })).statusCode, 200)
  const rows = await recorded(gateway.sql, 1)
  t.same(rows.map((row) => row.metadata.teamId), ['fine'], 'the other call\'s record is stored')
  const deadline = Date.now() + 10_000
  while (!gateway.logs.some((line) => line.msg?.startsWith('recording an unbudgeted call failed') === true) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
  const logged = gateway.logs.filter((line) => line.msg?.startsWith('recording an unbudgeted call failed') === true)
  t.ok(logged.length > 0 && logged.every((line) => line.level === 50), 'logged at error')
  await gateway.sql`alter table budget_usage_records drop constraint refuse_doomed`
  await checkInvariants(t, gateway.sql)
})
