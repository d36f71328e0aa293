// Review rc: a projected alert whose forecast passes 10^18 (budget_alert_history.spent is numeric(28,10)).
import t from 'tap'
import { ADMIN_TOKEN, PREFIX, snapshotTables } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'

const admin = { authorization: `Bearer ${ADMIN_TOKEN}` }
const alerts = [{ threshold: 80, basis: 'projected', actions: ['notify'] }]

t.test('usage whose forecast passes 10^18, on the single route, the batch and the gate', async (t) => {
  const gw = await buildGateway(t, { captureLogs: true, gate: { sweepIntervalMs: 0 } })
  const single = await gw.createBudget({ name: 'single', scopeId: 'team-s', amount: '999999999999999999', enforcement: 'soft', alerts })
  const batched = await gw.createBudget({ name: 'batched', scopeId: 'team-b', amount: '999999999999999999', enforcement: 'soft', alerts })
  const gated = await gw.createBudget({ name: 'gated', scopeId: 'team-g', amount: '999999999999999999', enforcement: 'soft' })
  const other = await gw.createBudget({ name: 'other', scopeId: 'team-o', amount: '100' })

  const before = await snapshotTables(gw.sql)
  const r1 = await gw.app.inject({ method: 'POST', url: `${PREFIX}/${single.id}/usage`, headers: admin, body: { amount: '100000000000000000', currency: 'USD' } })
  t.comment(`single: ${r1.statusCode} ${r1.body.slice(0, 300)}`)
  t.ok(r1.statusCode === 201, 'a record that fits everywhere is stored (its projection is no stored amount)')
  if (r1.statusCode >= 400) t.same(await snapshotTables(gw.sql), before, 'nothing changed after the 4xx')

  const r2 = await gw.app.inject({ method: 'POST', url: `${PREFIX}/usage/batch`, headers: admin, body: { records: [
    { budgetId: batched.id, amount: '100000000000000000', currency: 'USD', metadata: { requestId: 'big' } },
    { budgetId: other.id, amount: '1', currency: 'USD', metadata: { requestId: 'innocent' } }
  ] } })
  t.comment(`batch: ${r2.statusCode} ${r2.body.slice(0, 600)}`)
  t.equal(r2.statusCode, 200, 'the batch answers each record (no 5xx)')

  // the gate: the budget's spend put there by a record that fits, then a call on it
  const r3 = await gw.app.inject({ method: 'POST', url: `${PREFIX}/${gated.id}/usage`, headers: admin, body: { amount: '100000000000000000', currency: 'USD' } })
  t.comment(`gated seed: ${r3.statusCode} ${r3.body.slice(0, 100)}`)
  const put = await gw.app.inject({ method: 'PUT', url: `${PREFIX}/${gated.id}`, headers: admin, body: { alerts } })
  t.comment(`PUT alerts: ${put.statusCode} ${put.body.slice(0, 200)}`)
  const st = await gw.app.inject({ method: 'GET', url: `${PREFIX}/${gated.id}/status`, headers: admin })
  t.comment(`status: ${st.statusCode} projected ${String(st.json().projectedTotal)}`)
  const call = await gw.call({ team: 'team-g' })
  t.comment(`gated call: ${call.statusCode} ${call.body.slice(0, 300)}`)
  t.ok(call.statusCode < 500, 'a gated call answers no 5xx')
  const callOther = await gw.call({ team: 'team-o' })
  t.equal(callOther.statusCode, 200, 'another team is served')
  await new Promise((resolve) => setTimeout(resolve, 1000))
  t.comment(`logs: ${JSON.stringify(gw.logs.map((l) => [l.level, l.msg, (l.err as { code?: string } | undefined)?.code]).slice(0, 8))}`)
  const left = await gw.sql`select b.name, r.amount::text from budget_reservations r join budget_definitions b on b.id = r.budget_id order by 1`
  t.comment(`held after: ${JSON.stringify(left)}`)
  t.equal(left.length, 0, 'nothing left held after the calls')
  const [recorded] = await gw.sql`select count(*)::int as n from budget_usage_records u where u.budget_id = ${gated.id} and u.source is distinct from null`
  t.comment(`gated records: ${recorded!.n}`)
  const r4 = await gw.app.inject({ method: 'POST', url: `${PREFIX}/${gated.id}/usage`, headers: admin, body: { amount: '0.01', currency: 'USD' } })
  t.comment(`a cent on the gated budget: ${r4.statusCode} ${r4.body.slice(0, 200)}`)
  t.equal(r4.statusCode, 201, 'a cent of usage is stored')
})
