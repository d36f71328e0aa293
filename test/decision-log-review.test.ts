// Adversarial review of the decision log (issue 21 item 3).
import postgres from 'postgres'
import t from 'tap'
import { toUnits, fromUnits } from '../lib/kernel/money.js'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway, spendTo } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'
import { createTestDatabase } from './fixtures/database.js'
import { startGatewayProcess, type GatewayProcess } from './fixtures/gateway-process.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }
type Gateway = Awaited<ReturnType<typeof buildGateway>>

async function page (gateway: Gateway, query: string) {
  await gateway.app.budgetDecisions.flush()
  return await gateway.app.inject({ url: `${PREFIX}/decisions?${query}`, headers: AUTH })
}

t.test('holds: a NUL in scopeId or budgetId is a 400, not a 5xx', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const r = await page(gateway, 'scopeType=team&scopeId=a%00b')
  t.equal(r.statusCode, 400, r.body)
  const r2 = await page(gateway, 'code=budget_exceeded&budgetId=' + encodeURIComponent('0b6f1c3e-0000-4000-8000-00000000000\u0000'))
  t.equal(r2.statusCode, 400, r2.body)
})

t.test('a from/to with sub-millisecond digits is read at its precision: to=…00.0009Z keeps a decision at …00.000Z, and from=…00.0001Z&to=…00.0009Z is a range', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const log = gateway.app.budgetDecisions
  log.note({ at: new Date('2026-01-01T00:00:00.000Z'), requestId: 'x', api: 'chat', outcome: 'refused', code: 'budget_exceeded', scopes: { team: 't' }, model: 'gpt-4o-mini', estimate: '0.1', currency: 'USD', budget: null })
  const r = await page(gateway, 'to=' + encodeURIComponent('2026-01-01T00:00:00.0009Z'))
  t.equal(r.statusCode, 200, r.body)
  t.equal(r.json().decisions.length, 1, 'at 00.000 is before to=00.0009')
  const r2 = await page(gateway, 'from=' + encodeURIComponent('2026-01-01T00:00:00.0001Z') + '&to=' + encodeURIComponent('2026-01-01T00:00:00.0009Z'))
  t.equal(r2.statusCode, 200, r2.body)
})

t.test('holds: an estimate_out_of_range refusal is stored (estimate in the call currency, no numeric overflow) and does not block later decisions', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const rate = await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/exchange-rates/USD/JPY`, headers: AUTH, body: { rate: '999999999999999999', effectiveFrom: '2024-01-01' } })
  t.equal(rate.statusCode, 201, rate.body)
  const hard = await gateway.createBudget({ name: 'yen team', currency: 'JPY', amount: '100000000000000000' })
  const refused = await gateway.call({ team: 'team-a' }, { model: 'gpt-4.1', max_tokens: 32_768, n: 8 })
  t.equal(refused.statusCode, 402, refused.body)
  const r = await page(gateway, '')
  t.equal(r.statusCode, 200, r.body)
  t.match(r.json().decisions[0], { code: 'estimate_out_of_range', estimate: '2.09717', currency: 'USD', budget: { id: hard.id, limit: '100000000000000000' } })
  const small = await gateway.createBudget({ name: 'small', scopeId: 'team-s', amount: '0.000001' })
  t.equal((await gateway.call({ team: 'team-s' }, { max_tokens: 2000 })).statusCode, 402)
  const r2 = await page(gateway, `budgetId=${small.id}`)
  t.equal(r2.json().decisions.length, 1, 'a later refusal is stored')
})

const BODIES = {
  chat: { url: '/v1/chat/completions', body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 2000 }, headers: {} },
  responses: { url: '/v1/responses', body: { model: 'gpt-4o-mini', input: 'Say hello', max_output_tokens: 2000 }, headers: {} },
  embeddings: { url: '/v1/embeddings', body: { model: 'text-embedding-3-small', input: ['Say hello '.repeat(200), 'and goodbye'] }, headers: {} },
  messages: { url: '/v1/messages', body: { model: 'claude-sonnet-4-5', max_tokens: 2000, messages: [{ role: 'user', content: 'Say hello' }] }, headers: { 'anthropic-version': '2023-06-01' } }
} as const

t.test('holds: all four APIs, a budget refusal and an unbudgeted refusal: one decision each, right api, exact binding numbers and estimate', async (t) => {
  for (const unbudgeted of ['allow', 'refuse'] as const) {
    const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0, unbudgeted }, upstream: true })
    const team = await gateway.createBudget({ name: 'team', scopeId: 'team-a', amount: '5' })
    const org = await gateway.createBudget({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '0.0000012345' })
    await spendTo(gateway.app, org.id, '0.0000012')
    await spendTo(gateway.app, team.id, '1.5')
    for (const [api, { url, body, headers }] of Object.entries(BODIES)) {
      const response = await gateway.app.inject({ method: 'POST', url, headers: { ...headers, 'x-relay-team-id': 'team-a', 'x-relay-organization-id': 'acme', authorization: 'Bearer sk-secret-123' }, body })
      t.equal(response.statusCode, 402, `${api} ${response.body}`)
      const r = await page(gateway, `budgetId=${org.id}&limit=1`)
      const [d] = r.json().decisions
      t.match(d, { api, outcome: 'refused', code: 'budget_exceeded', scopes: { team: 'team-a', organization: 'acme' }, model: body.model, estimate: (api === 'messages' ? response.json().error : response.json().error).budget.estimatedCost, budget: { id: org.id, name: 'org', limit: '0.0000012345', current: '0.0000012', reserved: '0' } }, api)
      const error = api === 'messages' ? response.json().error : response.json().error
      if (unbudgeted === 'refuse') {
        const u = await gateway.app.inject({ method: 'POST', url, headers: { ...headers, 'x-relay-team-id': 'nobody' }, body })
        t.equal(u.statusCode, 402, `${api} unbudgeted ${u.body}`)
        const [ud] = (await page(gateway, `code=no_applicable_budget&limit=1`)).json().decisions
        t.match(ud, { api, outcome: 'refused', code: 'no_applicable_budget', model: body.model, budget: null }, `${api} unbudgeted`)
      }
      void error
    }
    const all = await page(gateway, 'limit=1000')
    t.equal(all.json().decisions.length, unbudgeted === 'refuse' ? 8 : 4, 'once each')
    t.equal(new Set(all.json().decisions.map((d: any) => d.requestId)).size, all.json().decisions.length)
    await checkInvariants(t, gateway.sql)
  }
})

t.test('closing the plugin does not hang while the decision log table is locked (the insert and the sweep are bounded statements)', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 }, upstream: true })
  await gateway.createBudget({ name: 'small', scopeId: 'team-s', amount: '0.000001' })
  await gateway.createBudget({ name: 'big', scopeId: 'team-a', amount: '10' })
  const locker = postgres(gateway.url, { max: 1, onnotice: () => {} })
  let release!: () => void
  const released = new Promise<void>((resolve) => { release = resolve })
  const holding = locker.begin(async (tx) => {
    await tx`lock table budget_decision_log in access exclusive mode`
    await released
  })
  t.teardown(async () => { release(); await holding.catch(() => {}); await locker.end({ timeout: 1 }) })
  await new Promise((resolve) => setTimeout(resolve, 200))
  const started = Date.now()
  t.equal((await gateway.call({ team: 'team-s' }, { max_tokens: 2000 })).statusCode, 402, 'the refusal is answered though the log cannot be written')
  t.equal((await gateway.call({ team: 'team-a' })).statusCode, 200, 'a served call')
  t.ok(Date.now() - started < 3000, 'calls never wait for the log')
  void gateway.app.budgetDecisions.flush()
  const closing = gateway.app.close().then(() => 'closed')
  const outcome = await Promise.race([closing, new Promise((resolve) => setTimeout(() => resolve('still closing after 15 s'), 15_000))])
  const [usage] = await gateway.sql`select count(*)::int as n from budget_usage_allocations`
  t.equal(outcome, 'closed', 'closing the plugin ends in bounded time with the decision log table locked')
  t.equal(usage!.n, 1, 'the served call is settled by the time close should have ended')
  const held = await gateway.sql`select count(*)::int as n, coalesce(sum(amount), 0)::text as amount from budget_reservations`
  t.same(held[0], { n: 0, amount: '0' }, 'nothing is still held (leases given back) by the time close should have ended')
  release()
  await closing
})

t.test('holds: 40 concurrent calls on a tight budget: each refusal stored once, with limit - current - reserved < estimate', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 }, upstream: true, mockTokenDelayMs: 5 })
  const budget = await gateway.createBudget({ name: 'tight', scopeId: 'team-a', amount: '0.01' })
  const statuses = await Promise.all(Array.from({ length: 40 }, async () => (await gateway.call({ team: 'team-a' }, { max_tokens: 2000 })).statusCode))
  await gateway.settled()
  const refused = statuses.filter((s) => s === 402).length
  const rows = (await page(gateway, `budgetId=${budget.id}&limit=1000`)).json().decisions as any[]
  t.equal(rows.length, refused, `${refused} refusals, each once`)
  for (const d of rows) {
    const room = toUnits(d.budget.limit) - toUnits(d.budget.current) - toUnits(d.budget.reserved)
    t.ok(room < toUnits(d.estimate), `room ${fromUnits(room)} < estimate ${d.estimate as string} (current ${d.budget.current as string}, reserved ${d.budget.reserved as string})`)
  }
  await checkInvariants(t, gateway.sql)
})

t.test('holds: two gateway processes refusing at once while pages are read; SIGTERM flushes; one info line per refusal with no Authorization or prompt text', async (t) => {
  const url = await createTestDatabase(t)
  const sql = postgres(url, { onnotice: () => {} })
  t.teardown(async () => await sql.end())
  const PTOKEN = 'review-decisions-admin-token-0123456789'
  const procs: GatewayProcess[] = []
  const lines: string[][] = []
  for (let i = 0; i < 2; i++) {
    const g = await startGatewayProcess({ DATABASE_URL: url, ADMIN_TOKEN: PTOKEN, LOG_LEVEL: 'info' })
    procs.push(g)
    const mine: string[] = []
    lines.push(mine)
    let rest = ''
    g.child.stdout!.on('data', (data: Buffer) => { const parts = (rest + data.toString()).split('\n'); rest = parts.pop()!; mine.push(...parts) })
    t.teardown(async () => await g.stop())
  }
  const created = await fetch(`${procs[0]!.url}${PREFIX}`, { method: 'POST', headers: { authorization: `Bearer ${PTOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'team', scopeType: 'team', scopeId: 'platform', amount: '0.000001', currency: 'USD', period: 'monthly', startDate: '2024-01-01' }) })
  const budgetId = ((await created.json()) as { id: string }).id
  const N = 30
  const call = async (g: GatewayProcess, i: number) => (await fetch(`${g.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-relay-team-id': 'platform', 'x-relay-user-id': `u${i}`, authorization: 'Bearer sk-live-SECRETKEY123', 'x-relay-tags': 'env=prod' },
    body: JSON.stringify({ model: 'gpt-4o-mini', max_tokens: 500, messages: [{ role: 'user', content: `TOPSECRETPROMPT ${i}` }] })
  })).status
  // Read pages while both write.
  const seen = new Map<string, number>()
  let reading = true
  const reader = (async () => {
    while (reading) {
      let cursor: string | null = null
      do {
        const r = await fetch(`${procs[1]!.url}${PREFIX}/decisions?limit=7${cursor === null ? '' : `&cursor=${cursor}`}`, { headers: { authorization: `Bearer ${PTOKEN}` } })
        if (r.status !== 200) throw new Error(`${r.status} ${await r.text()}`)
        const body = await r.json() as { decisions: Array<{ id: string }>, nextCursor: string | null }
        cursor = body.nextCursor
      } while (cursor !== null)
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  })()
  const statuses = await Promise.all([...Array.from({ length: N }, async (_, i) => await call(procs[0]!, i)), ...Array.from({ length: N }, async (_, i) => await call(procs[1]!, N + i))])
  t.same([...new Set(statuses)], [402])
  reading = false
  await reader
  await Promise.all(procs.map(async (g) => await g.stop('SIGTERM')))
  t.same(procs.map((g) => g.child.exitCode), [0, 0], 'both exit 0')
  const rows = await sql`select request_id, user_id, budget_id::text as budget, budget_limit::text as lim, at, id from budget_decision_log order by at desc, id desc`
  t.equal(rows.length, 2 * N, 'every refusal of both processes is stored (close flushes)')
  t.equal(new Set(rows.map((r) => r.request_id)).size, rows.length, 'once each')
  t.equal(new Set(rows.map((r) => r.user_id)).size, 2 * N)
  t.ok(rows.every((r) => r.budget === budgetId))
  const refusalLines = lines.flat().filter((l) => l.includes('the gate refused a call'))
  t.equal(refusalLines.length, 2 * N, 'one info line per refusal')
  const all = lines.flat().join('\n')
  t.notMatch(all, /SECRETKEY/, 'no authorization in any log line')
  t.notMatch(all, /TOPSECRETPROMPT/, 'no prompt text in any log line')
  const one = JSON.parse(refusalLines[0]!)
  t.match(one, { level: 30, code: 'budget_exceeded', caller: { team: 'platform' }, model: 'gpt-4o-mini', budget: { id: budgetId, limit: '0.000001' } })
  void seen
})

t.test('holds: exchange_rate_missing, model_restricted, budget_blocked, approval_required each stored once with its budget; 401 without or with a wrong token', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 }, upstream: true })
  const euro = await gateway.createBudget({ name: 'euro', scopeId: 'team-eur', currency: 'EUR', amount: '5' })
  const restricted = await gateway.createBudget({ name: 'restricted', scopeId: 'team-r', amount: '1', alerts: [{ threshold: 10, actions: ['restrict-models'], allowedModels: ['gpt-4o'] }] })
  await spendTo(gateway.app, restricted.id, '0.5')
  const blocked = await gateway.createBudget({ name: 'blocked', scopeId: 'team-b', amount: '1', alerts: [{ threshold: 10, actions: ['block-all'] }] })
  await spendTo(gateway.app, blocked.id, '0.5')
  const approval = await gateway.createBudget({ name: 'approval', scopeId: 'team-p', amount: '1', alerts: [{ threshold: 10, actions: ['require-approval'] }] })
  await spendTo(gateway.app, approval.id, '0.5')
  const cases = [['team-eur', euro.id, 'exchange_rate_missing', 503], ['team-r', restricted.id, 'model_restricted', 402], ['team-b', blocked.id, 'budget_blocked', 402], ['team-p', approval.id, 'approval_required', 402]] as const
  for (const [team, id, code, status] of cases) {
    const response = await gateway.call({ team })
    t.equal(response.statusCode, status, response.body)
    const rows = (await page(gateway, `budgetId=${id}`)).json().decisions
    t.equal(rows.length, 1, code)
    t.match(rows[0], { code, outcome: 'refused', budget: { id } }, code)
  }
  t.equal((await gateway.app.inject({ url: `${PREFIX}/decisions` })).statusCode, 401)
  t.equal((await gateway.app.inject({ url: `${PREFIX}/decisions`, headers: { authorization: `Bearer ${ADMIN_TOKEN}x` } })).statusCode, 401)
  t.equal((await gateway.app.inject({ url: `${PREFIX}/decisions?limit=0` })).statusCode, 401, 'auth before validation')
})

t.test('a refused call whose model name carries a NUL is stored under its storable name, and a decision PostgreSQL refuses costs only itself', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 }, upstream: true })
  await gateway.createBudget({ name: 'small', scopeId: 'team-a', amount: '0.000001' })
  const messages = async (model: string) => await gateway.app.inject({
    method: 'POST', url: '/v1/messages', headers: { 'anthropic-version': '2023-06-01', 'x-relay-team-id': 'team-a' },
    body: { model, max_tokens: 50, messages: [{ role: 'user', content: 'Say hello' }] }
  })
  const hostile = await messages('claude-sonnet-4-5\u0000')
  t.equal(hostile.statusCode, 402, `the NUL-suffixed name is priced as claude-sonnet-4-5 and refused: ${hostile.body.slice(0, 200)}`)
  await gateway.app.budgetDecisions.flush()
  // Ordinary refusals afterwards, on two APIs.
  t.equal((await messages('claude-sonnet-4-5')).statusCode, 402)
  t.equal((await gateway.call({ team: 'team-a' }, { max_tokens: 2000 })).statusCode, 402)
  await gateway.app.budgetDecisions.flush()
  const rows = await gateway.sql<Array<{ model: string }>>`select model from budget_decision_log order by id`
  t.same(rows.map((row) => row.model), ['claude-sonnet-4-5', 'claude-sonnet-4-5', 'gpt-4o-mini'], 'all three refusals stored, the first without its NUL')
  // A decision that reaches the log unstorable (noted directly, past the gate's cleaning) is dropped alone.
  const base = { at: new Date(), api: 'messages' as const, outcome: 'refused' as const, code: 'budget_exceeded', scopes: {}, estimate: '1', currency: 'USD', budget: null }
  gateway.app.budgetDecisions.note({ ...base, requestId: 'before', model: 'a' })
  gateway.app.budgetDecisions.note({ ...base, requestId: 'poison', model: 'b\u0000' })
  gateway.app.budgetDecisions.note({ ...base, requestId: 'after', model: 'c' })
  await gateway.app.budgetDecisions.flush()
  gateway.app.budgetDecisions.note({ ...base, requestId: 'later', model: 'd' })
  await gateway.app.budgetDecisions.flush()
  const stored = await gateway.sql<Array<{ requestId: string }>>`select request_id as "requestId" from budget_decision_log where request_id in ('before', 'poison', 'after', 'later') order by id`
  t.same(stored.map((row) => row.requestId), ['before', 'after', 'later'], 'the batch is written one by one, the refused one dropped, later batches written')
  const metrics = await gateway.app.inject({ url: `${PREFIX}/metrics`, headers: AUTH })
  const counters = metrics.body.split('\n').filter((line) => line.startsWith('relaycore_budget_decision_log_'))
  t.same(counters, ['relaycore_budget_decision_log_dropped_total 1', 'relaycore_budget_decision_log_written_total 6'], 'one dropped and counted, six written')
  await checkInvariants(t, gateway.sql)
})


t.test('holds: the retention sweep deletes only decisions older than retentionDays (30), across more than one batch', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const log = gateway.app.budgetDecisions
  const day = 24 * 60 * 60_000
  const base = { requestId: 'r', api: 'chat' as const, outcome: 'refused' as const, code: 'budget_exceeded', scopes: { team: 't' }, model: 'gpt-4o-mini', estimate: '0.1', currency: 'USD', budget: null }
  for (let i = 0; i < 1203; i++) log.note({ ...base, requestId: `old-${i}`, at: new Date(Date.now() - 30 * day - 60_000 - i) })
  for (let i = 0; i < 7; i++) log.note({ ...base, requestId: `new-${i}`, at: new Date(Date.now() - 30 * day + 60_000 + i) })
  await log.flush()
  t.equal(await log.sweep(), 1203)
  const left = await gateway.sql`select request_id from budget_decision_log order by request_id`
  t.same(left.map((row) => row.request_id), Array.from({ length: 7 }, (_, i) => `new-${i}`))
})

t.test('holds: downgraded then refused is one refused decision with the cheaper model, requestedModel and the refusal\'s estimate', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 }, upstream: true })
  const d = await gateway.createBudget({ name: 'downgrading', scopeId: 'team-d', amount: '1', alerts: [{ threshold: 50, actions: ['auto-downgrade'] }] })
  await spendTo(gateway.app, d.id, '0.9999')
  const refused = await gateway.call({ team: 'team-d' }, { model: 'gpt-4o', max_tokens: 8000 })
  t.equal(refused.statusCode, 402)
  const rows = (await page(gateway, `budgetId=${d.id}`)).json().decisions
  t.equal(rows.length, 1)
  t.match(rows[0], { outcome: 'refused', code: 'budget_exceeded', model: 'gpt-4o-mini', requestedModel: 'gpt-4o', estimate: refused.json().error.budget.estimatedCost, budget: { limit: '1', current: '0.9999', reserved: '0' } })
})
