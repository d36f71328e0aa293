// Attacks on the spend ledger (calls no budget covers): every served call recorded once, whatever the upstream, the client or the database did.
import type { Sql } from 'postgres'
import t from 'tap'
import { toUnits, fromUnits } from '../lib/kernel/money.js'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'
import { checkInvariants, waitFor, waitForSettled } from './fixtures/invariants.js'
import { startTcpProxy, throughProxy } from './fixtures/tcp-proxy.js'

async function unbudgeted (sql: Sql, team?: string) {
  return await sql<Array<{ amount: string, metadata: Record<string, unknown> }>>`
    select amount::text as amount, metadata from budget_usage_records
    where budget_id is null ${team === undefined ? sql`` : sql`and team_id = ${team}`} order by occurred_at, id`
}

t.test('failureMode open: a call served unchecked while the budget database blinked is recorded in the ledger, marked unchecked', async (t) => {
  const target = new URL(process.env.DATABASE_URL!)
  const proxy = await startTcpProxy(target.hostname, Number(target.port || 5432))
  t.teardown(async () => await proxy.cut())
  const gateway = await buildGateway(t, { gatewayDatabase: async (url) => throughProxy(url, proxy), gate: { failureMode: 'open', timeoutMs: 500 } })
  t.equal((await gateway.call({ team: 'research' })).statusCode, 200)
  t.ok(await waitFor(async () => (await unbudgeted(gateway.sql, 'research')).length === 1), 'the first call is recorded')
  await proxy.cut()
  // A caller whose line is not cached yet: its line cannot be read, so the call goes through unchecked.
  const response = await gateway.call({ team: 'research-2' })
  t.equal(response.statusCode, 200, 'served unchecked')
  await proxy.restore()
  // The database is back within a moment: well inside the queue's retry window (docs/ledger.md).
  const stored = await waitFor(async () => (await unbudgeted(gateway.sql, 'research-2')).length === 1, 6000)
  t.ok(stored, 'every served call leaves one usage record (docs/ledger.md): the second, served during a blink, is in the ledger')
  const [first, second] = [(await unbudgeted(gateway.sql, 'research'))[0]!, (await unbudgeted(gateway.sql, 'research-2'))[0]!]
  t.equal(first.metadata.unchecked, undefined, 'a call the gate checked is not marked')
  t.equal(second.metadata.unchecked, true, 'the one served unchecked is marked so')
})

t.test('refuse mode: a covered caller whose budget would auto-downgrade it to a model its filter excludes is not refused no_applicable_budget', async (t) => {
  const gateway = await buildGateway(t, { gate: { unbudgeted: 'refuse' } })
  const budget = await gateway.createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1', filters: { models: ['gpt-4o'] }, alerts: [{ threshold: 0.0001, actions: ['auto-downgrade'] }] })
  const first = await gateway.call({ team: 'platform' }, { model: 'gpt-4o' })
  t.equal(first.statusCode, 200, 'gpt-4o is covered by the budget')
  await gateway.settled()
  await waitForSettled(gateway.sql)
  // Now the 0.0001% auto-downgrade alert is crossed: gpt-4o calls are downgraded to gpt-4o-mini.
  let second = await gateway.call({ team: 'platform' }, { model: 'gpt-4o' })
  for (let i = 0; i < 20 && second.headers['x-budget-downgraded-from'] === undefined && second.statusCode === 200; i++) {
    await new Promise((resolve) => setTimeout(resolve, 100))
    second = await gateway.call({ team: 'platform' }, { model: 'gpt-4o' })
  }
  t.not(second.json()?.error?.code, 'no_applicable_budget', `a caller whose budget covers the model it asked for is not "uncovered" (got ${second.statusCode} ${second.body.slice(0, 200)})`)
  await gateway.settled()
  await checkInvariants(t, gateway.sql)
  void budget
})

t.test('allow mode: a budget\'s auto-downgrade to a model its filter excludes keeps the model asked for, and the spend in the budget', async (t) => {
  const gateway = await buildGateway(t)
  const budget = await gateway.createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1', filters: { models: ['gpt-4o'] }, alerts: [{ threshold: 0.0001, actions: ['auto-downgrade'] }] })
  t.equal((await gateway.call({ team: 'platform' }, { model: 'gpt-4o' })).statusCode, 200)
  await gateway.settled()
  await waitForSettled(gateway.sql)
  const second = await gateway.call({ team: 'platform' }, { model: 'gpt-4o' })
  t.equal(second.statusCode, 200)
  t.equal(second.headers['x-budget-downgraded-from'], undefined, 'not downgraded: no budget of the caller\'s takes the cheaper model')
  await gateway.settled()
  await waitForSettled(gateway.sql)
  await new Promise((resolve) => setTimeout(resolve, 300))
  const rows = await unbudgeted(gateway.sql, 'platform')
  const [own] = await gateway.sql`select count(*)::int as c from budget_usage_records where budget_id = ${budget.id}`
  t.equal(own!.c, 2, 'both of the caller\'s calls count toward its budget')
  t.same(rows.map((row) => `${String(row.metadata.requestedModel)}->${String(row.metadata.modelId)} ${row.amount}`), [], 'a call the budget itself downgraded is not filed as spend no budget covers')
  void budget
  await checkInvariants(t, gateway.sql)
})

t.test('holds: 60 concurrent uncovered calls: one record each, metrics equal the ledger exactly; a budget created mid-flight takes none', async (t) => {
  const gateway = await buildGateway(t, { mockTokenDelayMs: 5 })
  const calls = Array.from({ length: 60 }, (_, i) => gateway.call({ team: 'research', user: `u${i % 7}` }, { stream: i % 2 === 0, max_tokens: 10 + i }))
  await new Promise((resolve) => setTimeout(resolve, 20))
  const budget = await gateway.createBudget({ scopeType: 'team', scopeId: 'research', amount: '5' })
  const responses = await Promise.all(calls)
  t.same(responses.map((r) => r.statusCode), responses.map(() => 200))
  const covered = responses.filter((r) => r.headers['x-budget-id'] === budget.id).length
  await gateway.settled()
  t.ok(await waitFor(async () => (await unbudgeted(gateway.sql, 'research')).length === 60 - covered), `${60 - covered} uncovered records`)
  await waitForSettled(gateway.sql)
  const rows = await unbudgeted(gateway.sql, 'research')
  const total = rows.reduce((sum, row) => sum + toUnits(row.amount), 0n)
  const metrics = (await gateway.app.inject({ url: `${PREFIX}/metrics`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).body
  const calls2 = [...metrics.matchAll(/^relaycore_budget_unbudgeted_calls_total\{[^}]*\} (\S+)$/gm)].reduce((sum, m) => sum + Number(m[1]), 0)
  t.equal(calls2, rows.length, 'calls metric = records')
  const cost = metrics.match(/^relaycore_budget_unbudgeted_cost_total\{currency="USD"\} (\S+)$/m)?.[1]
  t.equal(Number(cost), Number(fromUnits(total)), 'cost metric = ledger sum')
  t.equal((await gateway.sql`select count(*)::int as c from budget_usage_records where budget_id = ${budget.id}`)[0]!.c, covered, 'the budget has only its own calls')
  await checkInvariants(t, gateway.sql)
})

t.test('holds: garbage usage from the upstream: each uncovered call is still recorded once', async (t) => {
  const Fastify = (await import('fastify')).default
  const upstream = Fastify()
  const USAGES: Record<string, unknown> = {
    negative: { prompt_tokens: -1000000, completion_tokens: 5, total_tokens: -999995 },
    string: { prompt_tokens: 'abc', completion_tokens: 5, total_tokens: 5 },
    float: { prompt_tokens: 10.5, completion_tokens: 5, total_tokens: 15.5 },
    huge: { prompt_tokens: Number.MAX_SAFE_INTEGER, completion_tokens: 5, total_tokens: Number.MAX_SAFE_INTEGER },
    zero: { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 },
    nullusage: null,
    array: [1, 2]
  }
  upstream.post('/v1/chat/completions', async (request) => {
    const body = request.body as { messages: Array<{ content: string }>, model: string }
    const kind = body.messages[0]!.content
    return { id: 'x', object: 'chat.completion', created: 1, model: body.model, choices: [{ index: 0, message: { role: 'assistant', content: 'hi' }, finish_reason: 'stop' }], usage: USAGES[kind] }
  })
  const url = `${await upstream.listen({ port: 0, host: '127.0.0.1' })}/v1`
  t.teardown(async () => await upstream.close())
  const gateway = await buildGateway(t, { upstreamServer: url, captureLogs: true })
  const seen: Record<string, string> = {}
  for (const kind of Object.keys(USAGES)) {
    const response = await gateway.call({ team: `g-${kind}` }, { messages: [{ role: 'user', content: kind }] })
    seen[kind] = String(response.statusCode)
  }
  await new Promise((resolve) => setTimeout(resolve, 1500))
  await waitForSettled(gateway.sql)
  for (const kind of Object.keys(USAGES)) {
    const rows = await unbudgeted(gateway.sql, `g-${kind}`)
    seen[kind] += ' ' + rows.map((row) => `${row.amount} ${String(row.metadata.costBasis)} est=${String(row.metadata.estimatedCost)} in=${String(row.metadata.inputTokens)}`).join('|')
  }
  t.comment(JSON.stringify(seen, null, 1))
  t.comment(JSON.stringify(gateway.logs.map((l) => l.msg)))
  for (const kind of ['negative', 'string', 'float', 'nullusage', 'array']) {
    t.equal((await unbudgeted(gateway.sql, `g-${kind}`)).length, 1, `${kind}: recorded once`)
  }
})

t.test('holds: two gateway processes, one stopped by SIGTERM under load: every uncovered call served is recorded once', async (t) => {
  const { createTestDatabase } = await import('./fixtures/database.js')
  const { startGatewayProcess } = await import('./fixtures/gateway-process.js')
  const postgres = (await import('postgres')).default
  const url = await createTestDatabase(t)
  const sql = postgres(url, { onnotice: () => {} })
  t.teardown(async () => await sql.end())
  const TOKEN = 'review-ledger-admin-token-0123456789'
  const a = await startGatewayProcess({ DATABASE_URL: url, ADMIN_TOKEN: TOKEN })
  t.teardown(async () => await a.stop())
  const b = await startGatewayProcess({ DATABASE_URL: url, ADMIN_TOKEN: TOKEN })
  t.teardown(async () => await b.stop())
  const send = async (base: string, i: number) => {
    const stream = i % 2 === 0
    try {
      const response = await fetch(`${base}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-relay-team-id': `uncovered-${i % 3}` },
        body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: `call ${i}` }], max_tokens: 20, stream }),
        signal: AbortSignal.timeout(20_000)
      })
      const text = await response.text()
      const whole = stream ? text.includes('[DONE]') : text.includes('"choices"')
      return { status: response.status, whole }
    } catch { return { status: 0, whole: false } }
  }
  const calls = Array.from({ length: 160 }, async (_, i) => { await new Promise((resolve) => setTimeout(resolve, i * 4)); return await send(i % 2 === 0 ? a.url : b.url, i) })
  await new Promise((resolve) => setTimeout(resolve, 300))
  const stopping = a.stop('SIGTERM')
  const outcomes = await Promise.all(calls)
  await stopping
  t.equal(a.child.exitCode, 0, 'process A drained and exited 0')
  await new Promise((resolve) => setTimeout(resolve, 1500))
  const whole = outcomes.filter((o) => o.status === 200 && o.whole).length
  const ok = outcomes.filter((o) => o.status === 200).length
  const [row] = await sql`select count(*)::int as c, count(distinct idempotency_key)::int as k from budget_usage_records where budget_id is null`
  t.comment(`whole ${whole}, 200s ${ok}, records ${row!.c as number}`)
  t.equal(row!.c, row!.k, 'one record per request id')
  t.ok((row!.c as number) >= whole && (row!.c as number) <= ok, `every whole-served call recorded, none that was not answered (${whole} <= ${row!.c as number} <= ${ok})`)
})

t.test('negative usage from the upstream is no usage: charged its estimate, no negative token count stored', async (t) => {
  const Fastify = (await import('fastify')).default
  const upstream = Fastify()
  upstream.post('/v1/chat/completions', async (request) => {
    const body = request.body as { model: string }
    return { id: 'x', object: 'chat.completion', created: 1, model: body.model, choices: [{ index: 0, message: { role: 'assistant', content: 'hi' }, finish_reason: 'stop' }], usage: { prompt_tokens: -1000000, completion_tokens: 5, total_tokens: -999995 } }
  })
  const url = `${await upstream.listen({ port: 0, host: '127.0.0.1' })}/v1`
  t.teardown(async () => await upstream.close())
  const gateway = await buildGateway(t, { upstreamServer: url })
  t.equal((await gateway.call({ team: 'neg' })).statusCode, 200)
  t.ok(await waitFor(async () => (await unbudgeted(gateway.sql, 'neg')).length === 1))
  const [row] = await unbudgeted(gateway.sql, 'neg')
  t.equal(row!.metadata.costBasis, 'estimate')
  t.ok(typeof row!.metadata.inputTokens !== 'number' || (row!.metadata.inputTokens as number) >= 0, `no negative token count in the ledger (got inputTokens ${String(row!.metadata.inputTokens)})`)
  t.not(row!.metadata.estimateReason, 'unpriced-model', `gpt-4o-mini has a price: the estimate's reason is the usage, not the model (got ${String(row!.metadata.estimateReason)}, modelId ${String(row!.metadata.modelId)})`)
})

t.test('holds: odd scopes are served and recorded as given, or refused 400 with nothing recorded; reads stay whole with null-budget records', async (t) => {
  const gateway = await buildGateway(t)
  const budget = await gateway.createBudget({ scopeType: 'team', scopeId: 'platform', amount: '10' })
  const ended = await gateway.createBudget({ name: 'ended', scopeType: 'team', scopeId: 'old', amount: '10', startDate: '2024-01-01', endDate: '2024-02-01' })
  const odd = [' platform', 'platform ', 'PLATFORM', 'platform\u200b', 'plat form', 'plätform', 'x'.repeat(300), "'; drop table budget_usage_records; --", '__proto__', 'old', '']
  const results: string[] = []
  let served = 0
  for (const id of odd) {
    const response = await gateway.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': id }, body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 } })
    results.push(`${JSON.stringify(id.slice(0, 20))} ${response.statusCode} ${String(response.headers['x-budget-id'] ?? '-')}`)
    t.not(response.headers['x-budget-id'], budget.id, `${JSON.stringify(id.slice(0, 20))} is not charged to platform`)
    t.ok(response.statusCode < 500)
    if (response.statusCode === 200) served++
  }
  t.comment(results.join('\n'))
  t.ok(await waitFor(async () => (await unbudgeted(gateway.sql)).length === served), `${served} records`)
  const rows = await unbudgeted(gateway.sql)
  t.equal(rows.length, served)
  const auth = { authorization: `Bearer ${ADMIN_TOKEN}` }
  for (const url of [PREFIX, `${PREFIX}/${budget.id}/status`, `${PREFIX}/${ended.id}/status`, `${PREFIX}/${budget.id}/usage`, `${PREFIX}/${budget.id}/usage/summary`, `${PREFIX}/reports/spend?groupBy=scope`, `${PREFIX}/reports/spend?groupBy=model`, `${PREFIX}/audit`, `${PREFIX}/metrics`, `${PREFIX}/decisions`]) {
    const response = await gateway.app.inject({ url, headers: auth })
    t.ok(response.statusCode < 500, `${url}: ${response.statusCode}`)
  }
  await checkInvariants(t, gateway.sql)
})

t.test('holds: the database gone while a record is queued: the caller is served, and the record is either stored or logged at error', async (t) => {
  const target = new URL(process.env.DATABASE_URL!)
  const proxy = await startTcpProxy(target.hostname, Number(target.port || 5432))
  t.teardown(async () => await proxy.cut())
  const gateway = await buildGateway(t, { captureLogs: true, gatewayDatabase: async (url) => throughProxy(url, proxy), gate: { timeoutMs: 2000 } })
  t.equal((await gateway.call({ team: 'blink' })).statusCode, 200, 'line is cached')
  t.ok(await waitFor(async () => (await unbudgeted(gateway.sql, 'blink')).length === 1))
  // A slow upstream stream: the record is queued once the response ends, while the database is away.
  const pending = gateway.call({ team: 'blink' }, { stream: true, max_tokens: 40 })
  await new Promise((resolve) => setTimeout(resolve, 5))
  await proxy.cut()
  const response = await pending
  t.equal(response.statusCode, 200)
  t.ok(response.body.includes('[DONE]'), 'the stream was served whole')
  await new Promise((resolve) => setTimeout(resolve, 4000))
  await proxy.restore()
  await waitFor(async () => (await unbudgeted(gateway.sql, 'blink')).length === 2 || gateway.logs.some((line) => line.msg?.startsWith('recording an unbudgeted call failed') === true), 20_000)
  const stored = (await unbudgeted(gateway.sql, 'blink')).length
  const logged = gateway.logs.filter((line) => line.msg?.startsWith('recording an unbudgeted call failed') === true)
  t.comment(`stored ${stored}, error lines ${logged.length}: ${JSON.stringify(gateway.logs.map((l) => `${l.level} ${String(l.msg)}`))}`)
  t.ok(stored === 2 || logged.length > 0, 'the second call is stored, or its loss is logged at error')
})

t.test('holds: a budget deleted while its call streams: the call is recorded once (on the archived budget), later calls land in the ledger without a budget', async (t) => {
  const gateway = await buildGateway(t, { mockTokenDelayMs: 30 })
  const budget = await gateway.createBudget({ scopeType: 'team', scopeId: 'gone', amount: '10' })
  const inflight = Array.from({ length: 8 }, async () => await gateway.call({ team: 'gone' }, { stream: true, max_tokens: 30 }))
  await new Promise((resolve) => setTimeout(resolve, 150))
  const deleted = await gateway.app.inject({ method: 'DELETE', url: `${PREFIX}/${budget.id}`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
  t.ok(deleted.statusCode < 300, `deleted: ${deleted.statusCode}`)
  const answers = await Promise.all(inflight)
  t.same(answers.map((a) => a.statusCode), answers.map(() => 200))
  await new Promise((resolve) => setTimeout(resolve, 200))
  const after = await gateway.call({ team: 'gone' })
  t.equal(after.statusCode, 200)
  t.equal(after.headers['x-budget-id'], undefined)
  await gateway.settled()
  t.ok(await waitFor(async () => (await unbudgeted(gateway.sql, 'gone')).length >= 1))
  await waitForSettled(gateway.sql)
  const [all] = await gateway.sql`select count(*)::int as c from budget_usage_records where team_id = 'gone' or budget_id = ${budget.id}`
  const nulls = await unbudgeted(gateway.sql, 'gone')
  t.comment(`records ${all!.c as number}, unbudgeted ${nulls.length}; headers ${answers.map((a) => String(a.headers['x-budget-id'] ?? '-').slice(0, 4)).join(',')}`)
  t.equal(all!.c, 9, 'one record per served call')
  await checkInvariants(t, gateway.sql)
})

t.test('holds: hostile model names for an uncovered caller: 400 before anything, or served and recorded', async (t) => {
  const gateway = await buildGateway(t, { captureLogs: true })
  const models = ['gpt-4o-mini\u0000', 'gpt-4o-mini\ud800', 'no-such-model', 'gpt-4o-mini-2024-07-18', 'GPT-4O-MINI']
  const results: string[] = []
  let served = 0
  for (const [i, model] of models.entries()) {
    const response = await gateway.call({ team: `m${i}` }, { model })
    results.push(`${JSON.stringify(model)} ${response.statusCode} ${response.body.slice(0, 120)}`)
    if (response.statusCode === 200) served++
  }
  t.comment(results.join('\n'))
  await waitFor(async () => (await unbudgeted(gateway.sql)).length === served, 5000)
  const rows = await unbudgeted(gateway.sql)
  t.comment(JSON.stringify(rows.map((r) => [r.metadata.teamId, r.metadata.modelId, r.amount])))
  t.comment(JSON.stringify(gateway.logs.map((l) => `${l.level} ${String(l.msg)}`)))
  t.equal(rows.length, served, 'every served call recorded')
})

t.test('holds: refuse mode under 30 concurrent uncovered calls: 402 each, upstream never called, nothing recorded, metrics exact', async (t) => {
  const gateway = await buildGateway(t, { upstream: true, gate: { unbudgeted: 'refuse' } })
  await gateway.createBudget({ scopeType: 'team', scopeId: 'platform', amount: '10' })
  const answers = await Promise.all(Array.from({ length: 30 }, async (_, i) => await gateway.call(i % 3 === 0 ? {} : { team: i % 3 === 1 ? 'Platform' : 'research', user: `u${i}` }, { stream: i % 2 === 0 })))
  t.same(answers.map((a) => a.statusCode), answers.map(() => 402))
  t.ok(answers.every((a) => a.json().error.code === 'no_applicable_budget'))
  t.equal(gateway.upstreamCalls(), 0, 'the upstream was never called')
  t.equal((await gateway.call({ team: 'platform' })).statusCode, 200)
  await gateway.settled()
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.equal((await unbudgeted(gateway.sql)).length, 0, 'nothing recorded without a budget')
  const metrics = (await gateway.app.inject({ url: `${PREFIX}/metrics`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).body
  const refused = metrics.match(/^relaycore_budget_gate_decisions_total\{[^}]*outcome="refused"[^}]*code="no_applicable_budget"[^}]*\} (\S+)$/m) ?? metrics.match(/^relaycore_budget_gate_decisions_total\{[^}]*code="no_applicable_budget"[^}]*outcome="refused"[^}]*\} (\S+)$/m)
  t.equal(Number(refused?.[1]), 30, 'refusals counted once each')
  const allowed = [...metrics.matchAll(/^relaycore_budget_gate_decisions_total\{[^}]*outcome="allowed"[^}]*\} (\S+)$/gm)].reduce((s, m) => s + Number(m[1]), 0)
  t.equal(allowed, 1, 'only the covered call is allowed')
  await checkInvariants(t, gateway.sql)
})
