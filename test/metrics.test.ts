// Prometheus metrics: the gate's counters and histograms as calls happen, the chosen budgets' gauges
// read from the status cache when scraped (bounded: marked budgets and the top spenders), behind the
// admin authorization; and the example gateway's /metrics, merged with the process's own.
import t from 'tap'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { createTestDatabase } from './fixtures/database.js'
import { buildGateway } from './fixtures/gateway.js'
import { startGatewayProcess } from './fixtures/gateway-process.js'

type Gateway = Awaited<ReturnType<typeof buildGateway>>

/** The scrape, as { 'name{labels}': value }. */
async function scrape (gateway: Pick<Gateway, 'app'>): Promise<Map<string, number>> {
  const response = await gateway.app.inject({ url: `${PREFIX}/metrics`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
  if (response.statusCode !== 200) throw new Error(`scrape answered ${response.statusCode}: ${response.body}`)
  const samples = new Map<string, number>()
  for (const line of response.body.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const at = line.lastIndexOf(' ')
    samples.set(line.slice(0, at), Number(line.slice(at + 1)))
  }
  return samples
}

const series = (samples: Map<string, number>, name: string) => [...samples.keys()].filter((key) => key === name || key.startsWith(`${name}{`))

t.test('the gate counts its decisions by outcome and code, and times reservations and settlements', async (t) => {
  const gateway = await buildGateway(t)
  await gateway.createBudget({ scopeId: 'team-a', amount: '0.001' })
  t.equal((await gateway.call({ team: 'team-a' })).statusCode, 200)
  t.equal((await gateway.call({ team: 'team-a' }, { model: 'gpt-4o', max_tokens: 4000 })).statusCode, 402)
  t.equal((await gateway.call({ team: 'bad id' })).statusCode, 400)
  t.equal((await gateway.call({ team: 'team-a' }, { model: 'no-such-model' })).statusCode, 400)
  await gateway.settled()
  const samples = await scrape(gateway)
  t.equal(samples.get('relaycore_budget_gate_decisions_total{outcome="allowed",code=""}'), 1)
  t.equal(samples.get('relaycore_budget_gate_decisions_total{outcome="refused",code="budget_exceeded"}'), 1)
  t.equal(samples.get('relaycore_budget_gate_decisions_total{outcome="invalid",code="invalid_scope"}'), 1)
  t.equal(samples.get('relaycore_budget_gate_decisions_total{outcome="invalid",code="model_not_priced"}'), 1)
  t.equal(samples.get('relaycore_budget_gate_reservation_seconds_count'), 2, 'two calls reached a decision on budgets')
  t.equal(samples.get('relaycore_budget_gate_settlement_seconds_count'), 1, 'one admitted call settled')
  t.equal(samples.get('relaycore_budget_gate_live_reservations'), 0, 'none in flight once settled')
})

t.test('budget gauges: marked budgets and the top spenders, from the status cache, with the status\'s numbers', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const marked = await gateway.createBudget({ name: 'marked', scopeId: 'marked', amount: '50', metrics: true })
  const others: Array<{ id: string }> = []
  for (let i = 0; i < 12; i++) {
    const budget = await gateway.createBudget({ name: `team ${i}`, scopeId: `team-${i}`, amount: '100' })
    await gateway.app.budgetTracker.recordUsage({ budgetId: budget.id, amount: String(i + 1), currency: 'USD', source: 'test' })
    others.push(budget)
  }
  const samples = await scrape(gateway)
  const spend = series(samples, 'relaycore_budget_spend')
  t.equal(spend.length, 11, 'the 10 top spenders and the marked budget: never a series per caller')
  t.ok(spend.some((key) => key.includes(`budget_id="${marked.id}"`)), 'the marked budget, though it spent nothing')
  t.notOk(spend.some((key) => key.includes(`budget_id="${others[0]!.id}"`) || key.includes(`budget_id="${others[1]!.id}"`)), 'the two smallest spenders are left out')
  const top = spend.find((key) => key.includes(`budget_id="${others[11]!.id}"`))!
  t.match(top, /budget_name="team 11",scope_type="team",scope_id="team-11",currency="USD"/)
  const status = await gateway.status(others[11]!.id)
  t.equal(samples.get(top), Number(status.currentAmount), 'the spend gauge says what status says')
  t.equal(samples.get(top.replace('relaycore_budget_spend', 'relaycore_budget_limit')), 100)
  t.equal(samples.get(top.replace('relaycore_budget_spend', 'relaycore_budget_remaining')), Number(status.remaining))
  const reset = samples.get(top.replace('relaycore_budget_spend', 'relaycore_budget_seconds_to_reset'))!
  t.ok(Math.abs(reset - (Date.parse(status.periodEnd) - Date.now()) / 1000) < 5, 'seconds to the window\'s end')
  // A budget that stops being marked and spends nothing leaves the next scrape.
  await gateway.app.budgetRegistry.updateBudget(marked.id, { metrics: false })
  t.notOk(series(await scrape(gateway), 'relaycore_budget_spend').some((key) => key.includes(marked.id)), 'gone once unmarked')
})

t.test('the scrape is behind the admin authorization; a bad topBudgets fails at start', async (t) => {
  const gateway = await buildGateway(t)
  t.equal((await gateway.app.inject({ url: `${PREFIX}/metrics` })).statusCode, 401)
  t.equal((await gateway.app.inject({ url: `${PREFIX}/metrics`, headers: { authorization: 'Bearer wrong-token-wrong-token' } })).statusCode, 401)
  const { default: Fastify } = await import('fastify')
  const { default: budgets } = await import('../lib/index.js')
  for (const topBudgets of [-1, 1.5, 1001]) {
    const app = Fastify()
    const failure = await (async () => { await app.register(budgets, { database: gateway.url, adminToken: ADMIN_TOKEN, metrics: { topBudgets } }).ready() })().then(() => null, (error: Error) => error.message)
    t.match(failure, /metrics.topBudgets/, `topBudgets ${topBudgets} refused at start`)
    await app.close()
  }
})

t.test('notifications delivered and failed, and the sweeper\'s runs, are counted', async (t) => {
  let failNext = true
  const gateway = await buildGateway(t, {
    gate: { sweepIntervalMs: 50 },
    notifications: { channels: { ops: { deliver: async () => { if (failNext) { failNext = false; throw new Error('ops is down') } } } }, backoffMs: 0 }
  })
  const budget = await gateway.createBudget({ scopeId: 'team-a', amount: '10', alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['ops'] }] })
  await gateway.app.budgetTracker.recordUsage({ budgetId: budget.id, amount: '6', currency: 'USD', source: 'test' })
  await gateway.app.budgetNotifications.deliverDue()
  await gateway.app.budgetNotifications.deliverDue()
  await new Promise((resolve) => setTimeout(resolve, 300))
  const samples = await scrape(gateway)
  t.equal(samples.get('relaycore_budget_notifications_total{outcome="failed"}'), 1)
  t.equal(samples.get('relaycore_budget_notifications_total{outcome="delivered"}'), 1)
  t.ok((samples.get('relaycore_budget_sweeper_runs_total') ?? 0) >= 1, 'the sweeper ran')
  t.equal(samples.get('relaycore_budget_sweeper_swept_total'), 0, 'and found nothing expired')
})

t.test('the example gateway serves /metrics: its process\'s metrics and the budgets\', with the admin token', async (t) => {
  const gateway = await startGatewayProcess({ DATABASE_URL: await createTestDatabase(t), ADMIN_TOKEN, MOCK_TOKEN_DELAY_MS: '1', GATEWAY_KEYS: undefined })
  t.teardown(async () => await gateway.stop())
  t.equal((await fetch(`${gateway.url}/metrics`)).status, 401, 'no token: refused')
  const response = await fetch(`${gateway.url}/metrics`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
  t.equal(response.status, 200)
  t.match(response.headers.get('content-type'), /^text\/plain/)
  const text = await response.text()
  t.match(text, /process_cpu_user_seconds_total/, 'the process\'s own metrics')
  t.match(text, /relaycore_budget_gate_live_reservations/, 'and the plugin\'s, merged')
})

t.test('the remaining gauge is the status\'s remaining, never below 0, for a budget spent past its amount (issue 22)', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const over = await gateway.createBudget({ name: 'over', scopeId: 'over', amount: '10', enforcement: 'soft', metrics: true })
  await gateway.app.budgetTracker.recordUsage({ budgetId: over.id, amount: '15.5', currency: 'USD', source: 'test' })
  const status = await gateway.status(over.id)
  t.equal(status.remaining, '0', 'the API says 0')
  const samples = await scrape(gateway)
  const remaining = series(samples, 'relaycore_budget_remaining').find((key) => key.includes(`budget_id="${over.id}"`))!
  t.equal(samples.get(remaining), 0, 'the gauge says 0 too, not -5.5')
  t.equal(samples.get(remaining.replace('relaycore_budget_remaining', 'relaycore_budget_spend')), 15.5)
})
