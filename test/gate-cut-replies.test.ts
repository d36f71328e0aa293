// Gate statements that PostgreSQL commits while the client's connection is cut: the statement goes through,
// its reply never comes back (a proxy dropping it, a backend ended after its commit). A hold batch cut so
// stayed until its TTL and was then swept as spent at its estimate, for a caller refused 503; a settlement
// cut so was sent again, found its reservation gone, and answered 'not-found' (or a leased one
// 'already-recorded') for a call it had recorded.
import t from 'tap'
import { isDatabaseUnavailable } from '../lib/kernel/errors.js'
import { buildGateway, proxiedGateway } from './fixtures/gateway.js'
import { findViolations } from './fixtures/invariants.js'
import { stillClock } from './fixtures/still-clock.js'

async function cutGateway (t: { teardown: (fn: () => unknown) => void }) {
  const gateway = await proxiedGateway(t)
  const budget = await gateway.createBudget({ name: 'team', amount: '100' })
  return { ...gateway, budget }
}

const reservationsLeft = async (sql: Awaited<ReturnType<typeof buildGateway>>['sql'], waitMs = 5000) => {
  const deadline = Date.now() + waitMs
  for (;;) {
    const [row] = await sql<Array<{ n: number }>>`select count(*)::int as n from budget_reservations`
    if (row!.n === 0 || Date.now() > deadline) return row!.n
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

t.test('a hold batch committed while its connection is cut is given back: the refused caller is not charged', async (t) => {
  const { app, sql, proxy } = await cutGateway(t)
  proxy.arm('budget_hold_batch')
  const refused = await app.budgetIntegration.reserveCall({ team: 'team-a' }, '2').then(() => null, (error: unknown) => error)
  t.equal(proxy.cuts(), 1, 'the hold\'s reply was dropped')
  t.ok(isDatabaseUnavailable(refused), 'the caller is refused: the database is unavailable (a 503 at the gate)')
  t.equal(await reservationsLeft(sql), 0, 'no hold is left for the sweeper to count as spent')
  const [window] = await sql<Array<{ reserved: string, current: string }>>`select reserved_amount::text as reserved, current_amount::text as current from budget_status_cache`
  t.equal(Number(window!.reserved), 0, 'nothing reserved')
  t.equal(Number(window!.current), 0, 'nothing spent')
  t.same(await findViolations(sql), [], 'each window\'s cache equals its reservations and records')
  const again = await app.budgetIntegration.reserveCall({ team: 'team-a' }, '2')
  t.ok(again.check.canProceed, 'the next call is admitted')
  t.match(await app.budgetIntegration.settleCall(again.reservationId!, '1'), { outcome: 'recorded' })
})

t.test('a settlement committed while its connection is cut is answered recorded, with its usage record', async (t) => {
  const { app, sql, proxy, budget } = await cutGateway(t)
  const held = await app.budgetIntegration.reserveCall({ team: 'team-a' }, '2', { requestId: 'cut-settle-1' })
  t.ok(held.check.canProceed)
  proxy.arm('budget_settle_batch')
  const settled = await app.budgetIntegration.settleCall(held.reservationId!, '1.5')
  t.equal(proxy.cuts(), 1, 'the settlement\'s reply was dropped, and it was sent again')
  const records = await sql<Array<{ id: string, amount: string }>>`select id, amount::text as amount from budget_usage_records where idempotency_key = 'cut-settle-1'`
  t.equal(records.length, 1, 'the call is recorded once')
  t.same(settled, { outcome: 'recorded', usageId: records[0]!.id }, 'and answered recorded, with that record (it was not-found)')
  t.equal(Number(records[0]!.amount), 1.5)
  t.equal(await reservationsLeft(sql), 0, 'no hold left')
  const status = await app.budgetTracker.getBudgetStatus(budget.id)
  t.equal(Number(status.currentAmount), 1.5)
  t.same(await findViolations(sql), [], 'each window\'s cache equals its reservations and records')
})

t.test('a hold given back while its connection is cut is answered released', async (t) => {
  const { app, sql, proxy } = await cutGateway(t)
  const held = await app.budgetIntegration.reserveCall({ team: 'team-a' }, '2')
  proxy.arm('budget_settle_batch')
  t.same(await app.budgetIntegration.releaseCall(held.reservationId!), { outcome: 'released' }, 'released (it was not-found, which reads as swept)')
  t.equal(proxy.cuts(), 1)
  t.equal(await reservationsLeft(sql), 0, 'no hold left')
  t.same(await findViolations(sql), [])
})

t.test('a leased call\'s settlement committed while its connection is cut is answered recorded, with its usage record', async (t) => {
  const { app, sql, proxy } = await cutGateway(t)
  const caller = { team: 'team-a' }
  const still = stillClock(t) // the first call's hold and settlement leave the line hot however long they take
  const first = await still(async () => await app.budgetIntegration.reserveCall(caller, '0.01'))
  t.match(await still(async () => await app.budgetIntegration.settleCall(first.reservationId!, '0.01')), { outcome: 'recorded' })
  const leased = await app.budgetIntegration.reserveCall(caller, '0.01', { requestId: 'cut-leased-1' })
  const [lease] = await sql<Array<{ n: number }>>`select count(*)::int as n from budget_reservations where lease`
  t.equal(lease!.n, 1, 'the second call came from a lease')
  proxy.arm('budget_settle_leased')
  const settled = await app.budgetIntegration.settleCall(leased.reservationId!, '0.008')
  t.equal(proxy.cuts(), 1)
  const records = await sql<Array<{ id: string }>>`select id from budget_usage_records where idempotency_key = 'cut-leased-1'`
  t.equal(records.length, 1, 'recorded once')
  t.same(settled, { outcome: 'recorded', usageId: records[0]!.id }, 'answered recorded with its record (it was already-recorded)')
  await app.close() // the lease is given back
  t.equal(await reservationsLeft(sql), 0, 'no reservation left once the lease is given back')
  t.same(await findViolations(sql), [], 'each window\'s cache equals its reservations and records')
})
