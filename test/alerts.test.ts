// Thresholds, the five actions, alert history, approvals and delivered notifications.
import Fastify from 'fastify'
import OpenAI from 'openai'
import t from 'tap'
import { compareMoney, fromUnits, toUnits } from '../lib/kernel/money.js'
import { percentReached } from '../lib/usage/status-rules.js'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway, spendTo } from './fixtures/gateway.js'

const admin = { authorization: `Bearer ${ADMIN_TOKEN}` }
const ladder = [
  { threshold: 50, actions: ['notify'], notificationChannels: ['ops'] },
  { threshold: 75, actions: ['auto-downgrade'], notificationChannels: ['ops'] },
  { threshold: 90, actions: ['require-approval'], notificationChannels: ['ops'] },
  { threshold: 100, actions: ['block-all'], notificationChannels: ['ops'] }
]

t.test('the ladder: before, at and after each threshold', async (t) => {
  const gateway = await buildGateway(t)
  const { app, call, createBudget, settled, sql } = gateway
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1', alerts: ladder })
  const history = async () => (await sql`select threshold::int as threshold from budget_alert_history order by threshold`).map((row) => row.threshold as number)
  const gpt4o = { model: 'gpt-4o', max_tokens: 10 }

  // 50% notify
  await spendTo(app, team.id, '0.4999999')
  t.equal((await call({ team: 'platform' }, gpt4o)).statusCode, 200, 'before 50%: allowed')
  await settled()
  t.same(await history(), [50], 'that call crossed 50%: one crossing recorded')
  const after50 = await call({ team: 'platform' }, gpt4o)
  t.equal(after50.statusCode, 200, 'after 50%: notify only, still allowed')
  t.equal(after50.json().model, 'gpt-4o')
  await settled()
  t.same(await history(), [50], 'and recorded once, not per call')

  // 75% auto-downgrade
  await spendTo(app, team.id, '0.7499999')
  t.equal((await call({ team: 'platform' }, gpt4o)).json().model, 'gpt-4o', 'before 75%: the model asked for')
  await settled()
  t.same(await history(), [50, 75], 'crossed 75%')
  const downgraded = await call({ team: 'platform' }, gpt4o)
  t.equal(downgraded.statusCode, 200)
  t.equal(downgraded.json().model, 'gpt-4o-mini', 'after 75%: the cheaper model answered')
  t.equal(downgraded.headers['x-budget-downgraded-from'], 'gpt-4o')
  await settled()
  const [usage] = await sql`select metadata from budget_usage_records where metadata->>'requestedModel' is not null`
  t.match(usage!.metadata, { modelId: 'gpt-4o-mini', requestedModel: 'gpt-4o' }, 'the usage record shows the model used')

  // 90% require-approval
  await spendTo(app, team.id, '0.8999999')
  t.equal((await call({ team: 'platform' }, gpt4o)).statusCode, 200, 'before 90%: allowed')
  await settled()
  t.same(await history(), [50, 75, 90])
  const refused = await call({ team: 'platform' }, gpt4o)
  t.equal(refused.statusCode, 402, 'after 90%: refused')
  t.equal(refused.json().error.code, 'approval_required')

  const approval = await app.inject({ method: 'POST', url: `${PREFIX}/${team.id}/approvals`, headers: admin, body: { amount: '0.00002', reason: 'release week' } })
  t.equal(approval.statusCode, 201)
  t.match(approval.json(), { amount: '0.00002', approvedBy: 'admin', reason: 'release week' })
  const small = { model: 'gpt-4o-mini', max_tokens: 10 } // about 0.0000069 estimated each
  const afterApproval = []
  for (let i = 0; i < 5; i++) {
    afterApproval.push((await call({ team: 'platform' }, small)).statusCode)
    await settled()
  }
  t.same(afterApproval.slice(0, 2), [200, 200], 'the approval lets calls through again')
  t.equal(afterApproval.at(-1), 402, 'for its amount and no further')
  t.ok(afterApproval.filter((status) => status === 200).length <= 3, '0.00002 holds at most three such estimates')

  // 100% block-all
  await spendTo(app, team.id, '1')
  t.same(await history(), [50, 75, 90, 100], 'crossed 100%')
  const blocked = await call({ team: 'platform' }, small)
  t.equal(blocked.statusCode, 402)
  t.equal(blocked.json().error.code, 'budget_blocked', 'block-all is the strictest action')

  const raised = await app.inject({ method: 'PUT', url: `${PREFIX}/${team.id}`, headers: admin, body: { amount: '100' } })
  t.equal(raised.statusCode, 200)
  t.equal((await call({ team: 'platform' }, small)).statusCode, 200, 'an admin change to the budget lifts it')
})

t.test('restrict-models: models outside the list are refused with the allowed ones named', async (t) => {
  const { app, call, createBudget, settled } = await buildGateway(t)
  const team = await createBudget({
    scopeType: 'team', scopeId: 'platform', amount: '1',
    alerts: [{ threshold: 60, actions: ['restrict-models'], allowedModels: ['gpt-4o-mini', 'gpt-4.1-nano'] }]
  })
  await spendTo(app, team.id, '0.5999999')
  t.equal((await call({ team: 'platform' }, { model: 'gpt-4o' })).statusCode, 200, 'before: any model; this call crosses 60%')
  await settled()
  const refused = await call({ team: 'platform' }, { model: 'gpt-4o' })
  t.equal(refused.statusCode, 402)
  t.match(refused.json().error, { code: 'model_restricted', message: /gpt-4.1-nano, gpt-4o-mini/, allowedModels: ['gpt-4.1-nano', 'gpt-4o-mini'] })
  t.equal((await call({ team: 'platform' }, { model: 'gpt-4o-mini' })).statusCode, 200, 'an allowed model goes through')
})

t.test('restrict-models by price: a cap per 1M output tokens', async (t) => {
  const { app, call, createBudget } = await buildGateway(t)
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1', alerts: [{ threshold: 10, actions: ['restrict-models'], allowedModels: [], maxPricePerMillion: '1' }] })
  await spendTo(app, team.id, '0.2')
  t.equal((await call({ team: 'platform' }, { model: 'gpt-4.1' })).json().error.code, 'model_restricted', '8 per 1M is over the cap')
  t.equal((await call({ team: 'platform' }, { model: 'gpt-4.1-nano' })).statusCode, 200, '0.4 per 1M is under it')
})

t.test('alert history: list, acknowledge, and status shows the crossings', async (t) => {
  const { app, createBudget } = await buildGateway(t)
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1', alerts: ladder })
  await spendTo(app, team.id, '0.8')
  const listed = await app.inject({ url: `${PREFIX}/${team.id}/alerts`, headers: admin })
  t.equal(listed.statusCode, 200)
  const alerts = listed.json().alerts
  t.same(alerts.map((a: { threshold: number }) => a.threshold), [75, 50])
  t.match(alerts[0], { basis: 'current', actions: ['auto-downgrade'], spent: '0.8', limit: '1', acknowledgedBy: null, deliveries: [{ channel: 'ops', status: 'pending', attempts: 0 }] })
  const acknowledged = await app.inject({ method: 'POST', url: `${PREFIX}/${team.id}/alerts/${alerts[0].id as string}/acknowledge`, headers: admin })
  t.equal(acknowledged.statusCode, 200)
  t.match(acknowledged.json(), { acknowledgedBy: 'admin', acknowledgedAt: /^\d{4}-/ })
  const status = await app.budgetTracker.getBudgetStatus(team.id)
  t.same(status.activeAlerts.map((a) => [a.threshold, a.acknowledged]), [[75, true], [50, false]])
  const unknown = await app.inject({ method: 'POST', url: `${PREFIX}/${team.id}/alerts/00000000-0000-4000-8000-000000000000/acknowledge`, headers: admin })
  t.equal(unknown.statusCode, 404)
  t.equal(unknown.json().code, 'BUDGET_ERR_ALERT_NOT_FOUND')
  const badApproval = await app.inject({ method: 'POST', url: `${PREFIX}/${team.id}/approvals`, headers: admin, body: { amount: 0 } })
  t.match(badApproval.json(), { code: 'BUDGET_ERR_VALIDATION', field: 'amount' })
})

t.test('a projected alert fires before the spend gets there', async (t) => {
  const { app, createBudget, sql } = await buildGateway(t)
  // A ten-day period that began two hours ago: 10% spent so far projects far past 80%.
  const start = new Date(Date.now() - 2 * 3_600_000)
  const end = new Date(start.getTime() + 10 * 86_400_000)
  const team = await createBudget({
    period: 'custom', startDate: start.toISOString(), endDate: end.toISOString(), amount: '1',
    alerts: [{ threshold: 80, basis: 'projected', actions: ['notify'] }, { threshold: 90, actions: ['notify'] }]
  })
  // 0.005 in two hours projects about 0.6 over the ten days: under 80%.
  await spendTo(app, team.id, '0.005')
  t.same([...await sql`select threshold from budget_alert_history`], [], 'no crossing yet')
  // 0.01 in two hours projects about 1.2: past 80%, while the spend itself is at 1%.
  await spendTo(app, team.id, '0.01')
  const rows = await sql`select threshold::int as threshold, basis, spent::text as spent from budget_alert_history`
  t.same(rows.map((row) => [row.threshold, row.basis]), [[80, 'projected']], 'the projected alert fired; the current one at 90% did not')
  t.equal(compareMoney(rows[0]!.spent as string, '0.8'), 1, `the projection recorded (${rows[0]!.spent as string}) is past 80% of 1`)
})

t.test('a webhook that fails three times, then succeeds, receives the event once', async (t) => {
  let requests = 0
  const received: Array<{ text: string, alertId: string }> = []
  const hook = Fastify()
  hook.post('/hook', async (request, reply) => {
    requests++
    if (requests <= 3) return await reply.code(503).send({ down: true })
    received.push(request.body as { text: string, alertId: string })
    return { ok: true }
  })
  const hookUrl = `${await hook.listen({ port: 0, host: '127.0.0.1' })}/hook`
  t.teardown(async () => await hook.close())
  const { app, createBudget, sql } = await buildGateway(t, { notifications: { channels: { slack: { type: 'webhook', url: hookUrl }, email: { type: 'log' } }, backoffMs: 20 } })
  const team = await createBudget({ name: 'Platform', amount: '1', alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['slack', 'email'] }] })
  await spendTo(app, team.id, '0.6')

  for (let round = 0; round < 30 && received.length === 0; round++) {
    await app.budgetNotifications.deliverDue()
    await new Promise((resolve) => setTimeout(resolve, 30))
  }
  for (let round = 0; round < 5; round++) await app.budgetNotifications.deliverDue()
  t.equal(requests, 4, 'three failures, one success, nothing after')
  t.equal(received.length, 1, 'the event arrived once')
  t.match(received[0], { text: /Budget 'Platform' crossed 50% \(0.6 of 1 USD\): notify/, type: 'budget.threshold_crossed', threshold: 50 })
  const outbox = await sql`select channel, status, attempts, last_error from budget_notification_outbox order by channel`
  t.match(outbox, [
    { channel: 'email', status: 'delivered', attempts: 1, last_error: null },
    { channel: 'slack', status: 'delivered', attempts: 4 }
  ])
})

t.test('auto-downgrade seen through the openai client returns the cheaper model', async (t) => {
  const { app, createBudget, settled } = await buildGateway(t)
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1', alerts: [{ threshold: 75, actions: ['auto-downgrade'] }] })
  await spendTo(app, team.id, '0.8')
  const openai = new OpenAI({ baseURL: `${address}/v1`, apiKey: 'unused', defaultHeaders: { 'x-relay-team-id': 'platform' }, maxRetries: 0 })
  const { data, response } = await openai.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 10 }).withResponse()
  t.equal(data.model, 'gpt-4o-mini')
  t.equal(response.headers.get('x-budget-downgraded-from'), 'gpt-4o')
  await settled()
})

t.test('the threshold crossing is SQL\'s rule (budget_alert_reached) and the gate\'s one mirror of it gives the same answers at the boundaries', async (t) => {
  const { app, sql, createBudget, call } = await buildGateway(t)
  // Measures a unit of 10^-10 either side of (and at) threshold x amount / 100, for thresholds and amounts of every shape.
  const cases: Array<[string, number, string]> = []
  for (const [threshold, amount] of [[33.3333, '3'], [50, '1'], [0.0001, '0.0000000001'], [999.9999, '123456789.0123456789'], [75, '999999999999999999'], [12.5, '0.0000000008'], [100, '7.0000000003']] as Array<[number, string]>) {
    const point = toUnits(amount) * toUnits(String(threshold)) / 10n ** 12n // threshold x amount / 100, rounded down to a unit
    for (const measured of [point - 1n, point, point + 1n]) if (measured >= 0n) cases.push([fromUnits(measured), threshold, amount])
  }
  const rows = await sql<Array<{ reached: boolean }>>`
    select budget_alert_reached(c.m, c.t, c.a) as reached
    from unnest(${cases.map((c) => c[0])}::text[]::numeric[], ${cases.map((c) => String(c[1]))}::text[]::numeric[], ${cases.map((c) => c[2])}::text[]::numeric[])
      with ordinality as c(m, t, a, ord) order by c.ord`
  t.same(cases.map(([measured, threshold, amount]) => percentReached(measured, amount, threshold)), rows.map((row) => row.reached), `${cases.length} boundary cases agree`)

  // Through the product: 33.3333% of 3 is 0.999999. A unit under it, nothing crossed anywhere; at it, everywhere.
  const team = await createBudget({ scopeType: 'team', scopeId: 'thirds', amount: '3', alerts: [{ threshold: 33.3333, actions: ['block-all'], notificationChannels: ['ops'] }] })
  const views = async () => {
    const status = await app.budgetTracker.getBudgetStatus(team.id)
    const check = await app.budgetTracker.checkBudgetConstraints(team.id, '0.0000000001')
    const [row] = await sql`select count(*)::int as n from budget_alert_history where budget_id = ${team.id} and resolved_at is null`
    // The gate's own path (a hold, decided on the numbers read under its lock), given back at once: it spends nothing.
    const held = await app.budgetIntegration.reserveCall({ team: 'thirds' }, '0.0000000001')
    if (held.reservationId !== null) await app.budgetIntegration.releaseCall(held.reservationId)
    return { recorded: row!.n as number, status: status.status, check: check.code, gate: held.check.code }
  }
  await spendTo(app, team.id, '0.9999989999')
  t.same(await views(), { recorded: 0, status: 'normal', check: null, gate: null }, 'a unit under the threshold')
  await spendTo(app, team.id, '0.999999')
  t.same(await views(), { recorded: 1, status: 'blocked', check: 'budget_blocked', gate: 'budget_blocked' }, 'at it')
  t.equal((await call({ team: 'thirds' })).statusCode, 402, 'and the gate refuses a call')
})
