// budgetIntegration on the instance: the same decisions as the gate, for gateway code outside its hooks.
import t from 'tap'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'

t.test('checkCaller reads the same decision the gate makes, and reserves nothing', async (t) => {
  const { app, call, createBudget, sql } = await buildGateway(t)
  const org = await createBudget({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '0.5' })
  await createBudget({ name: 'team', scopeType: 'team', scopeId: 'platform', amount: '0.2', parentId: org.id })
  const fits = await app.budgetIntegration.checkCaller({ team: 'platform', organization: 'acme' }, '0.2')
  t.match(fits, { canProceed: true, remaining: '0.2', limit: '0.2' })
  t.same(fits.budgets.map((b) => b.name), ['team', 'org'], 'the scope budgets first, then ancestors')
  const over = await app.budgetIntegration.checkCaller({ team: 'platform' }, '0.2000000001')
  t.match(over, { canProceed: false, code: 'budget_exceeded', limit: '0.2' })
  const [row] = await sql`select count(*)::int as n from budget_reservations`
  t.equal(row!.n, 0)
  await t.rejects(app.budgetIntegration.checkCaller({ team: 'platform' }, '-1'), { code: 'BUDGET_ERR_VALIDATION', field: 'estimatedCost' })
  t.equal((await call({ team: 'platform' }, { model: 'gpt-4.1', max_tokens: 30000 })).statusCode, 402, 'and the gate agrees: 30000 x 8 per 1M is over 0.2')
})

t.test('reserveCall and settleCall: hold, then record the actual cost once', async (t) => {
  const { app, createBudget, status } = await buildGateway(t)
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1' })
  const { check, reservationId } = await app.budgetIntegration.reserveCall({ team: 'platform' }, '0.4')
  t.ok(check.canProceed)
  t.equal((await status(team.id)).reservedAmount, '0.4')
  const refused = await app.budgetIntegration.reserveCall({ team: 'platform' }, '0.7')
  t.match(refused, { reservationId: null, check: { canProceed: false, remaining: '0.6' } })
  const settled = await app.budgetIntegration.settleCall(reservationId!, '0.25', { metadata: { modelId: 'gpt-4o' } })
  t.match(settled, { outcome: 'recorded', usageId: /^[0-9a-f-]{36}$/ })
  t.match(await status(team.id), { currentAmount: '0.25', reservedAmount: '0' })
  t.same(await app.budgetIntegration.settleCall(reservationId!, '0.25'), { outcome: 'not-found' }, 'a second settle of the same call changes nothing, and says it found no hold')
  t.match(await status(team.id), { currentAmount: '0.25', reservedAmount: '0' })
})

t.test('settleCall and releaseCall say which case each was: recorded, released, already recorded, not found', async (t) => {
  const { app, createBudget, sql, status } = await buildGateway(t)
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1' })
  const integration = app.budgetIntegration
  const served = await integration.reserveCall({ team: 'platform' }, '0.1', { requestId: 'request-1' })
  const retried = await integration.reserveCall({ team: 'platform' }, '0.1', { requestId: 'request-1' })
  const unserved = await integration.reserveCall({ team: 'platform' }, '0.1')
  const free = await integration.reserveCall({ team: 'platform' }, '0.1')
  const swept = await integration.reserveCall({ team: 'platform' }, '0.1')
  const recorded = await integration.settleCall(served.reservationId!, '0.05')
  t.equal(recorded.outcome, 'recorded', 'a cost: recorded')
  const [record] = await sql`select amount::text as amount from budget_usage_records where id = ${recorded.outcome === 'recorded' ? recorded.usageId : null}`
  t.equal(record?.amount, '0.0500000000', 'under the usage id it names')
  t.same(await integration.settleCall(retried.reservationId!, '0.05'), { outcome: 'already-recorded' }, 'another hold of the same request: already recorded, nothing more charged')
  t.same(await integration.releaseCall(unserved.reservationId!), { outcome: 'released' }, 'nothing served: released')
  t.same(await integration.settleCall(free.reservationId!, '0'), { outcome: 'released' }, 'a cost of 0 is nothing to charge: released')
  t.same(await integration.settleCall(served.reservationId!, '0.05'), { outcome: 'not-found' }, 'the same reservation again: no hold found')
  // The process "died": the hold outlived its TTL and the sweeper counted it at its estimate.
  await sql`update budget_reservations set expires_at = now() - interval '1 second' where id = ${swept.reservationId!}`
  t.equal(await integration.sweepExpiredReservations(), 1)
  t.same(await integration.settleCall(swept.reservationId!, '0.05'), { outcome: 'not-found' }, 'settled after the sweep: no hold found, nothing recorded twice')
  t.match(await status(team.id), { currentAmount: '0.15', reservedAmount: '0' }, 'the served call and the swept estimate, once each')
})

t.test('recordModelCall: once per request id, counted toward every budget of the caller', async (t) => {
  const { app, createBudget, status } = await buildGateway(t)
  const org = await createBudget({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '10' })
  const alice = await createBudget({ name: 'alice', scopeType: 'user', scopeId: 'alice', amount: '5', parentId: org.id })
  const project = await createBudget({ name: 'apollo', scopeType: 'project', scopeId: 'apollo', amount: '5' })
  const caller = { user: 'alice', project: 'apollo', organization: 'acme' }
  const first = await app.budgetIntegration.recordModelCall(caller, '0.125', { requestId: 'call-1', metadata: { modelId: 'gpt-4o' } })
  const again = await app.budgetIntegration.recordModelCall(caller, '0.125', { requestId: 'call-1', metadata: { modelId: 'gpt-4o' } })
  t.equal(again!.id, first!.id, 'a retry is the same record')
  t.equal(first!.budgetId, alice.id, 'recorded on the most specific scope')
  for (const budget of [alice, project, org]) t.equal((await status(budget.id)).currentAmount, '0.125')
  t.equal(await app.budgetIntegration.recordModelCall({ user: 'nobody' }, '1'), null, 'nothing applies, nothing recorded')
})

t.test('recordModelCall: a retry after a budget was created for a scope of the caller replays the first record', async (t) => {
  const { app, createBudget, status } = await buildGateway(t)
  const team = await createBudget({ name: 'platform', scopeType: 'team', scopeId: 'platform', amount: '10' })
  const caller = { user: 'alice', team: 'platform' }
  const first = await app.budgetIntegration.recordModelCall(caller, '5', { requestId: 'call-7', metadata: { modelId: 'gpt-4o' } })
  t.equal(first!.budgetId, team.id, 'no user budget yet: the team takes it')
  const alice = await createBudget({ name: 'alice', scopeType: 'user', scopeId: 'alice', amount: '10', parentId: team.id })
  const again = await app.budgetIntegration.recordModelCall(caller, '5', { requestId: 'call-7', metadata: { modelId: 'gpt-4o' } })
  t.equal(again!.id, first!.id, 'the same record, though the user budget would take a new one')
  t.equal((await status(team.id)).currentAmount, '5', 'the team counts one usage of 5, not 10')
  t.equal((await status(alice.id)).currentAmount, '0')
})

t.test('getCallerSummary: every budget that applies, with status, and the one that binds first', async (t) => {
  const { app, createBudget } = await buildGateway(t)
  const org = await createBudget({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '10' })
  const team = await createBudget({ name: 'team', scopeType: 'team', scopeId: 'platform', amount: '2', parentId: org.id })
  await app.budgetIntegration.recordModelCall({ team: 'platform' }, '1.5')
  const summary = await app.budgetIntegration.getCallerSummary({ team: 'platform' })
  t.same(summary.budgets.map((b) => [b.name, b.currentAmount, b.remaining, b.scopeMatched]), [['team', '1.5', '0.5', true], ['org', '1.5', '8.5', false]])
  t.equal(summary.bindingBudgetId, team.id)
})

t.test('sweepExpiredReservations counts an expired reservation as spent at its estimate', async (t) => {
  const { app, createBudget, status, sql } = await buildGateway(t, { gate: { reservationTtlMs: 1, sweepIntervalMs: 0 } })
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1' })
  await app.budgetIntegration.reserveCall({ team: 'platform' }, '0.3')
  await new Promise((resolve) => setTimeout(resolve, 20))
  t.equal(await app.budgetIntegration.sweepExpiredReservations(), 1)
  t.match(await status(team.id), { currentAmount: '0.3', reservedAmount: '0' })
  const [record] = await sql`select source, metadata from budget_usage_records`
  t.match(record, { source: 'expired-reservation', metadata: { outcome: 'unknown' } })
  t.equal(await app.budgetIntegration.sweepExpiredReservations(), 0, 'swept once')
})

t.test('the binding budget is one rule: getCallerSummary, checkCaller and the gate\'s x-budget-id name the same one across currencies', async (t) => {
  const gateway = await buildGateway(t)
  const { app } = gateway
  const auth = { authorization: `Bearer ${ADMIN_TOKEN}` }
  t.equal((await app.inject({ method: 'PUT', url: `${PREFIX}/exchange-rates/USD/EUR`, headers: auth, body: { rate: '0.9', effectiveFrom: '2024-01-01' } })).statusCode, 201)
  // 50 USD left of 100 (half its limit); 100 EUR left of 1000 (a tenth), which is 111 USD: the dollar budget has less room for any call.
  const dollars = await gateway.createBudget({ name: 'dollars', amount: '100' })
  const euros = await gateway.createBudget({ name: 'euros', scopeType: 'project', scopeId: 'apollo', amount: '1000', currency: 'EUR' })
  await app.budgetTracker.recordUsage({ budgetId: dollars.id, amount: '50', currency: 'USD', source: 'test' })
  await app.budgetTracker.recordUsage({ budgetId: euros.id, amount: '900', currency: 'EUR', source: 'test' })
  const caller = { team: 'team-a', project: 'apollo' }

  const called = await gateway.call(caller)
  t.equal(called.statusCode, 200)
  t.equal(called.headers['x-budget-id'], dollars.id, 'the gate names the dollar budget')
  t.equal((await app.budgetIntegration.checkCaller(caller, '0.01')).bindingBudgetId, dollars.id, 'checkCaller too')
  t.equal((await app.budgetIntegration.getCallerSummary(caller)).bindingBudgetId, dollars.id, 'and the summary (it named the euro budget: the smaller share of its limit)')
})
