// Money is numeric(28, 10): below 10^18. A budget near that bound (a soft budget admits any amount) must
// not turn one call, one settlement or one forecast into an error of a statement that serves others too.
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { ADMIN_TOKEN, PREFIX, snapshotTables } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'
import { findViolations } from './fixtures/invariants.js'

const admin = { authorization: `Bearer ${ADMIN_TOKEN}` }
const LARGEST = '999999999999999999.9999999999'

t.test('an expired hold that overflows at its estimate does not block the sweep of every other expired hold', async (t) => {
  const gw = await buildGateway(t, { captureLogs: true, gate: { sweepIntervalMs: 0 } })
  const near = await gw.createBudget({ name: 'near', scopeId: 'team-near', amount: '999999999999999999', enforcement: 'soft' })
  const other = await gw.createBudget({ name: 'other', scopeId: 'team-other', amount: '1' })
  const integration = gw.app.budgetIntegration
  // a hold of 0.5 on the near budget (fits: 10^18 - 2 + 0.5), then three of 0.3 on another team's hard budget of 1
  let r = await gw.app.inject({ method: 'POST', url: `${PREFIX}/${near.id}/usage`, headers: admin, body: { amount: '999999999999999998', currency: 'USD' } })
  t.equal(r.statusCode, 201, r.body)
  const held = await integration.reserveCall({ team: 'team-near' }, '0.5')
  t.ok(held.check.canProceed, 'the near call is held')
  for (let i = 0; i < 3; i++) {
    await new Promise((resolve) => setTimeout(resolve, 150)) // cold line: a hold each, no lease
    const reserved = await integration.reserveCall({ team: 'team-other' }, '0.3')
    t.ok(reserved.check.canProceed, `other call ${i} held`)
  }
  // more usage on the near budget, through the admin API: accepted (it fits under 10^18 by itself)
  r = await gw.app.inject({ method: 'POST', url: `${PREFIX}/${near.id}/usage`, headers: admin, body: { amount: '1.9', currency: 'USD' } })
  t.equal(r.statusCode, 201, r.body)
  // every process that held these died: their holds expire
  await gw.sql`update budget_reservations set expires_at = now() - interval '1 second'`
  let sweepError: unknown = null
  for (let i = 0; i < 3; i++) await integration.sweepExpiredReservations().catch((error: unknown) => { sweepError = error })
  t.equal(sweepError, null, 'the sweep does not fail')
  const left = await gw.sql`select b.name, r.amount::text from budget_reservations r join budget_definitions b on b.id = r.budget_id order by 1`
  t.equal(left.filter((row) => row.name === 'other').length, 0, 'the other team\'s expired holds are swept')
  t.same(left, [], 'no expired hold is left')
  // the swept holds count at their estimate (0.9 of 1): what is left of the hard budget can be held again
  const again = await gw.app.budgetIntegration.reserveCall({ team: 'team-other' }, '0.1')
  t.ok(again.check.canProceed, 'the other team can call again (its expired holds no longer count as held)')
  if (again.reservationId !== null) await integration.releaseCall(again.reservationId)
  const [cache] = await gw.sql`select current_amount::text as spent from budget_status_cache where budget_id = ${near.id}`
  t.equal(cache!.spent, LARGEST, 'the near budget is charged what it can store')
  const [swept] = await gw.sql`select u.amount::text, u.metadata from budget_usage_records u where u.budget_id = ${near.id} and u.source = 'expired-reservation'`
  t.equal(swept!.amount, '0.5000000000', 'the swept call is recorded at its estimate')
  t.same(swept!.metadata.unrecordedPastLimit, { [near.id]: '0.4000000001' }, 'what the budget could not store is kept on the record')
  t.same(await findViolations(gw.sql), [], 'no live hold left, every window equals its allocations, no hard budget over')
  t.ok(other.id)
})

t.test('an over-billed settlement past 10^18 settles, and so do the others in its batch', async (t) => {
  const gw = await buildGateway(t, { captureLogs: true, gate: { sweepIntervalMs: 0 } })
  const near = await gw.createBudget({ name: 'near', scopeId: 'team-near', amount: '999999999999999999', enforcement: 'soft' })
  await gw.createBudget({ name: 'other', scopeId: 'team-other', amount: '10' })
  const integration = gw.app.budgetIntegration
  const r = await gw.app.inject({ method: 'POST', url: `${PREFIX}/${near.id}/usage`, headers: admin, body: { amount: '999999999999999998', currency: 'USD' } })
  t.equal(r.statusCode, 201, r.body)
  const nearCall = await integration.reserveCall({ team: 'team-near' }, '0.5')
  await new Promise((resolve) => setTimeout(resolve, 150))
  const otherCall = await integration.reserveCall({ team: 'team-other' }, '0.5')
  t.ok(nearCall.reservationId !== null && otherCall.reservationId !== null, 'both calls are held')
  // billed 5, far past its estimate: 10^18 - 2 + 5 cannot be stored
  const [nearUsage, otherUsage] = await Promise.all([integration.settleCall(nearCall.reservationId!, '5'), integration.settleCall(otherCall.reservationId!, '0.4')])
  t.equal(nearUsage.outcome, 'recorded', 'the over-billed call is recorded')
  t.equal(otherUsage.outcome, 'recorded', 'the other call is recorded')
  const [record] = await gw.sql`select amount::text, metadata from budget_usage_records where id = ${nearUsage.outcome === 'recorded' ? nearUsage.usageId : null}`
  t.equal(record!.amount, '5.0000000000', 'its record says what it cost')
  t.same(record!.metadata.unrecordedPastLimit, { [near.id]: '3.0000000001' }, 'and what the budget could not store')
  const [cache] = await gw.sql`select current_amount::text as spent from budget_status_cache where budget_id = ${near.id}`
  t.equal(cache!.spent, LARGEST)
  t.same(await findViolations(gw.sql), [])
})

t.test('an over-billed leased call past 10^18 settles, and so do the others in its statement', async (t) => {
  const gw = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const near = await gw.createBudget({ name: 'near', scopeId: 'team-near', amount: '999999999999999999', enforcement: 'soft' })
  const other = await gw.createBudget({ name: 'other', scopeId: 'team-other', amount: '10' })
  const r = await gw.app.inject({ method: 'POST', url: `${PREFIX}/${near.id}/usage`, headers: admin, body: { amount: '999999999999999998', currency: 'USD' } })
  t.equal(r.statusCode, 201, r.body)
  const seeded = await gw.app.inject({ method: 'POST', url: `${PREFIX}/${other.id}/usage`, headers: admin, body: { amount: '1', currency: 'USD' } })
  t.equal(seeded.statusCode, 201, seeded.body)
  const nearLease = randomUUID()
  const otherLease = randomUUID()
  for (const [lease, budget] of [[nearLease, near.id], [otherLease, other.id]] as const) {
    const granted = await gw.sql`
      select l.granted::text from budget_status_cache c,
      lateral budget_lease_take(${lease}, 'USD', '1 minute', 1, 0.1, array[c.budget_id], array[c.period_start], array[c.period_end], array[true], array[0]) l
      where c.budget_id = ${budget} and c.period_start <= now() and now() < c.period_end limit 1`
    t.ok(granted.length > 0, 'a lease is taken')
  }
  const settled = await gw.sql`
    select request_id, usage_id, lease_found from budget_settle_leased(
      array[${nearLease}::uuid, ${nearLease}::uuid, ${otherLease}::uuid], array['near-1', 'near-2', 'other-1'], array[1.5, 2, 0.5]::numeric[],
      array['gateway', 'gateway', 'gateway'], array[null, null, null]::text[], array['{}', '{}', '{}']::jsonb[],
      array[now(), now(), now()], '1 minute') order by request_id`
  t.same(settled.map((row) => [row.request_id, row.usage_id !== null, row.lease_found]),
    [['near-1', true, true], ['near-2', true, true], ['other-1', true, true]], 'every call is recorded once')
  const [cache] = await gw.sql`select current_amount::text as spent from budget_status_cache where budget_id = ${near.id}`
  t.equal(cache!.spent, LARGEST, 'the near budget is charged what it can store')
  const records = await gw.sql`select amount::text, metadata->'unrecordedPastLimit' as unrecorded from budget_usage_records
                               where source = 'gateway' and budget_id = ${near.id} order by amount`
  t.same(records.map((row) => [row.amount, row.unrecorded]),
    [['1.5000000000', null], ['2.0000000000', { [near.id]: '1.5000000001' }]], 'what it could not store is kept on the record that passed it')
  for (const lease of [nearLease, otherLease]) await gw.sql`select budget_lease_return(${lease}, 0, true, 1)`
  t.same(await findViolations(gw.sql), [])
})

t.test('leased calls past 10^18: each lease row gives up what its calls were charged, and its window the same', async (t) => {
  // Two leases on a soft budget 4 below 10^18: A holds 2, B holds 1.5. A's call (admitted first) is billed 10
  // and takes all the window can still store (3.9999999999); B's, billed 1, is charged nothing. A lease row
  // gives up what its calls were charged, at most what it holds: A all of its 2, B nothing. So the window's
  // reserved amount goes from 3.5 to 1.5 (not to 0.5, as it would by what the calls cost).
  const gw = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const near = await gw.createBudget({ name: 'near', scopeId: 'team-near', amount: '999999999999999999', enforcement: 'soft' })
  const r = await gw.app.inject({ method: 'POST', url: `${PREFIX}/${near.id}/usage`, headers: admin, body: { amount: '999999999999999996', currency: 'USD' } })
  t.equal(r.statusCode, 201, r.body)
  const leases = { a: randomUUID(), b: randomUUID() }
  for (const [lease, wanted] of [[leases.a, 2], [leases.b, 1.5]] as const) {
    const granted = await gw.sql`
      select l.granted::text from budget_status_cache c,
      lateral budget_lease_take(${lease}, 'USD', '1 minute', ${wanted}, 0.1, array[c.budget_id], array[c.period_start], array[c.period_end], array[true], array[0]) l
      where c.budget_id = ${near.id} and c.period_start <= now() and now() < c.period_end limit 1`
    t.equal(Number(granted[0]?.granted), wanted, 'a lease is taken')
  }
  await gw.sql`select * from budget_settle_leased(array[${leases.a}::uuid, ${leases.b}::uuid], array['near-a', 'near-b'], array[10, 1]::numeric[],
    array['gateway', 'gateway'], array[null, null]::text[], array['{}', '{}']::jsonb[], array[now() - interval '1 second', now()], '1 minute')`
  const [cache] = await gw.sql`select current_amount::text as spent, reserved_amount::text as reserved from budget_status_cache where budget_id = ${near.id}`
  t.same([cache!.spent, cache!.reserved], [LARGEST, '1.5000000000'], 'the window stores what it can, and gives up what the lease rows gave up')
  const rows = await gw.sql`select id, amount::text from budget_reservations where id in (${leases.a}, ${leases.b})`
  t.same(Object.fromEntries(rows.map((row) => [row.id, row.amount])), { [leases.a]: '0.0000000000', [leases.b]: '1.5000000000' },
    'lease A is drawn down to 0, lease B not at all')
  const records = await gw.sql`select metadata->>'requestId' as request, metadata->'unrecordedPastLimit' as unrecorded from budget_usage_records
                               where source = 'gateway' order by 1`
  t.same(records.map((row) => [row.request, row.unrecorded]),
    [['near-a', { [near.id]: '6.0000000001' }], ['near-b', { [near.id]: '1.0000000000' }]], 'what the window could not store is kept on each record')
  for (const lease of Object.values(leases)) await gw.sql`select budget_lease_return(${lease}, 0, true, 1)`
  t.same(await findViolations(gw.sql), [], 'the invariants hold once the leases are returned')
})

t.test('usage whose forecast passes 10^18, on the single route, the batch and the gate', async (t) => {
  const alerts = [{ threshold: 80, basis: 'projected', actions: ['notify'] }]
  // Windows that began a minute ago: the forecast divides by at least an hour (budget_burn_elapsed_us) and
  // has a month left, so 10^17 spent forecasts past 10^18 whatever day of the month the test runs on.
  const startDate = new Date(Date.now() - 60_000).toISOString()
  const gw = await buildGateway(t, { captureLogs: true, gate: { sweepIntervalMs: 0 } })
  const single = await gw.createBudget({ name: 'single', scopeId: 'team-s', amount: '999999999999999999', enforcement: 'soft', alerts, startDate })
  const batched = await gw.createBudget({ name: 'batched', scopeId: 'team-b', amount: '999999999999999999', enforcement: 'soft', alerts, startDate })
  const gated = await gw.createBudget({ name: 'gated', scopeId: 'team-g', amount: '999999999999999999', enforcement: 'soft', startDate })
  const other = await gw.createBudget({ name: 'other', scopeId: 'team-o', amount: '100' })

  const before = await snapshotTables(gw.sql)
  const r1 = await gw.app.inject({ method: 'POST', url: `${PREFIX}/${single.id}/usage`, headers: admin, body: { amount: '100000000000000000', currency: 'USD' } })
  t.ok(r1.statusCode === 201, 'a record that fits everywhere is stored (its projection is no stored amount)')
  if (r1.statusCode >= 400) t.same(await snapshotTables(gw.sql), before, 'nothing changed after the 4xx')

  const r2 = await gw.app.inject({ method: 'POST', url: `${PREFIX}/usage/batch`, headers: admin, body: { records: [
    { budgetId: batched.id, amount: '100000000000000000', currency: 'USD', metadata: { requestId: 'big' } },
    { budgetId: other.id, amount: '1', currency: 'USD', metadata: { requestId: 'innocent' } }
  ] } })
  t.equal(r2.statusCode, 200, 'the batch answers each record (no 5xx)')

  // the gate: the budget's spend put there by a record that fits, then a call on it
  const r3 = await gw.app.inject({ method: 'POST', url: `${PREFIX}/${gated.id}/usage`, headers: admin, body: { amount: '100000000000000000', currency: 'USD' } })
  t.equal(r3.statusCode, 201, r3.body)
  const put = await gw.app.inject({ method: 'PUT', url: `${PREFIX}/${gated.id}`, headers: admin, body: { alerts } })
  t.equal(put.statusCode, 200, put.body)
  const call = await gw.call({ team: 'team-g' })
  t.ok(call.statusCode < 500, 'a gated call answers no 5xx')
  const callOther = await gw.call({ team: 'team-o' })
  t.equal(callOther.statusCode, 200, 'another team is served')
  await gw.settled(5000)
  const left = await gw.sql`select b.name, r.amount::text from budget_reservations r join budget_definitions b on b.id = r.budget_id order by 1`
  t.equal(left.length, 0, 'nothing left held after the calls')
  t.same(gw.logs.filter((l) => l.msg === 'settling a gated call failed'), [], 'no settlement failed')
  const r4 = await gw.app.inject({ method: 'POST', url: `${PREFIX}/${gated.id}/usage`, headers: admin, body: { amount: '0.01', currency: 'USD' } })
  t.equal(r4.statusCode, 201, 'a cent of usage is stored')
  const crossings = await gw.sql`select budget_id, spent::text from budget_alert_history where basis = 'projected' order by spent`
  t.ok(crossings.length >= 3, 'each budget\'s projected crossing is recorded')
  t.ok(crossings.every((row) => row.spent === LARGEST), 'with its forecast clamped to the largest amount money holds')
})

t.test('a hold past 10^18 after conversion: a refusal of that call, the others in its hold batch served, nothing held after', async (t) => {
  const gw = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  t.equal((await gw.app.inject({ method: 'PUT', url: `${PREFIX}/exchange-rates/USD/EUR`, headers: admin, body: { rate: '999999999999999999', effectiveFrom: '2020-01-01T00:00:00Z' } })).statusCode, 201)
  const eur = await gw.createBudget({ name: 'eur', scopeId: 'team-eur', currency: 'EUR', amount: '999999999999999999', enforcement: 'soft' })
  await gw.createBudget({ name: 'usd', scopeId: 'team-usd', amount: '100' })
  const r = await gw.app.inject({ method: 'POST', url: `${PREFIX}/${eur.id}/usage`, headers: admin, body: { amount: '999999999999000000', currency: 'EUR' } })
  t.equal(r.statusCode, 201, r.body)
  const answers = await Promise.all(Array.from({ length: 10 }, async (_, i) => await gw.call({ team: i % 2 === 0 ? 'team-eur' : 'team-usd' })))
  t.ok(answers.every((a) => a.statusCode < 500), 'no 5xx')
  t.ok(answers.filter((_, i) => i % 2 === 1).every((a) => a.statusCode === 200), 'the USD team is served')
  await gw.settled(5000).catch((e: unknown) => { t.fail(String(e)) })
  t.same(await findViolations(gw.sql), [])
})
