// The spend promise against what real upstreams and careless clients do: every served call charged
// once, no hard budget overspent, no hold left behind. Each test pins one defect that was observed.
import Fastify from 'fastify'
import postgres from 'postgres'
import t from 'tap'
import budgets from '../lib/index.js'
import { compareMoney, fromUnits, toUnits } from '../lib/kernel/money.js'
import { ADMIN_TOKEN, PREFIX, buildApp } from './fixtures/app.js'
import { createTestDatabase } from './fixtures/database.js'
import { buildGateway } from './fixtures/gateway.js'

const SNAPSHOT = 'gpt-4o-mini-2024-07-18'

/** gpt-4o-mini at 0.15 and 0.6 per 1M tokens, rounded up to 10 decimals, as the gate prices it. */
function miniCost (input: number, output: number): string {
  return fromUnits((BigInt(input) * 1_500_000_000n + BigInt(output) * 6_000_000_000n + 999_999n) / 1_000_000n)
}

t.test('an upstream that answers with a dated snapshot name is charged at the base model\'s price, plain and streamed', async (t) => {
  const { app, createBudget, status, settled, sql } = await buildGateway(t, {
    routes: (app) => {
      app.post('/v1/dated', { config: { budgetGate: 'chat' } }, async () => ({ model: SNAPSHOT, choices: [], usage: { prompt_tokens: 120, completion_tokens: 30 } }))
      app.post('/v1/dated-stream', { config: { budgetGate: 'chat' } }, async (request, reply) => {
        reply.hijack()
        reply.raw.writeHead(200, { 'content-type': 'text/event-stream' })
        request.budgetGate!.reportUsage({ model: SNAPSHOT, inputTokens: 120, outputTokens: 30 })
        reply.raw.end('data: [DONE]\n\n')
      })
    }
  })
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1' })
  for (const url of ['/v1/dated', '/v1/dated-stream']) {
    const response = await app.inject({ method: 'POST', url, headers: { 'x-relay-team-id': 'platform' }, body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: 50 } })
    t.equal(response.statusCode, 200, url)
  }
  await settled()
  const records = await sql`select amount::text as amount, metadata from budget_usage_records order by occurred_at`
  t.equal(records.length, 2, 'both calls were recorded: neither was free')
  for (const record of records) {
    t.equal(compareMoney(record.amount as string, miniCost(120, 30)), 0, 'at gpt-4o-mini\'s price for the tokens used')
    t.match(record.metadata, { modelId: 'gpt-4o-mini', upstreamModel: SNAPSHOT, costBasis: 'usage' })
  }
  t.equal((await status(team.id)).currentAmount, fromUnits(toUnits(miniCost(120, 30)) * 2n))
})

t.test('a served call that cannot be priced, or that brings no usage, is charged at its estimate', async (t) => {
  const { app, createBudget, settled, sql } = await buildGateway(t, {
    routes: (app) => {
      app.post('/v1/odd-model', { config: { budgetGate: 'chat' } }, async () => ({ model: 'some-model-nobody-prices', usage: { prompt_tokens: 5, completion_tokens: 5 } }))
      app.post('/v1/no-usage', { config: { budgetGate: 'chat' } }, async () => ({ model: 'gpt-4o-mini', choices: [] }))
    }
  })
  await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1' })
  for (const url of ['/v1/odd-model', '/v1/no-usage']) {
    const response = await app.inject({ method: 'POST', url, headers: { 'x-relay-team-id': 'platform' }, body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: 50 } })
    t.equal(response.statusCode, 200)
  }
  await settled()
  const records = await sql`select amount::text as amount, metadata from budget_usage_records order by occurred_at`
  t.equal(records.length, 2)
  t.match(records[0]!.metadata, { costBasis: 'estimate', estimateReason: 'unpriced-model', upstreamModel: 'some-model-nobody-prices' })
  t.match(records[1]!.metadata, { costBasis: 'estimate', estimateReason: 'no-usage' })
  t.equal(compareMoney(records[0]!.amount as string, (records[0]!.metadata as { estimatedCost: string }).estimatedCost), 0, 'charged exactly its estimate')
  t.equal(compareMoney(records[1]!.amount as string, (records[1]!.metadata as { estimatedCost: string }).estimatedCost), 0)
})

t.test('n: 8 with max_tokens: 1000 no longer fits a hard budget of 0.02: every choice is in the estimate', async (t) => {
  const { app, createBudget, status, settled } = await buildGateway(t, {
    // An upstream that bills n answers of max_tokens each, as OpenAI does.
    routes: (app) => app.post('/v1/choices', { config: { budgetGate: 'chat' } }, async (request) => {
      const body = request.body as { n?: number, max_tokens: number }
      return { model: 'gpt-4o', usage: { prompt_tokens: 10, completion_tokens: (body.n ?? 1) * body.max_tokens } }
    })
  })
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '0.02' })
  const call = async (n: number) => await app.inject({
    method: 'POST', url: '/v1/choices', headers: { 'x-relay-team-id': 'platform' }, body: { model: 'gpt-4o', messages: [{ role: 'user', content: 'Write' }], max_tokens: 1000, n }
  })
  const eight = await call(8)
  t.equal(eight.statusCode, 402, 'eight answers (0.08) are refused')
  t.equal(eight.json().error.code, 'budget_exceeded')
  const one = await call(1)
  t.equal(one.statusCode, 200, 'one answer (0.01) fits')
  await settled()
  const { currentAmount, limit } = await status(team.id)
  t.equal(compareMoney(currentAmount, limit), -1, `spent ${currentAmount} of ${limit}`)
})

t.test('a call reserved before a period boundary and settled after it is charged to the period it was reserved in', async (t) => {
  const { app } = await buildApp(t, { gate: {} })
  // Recurring custom windows of 3 s; start the budget on a boundary a little in the past.
  const windowMs = 3000
  const start = Math.floor(Date.now() / windowMs) * windowMs - 10 * windowMs
  const budget = await app.budgetRegistry.createBudget({
    name: 'short windows', scopeType: 'team', scopeId: 'platform', amount: '1', currency: 'USD', period: 'custom',
    startDate: new Date(start), endDate: new Date(start + windowMs), recurring: true
  })
  // Reserve early in a window, so the settlement lands in the next one.
  const untilNext = windowMs - ((Date.now() - start) % windowMs)
  if (untilNext < 1500) await new Promise((resolve) => setTimeout(resolve, untilNext + 50))
  const reservation = await app.budgetIntegration.reserveCall({ team: 'platform' }, '0.9')
  t.not(reservation.reservationId, null, 'the whole window had room')
  const reservedIn = (await app.budgetTracker.getBudgetStatus(budget.id)).periodStart
  await new Promise((resolve) => setTimeout(resolve, windowMs - ((Date.now() - start) % windowMs) + 100))

  // The new window is empty: a call takes most of it, then the late settlement of the first arrives.
  const next = await app.budgetIntegration.reserveCall({ team: 'platform' }, '0.9')
  t.not(next.reservationId, null)
  await app.budgetIntegration.settleCall(reservation.reservationId!, '0.9')
  await app.budgetIntegration.settleCall(next.reservationId!, '0.9')

  const rows = await app.budgetTracker.getUsageHistory(budget.id, { from: new Date(start).toISOString(), to: new Date(Date.now() + windowMs).toISOString() })
  t.equal(rows.records.length, 2)
  const nowStatus = await app.budgetTracker.getBudgetStatus(budget.id)
  t.not(nowStatus.periodStart, reservedIn, 'a new window began')
  t.equal(nowStatus.currentAmount, '0.9', 'the new window holds only its own call: 90% of its limit, not 180%')
  const [first] = rows.records.filter((record) => record.occurredAt < nowStatus.periodStart)
  t.ok(first !== undefined && first.occurredAt >= reservedIn, 'the late call is in the window it was reserved in')
})

t.test('a non-recurring budget without an end date: after its only period it answers as ended, never 500', async (t) => {
  const { admin } = await buildApp(t)
  const created = await admin({ method: 'POST', url: PREFIX, body: { name: 'once', scopeType: 'team', scopeId: 'once', amount: '10', currency: 'USD', period: 'monthly', startDate: '2024-01-01', recurring: false } })
  const id = created.json().id as string
  const status = await admin({ url: `${PREFIX}/${id}/status` })
  t.equal(status.statusCode, 200)
  t.match(status.json(), { state: 'ended', periodStart: '2024-01-01T00:00:00.000Z', periodEnd: '2024-02-01T00:00:00.000Z', currentAmount: '0', daysRemaining: 0 })
  for (const [method, url] of [['POST', 'refresh-cache'], ['GET', 'alerts'], ['GET', 'approvals'], ['GET', 'usage'], ['GET', 'usage/summary']] as const) {
    t.equal((await admin({ method, url: `${PREFIX}/${id}/${url}` })).statusCode, 200, `${method} ${url}`)
  }
  const approval = await admin({ method: 'POST', url: `${PREFIX}/${id}/approvals`, body: { amount: '5' } })
  t.equal(approval.statusCode, 409, 'nothing to approve in a period that is over')
  t.equal(approval.json().code, 'BUDGET_ERR_NOT_ACTIVE')
})

t.test('periods come out the same whatever the session\'s TimeZone: a custom period across a DST change, read in America/New_York', async (t) => {
  const url = await createTestDatabase(t)
  // The host's own client, set to a zone with daylight saving; the plugin must not depend on it.
  const sql = postgres(url, { onnotice: () => {}, connection: { TimeZone: 'America/New_York' } })
  t.teardown(async () => await sql.end({ timeout: 1 }))
  const app = Fastify()
  await app.register(budgets, { database: sql, adminToken: ADMIN_TOKEN })
  await app.ready()
  t.teardown(async () => await app.close())
  const [session] = await sql<Array<{ zone: string }>>`select current_setting('TimeZone') as zone`
  t.equal(session!.zone, 'America/New_York')
  // 31-day windows from 2024-02-10: the second one crosses the US change on 2024-03-10.
  const windows = await sql<Array<{ start: Date, end: Date }>>`
    select period_start as start, period_end as end
    from budget_period_window('custom', '2024-02-10T00:00:00Z', '2024-03-12T00:00:00Z', true, ${'2024-04-01T00:00:00Z'}::timestamptz, 'UTC', 1, 'start')`
  t.same(windows.map((w) => [w.start.toISOString(), w.end.toISOString()]), [['2024-03-12T00:00:00.000Z', '2024-04-12T00:00:00.000Z']], 'exactly 31 x 24 hours from the anchor, in UTC')
  const budget = await app.budgetRegistry.createBudget({
    name: 'custom', scopeType: 'team', scopeId: 't', amount: '1', currency: 'USD', period: 'custom', startDate: '2024-01-01T00:00:00Z', endDate: '2024-01-31T00:00:00Z'
  })
  const status = await app.budgetTracker.getBudgetStatus(budget.id)
  const days = (Date.parse(status.periodStart) - Date.parse('2024-01-01T00:00:00Z')) / 86_400_000
  t.ok(Number.isInteger(days / 30), `the current window starts a whole number of 30-day periods after the anchor (${status.periodStart})`)
  const [declared] = await sql<Array<{ volatility: string }>>`select provolatile as volatility from pg_proc where proname = 'budget_period_window'`
  t.equal(declared!.volatility, 'i', 'declared immutable, and now it is')
})

t.test('authorize fails closed: only true or an actor\'s name allows', async (t) => {
  let verdict: unknown
  const { app } = await buildApp(t, { adminToken: undefined, authorize: () => verdict as boolean })
  const body = { name: 'b', scopeType: 'team', scopeId: 't', amount: '10', currency: 'USD', period: 'monthly', startDate: '2024-01-01' }
  for (const refusing of [undefined, null, 0, '', '   ', {}, [], 1, 'x\u0000y', false, Promise.resolve(undefined)]) {
    verdict = refusing
    const response = await app.inject({ method: 'POST', url: PREFIX, body })
    t.equal(response.statusCode, 401, `${JSON.stringify(refusing) ?? String(refusing)} refuses`)
  }
  t.same(await app.budgetRegistry.getBudgetsByScope('team', 't'), [], 'and nothing was created')
  verdict = true
  t.equal((await app.inject({ method: 'POST', url: PREFIX, body })).json().createdBy, 'admin')
  verdict = 'alice@example.com'
  t.equal((await app.inject({ method: 'POST', url: PREFIX, body })).json().createdBy, 'alice@example.com')
})
