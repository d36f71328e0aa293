// Review R-fixes (af66223): a settlement sent again after a connection cut looks for the call's own usage
// record by the id the queue made for it; two cases did not look (a leased call whose lease was swept before
// the retry answered expired; a hold another process made answered not-found). Both seen failing on
// af66223; the queue now looks in both (lib/gate/settlements.ts).
import Fastify from 'fastify'
import t from 'tap'
import budgets from '../lib/index.js'
import { proxiedGateway } from './fixtures/gateway.js'
import { findViolations } from './fixtures/invariants.js'
import { stillClock } from './fixtures/still-clock.js'


const sleep = async (ms: number) => await new Promise((resolve) => setTimeout(resolve, ms))

t.test('a leased settlement cut after its commit, its lease swept before the retry: the call is answered recorded, with its own record', async (t) => {
  const { app, sql, proxy, createBudget } = await proxiedGateway(t, { reservationTtlMs: 1000 })
  await createBudget({ name: 'team', amount: '100' })
  const caller = { team: 'team-a' }
  const integration = app.budgetIntegration
  const first = await stillClock(t)(async () => await integration.reserveCall(caller, '0.01')) // the line stays hot however long the hold takes
  const second = await integration.reserveCall(caller, '0.01')
  t.ok(first.check.canProceed && second.check.canProceed)
  t.equal((await sql`select count(*)::int as n from budget_reservations where lease`)[0]!.n, 1, 'the second call came from a lease')
  proxy.arm('budget_settle_leased', { kind: 'cut-reply', holdNewConnections: true })
  const settling = integration.settleCall(second.reservationId!, '0.02', { metadata: { mark: 'leased-cut' } })
  for (let i = 0; i < 200 && proxy.cuts() === 0; i++) await sleep(10)
  t.equal(proxy.cuts(), 1, 'the leased settlement committed and its reply was cut')
  const records = await sql<Array<{ id: string }>>`select id from budget_usage_records where metadata->>'mark' = 'leased-cut'`
  t.equal(records.length, 1, 'its record is stored')
  // While the process cannot reach the database, the lease passes its TTL and another process sweeps it.
  await sleep(1300)
  const [swept] = await sql<Array<{ n: number }>>`select budget_sweep_expired(100) as n`
  t.ok(swept!.n >= 1, 'the lease (and the first hold) were swept')
  proxy.resume()
  const outcome = await settling
  t.same(outcome, { outcome: 'recorded', usageId: records[0]!.id }, `the call is answered recorded with its own record (got ${JSON.stringify(outcome)})`)
  t.equal((await sql`select count(*)::int as n from budget_usage_records where metadata->>'mark' = 'leased-cut'`)[0]!.n, 1, 'recorded once')
  await app.close()
  t.same(await findViolations(sql), [], 'the escrow invariants hold')
})

t.test('a hold made by another process, its settlement cut after its commit: the retry answers recorded, with the call\'s own record', async (t) => {
  const { app, sql, proxy, createBudget } = await proxiedGateway(t)
  await createBudget({ name: 'team', amount: '100' })
  // Another process of the host's (the same database, no proxy) reserved the call.
  const other = Fastify()
  await other.register(budgets, { database: sql, adminToken: 'other-admin-token-long-enough-0123456789', gate: { sweepIntervalMs: 0 }, notifications: { intervalMs: 0 } })
  await other.ready()
  t.teardown(async () => await other.close())
  const reserved = await other.budgetIntegration.reserveCall({ team: 'team-a' }, '1', { requestId: 'reserved-elsewhere' })
  t.ok(reserved.check.canProceed && reserved.reservationId !== null, 'the other process holds the call')
  proxy.arm(reserved.reservationId!, { kind: 'cut-reply', holdNewConnections: true })
  const settling = app.budgetIntegration.settleCall(reserved.reservationId!, '0.5')
  for (let i = 0; i < 200 && proxy.cuts() === 0; i++) await sleep(10)
  t.equal(proxy.cuts(), 1, 'the settlement committed and its reply was cut')
  proxy.resume()
  const outcome = await settling
  const records = await sql<Array<{ id: string }>>`select id from budget_usage_records where idempotency_key = 'reserved-elsewhere'`
  t.equal(records.length, 1, 'its record is stored, once')
  t.same(outcome, { outcome: 'recorded', usageId: records[0]?.id }, `the call is answered recorded with its own record (got ${JSON.stringify(outcome)})`)
  await app.close()
  await other.close()
  t.same(await findViolations(sql), [], 'the escrow invariants hold')
})
