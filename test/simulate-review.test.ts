// Adversarial review of the what-if replay (POST {prefix}/simulate): a proposal's locks and the live gate.
import t from 'tap'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }

t.test('a replay with a proposal does not stall the live gate on the budget it changes', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const budget = await gateway.createBudget({ name: 'team a', amount: '1000', alerts: [{ threshold: 50, actions: ['notify'] }] })
  const first = await gateway.call({ team: 'team-a' })
  t.equal(first.statusCode, 200)
  await gateway.settled()
  // many recorded calls (copies of the real one, already allocated), so the replay runs for a while
  await gateway.sql`
    insert into budget_usage_records (budget_id, amount, currency, source, description, metadata, idempotency_key, also_counts_toward, occurred_at, recorded_at, allocated_by_settlement)
    select u.budget_id, u.amount, u.currency, u.source, u.description, u.metadata, gen_random_uuid()::text, u.also_counts_toward,
           now() - interval '50 minutes' + (g * interval '10 milliseconds'), now(), true
    from budget_usage_records u, generate_series(1, 200000) g`
  const from = new Date(Date.now() - 3_600_000).toISOString()
  const to = new Date(Date.now() + 1000).toISOString()

  const started = Date.now()
  let simulationMs = 0
  const simulation = gateway.app.inject({ method: 'POST', url: `${PREFIX}/simulate`, headers: AUTH, body: { from, to, proposal: { update: [{ id: budget.id, changes: { amount: '999' } }] } } })
    .then((response) => { simulationMs = Date.now() - started; return response })
  await new Promise((resolve) => setTimeout(resolve, 500))
  const gateStarted = Date.now()
  const live = await gateway.call({ team: 'team-a' })
  const gateMs = Date.now() - gateStarted
  const response = await simulation
  t.equal(response.statusCode, 200, response.body)
  t.equal(live.statusCode, 200)
  t.ok(simulationMs > 1000, `the replay ran long enough to matter (${simulationMs} ms)`)
  t.ok(gateMs < 500, `a live call on the budget answered at once while the replay ran (${gateMs} ms; the replay took ${simulationMs} ms)`)
})
