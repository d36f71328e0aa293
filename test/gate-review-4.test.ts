// Review R-gate (acc58ed): reproductions of defects in the gate's cut-connection recovery and window ledger.
// Each test failed on the code under review for the reason its name gives; they now guard the fixes: lease
// give-backs numbered (applied once), hold batches given back by id in rounds (and the plugin's own client
// checking for a client gone), leased calls decided on their take (the window ledger only reports), and
// usage ids made by the process (a settlement or an unbudgeted record sent again finds its own).
import t from 'tap'
import { isDatabaseUnavailable } from '../lib/kernel/errors.js'
import { proxiedGateway } from './fixtures/gateway.js'
import { findViolations } from './fixtures/invariants.js'
import { stillClock } from './fixtures/still-clock.js'

const sleep = async (ms: number) => await new Promise((resolve) => setTimeout(resolve, ms))

// Twice: with the plugin's own client as it is (its backend sees the client gone, client_connection_check_interval),
// and as a client without that check (a host's): then only the give-back rounds after the cut find the hold.
for (const [how, query] of [['', {}], [' (a client without client_connection_check_interval)', { client_connection_check_interval: '0' }]] as const) {
  t.test(`a hold whose connection is cut while it waits for its lock commits after its give-back ran: a refused call's hold is left, and swept as spent${how}`, async (t) => {
    const { app, sql, proxy, createBudget } = await proxiedGateway(t, { reservationTtlMs: 4000 }, query)
    const budget = await createBudget({ name: 'team', amount: '100' })
    await app.budgetTracker.recordUsage({ budgetId: budget.id, amount: '1', currency: 'USD', source: 'test' }) // the window's row exists
    // Another session holds the window row: the hold waits for it (within its 2 s lock_timeout).
    const locker = await sql.reserve()
    await locker`begin`
    await locker`select 1 from budget_status_cache where budget_id = ${budget.id} for update`
    proxy.arm('budget_hold_batch', { kind: 'mark' })
    const reserving = app.budgetIntegration.reserveCall({ team: 'team-a' }, '2', { requestId: 'cut-while-waiting' }).then(() => null, (error: unknown) => error)
    for (let i = 0; i < 100; i++) {
      const [row] = await sql<Array<{ n: number }>>`select count(*)::int as n from pg_stat_activity where wait_event_type = 'Lock' and query like '%budget_hold_batch%'`
      if (row!.n > 0) break
      await sleep(10)
    }
    proxy.cutMarked() // the client sees its connection gone; the backend still waits for the lock
    const refused = await reserving
    t.ok(isDatabaseUnavailable(refused), 'the caller is refused: the database is unavailable (a 503 at the gate)')
    await sleep(400) // the give-back by id runs now: it finds no hold (the backend has not committed it)
    await locker`commit`
    locker.release()
    await sleep(500) // the backend gets its lock and commits the hold of the refused call
    const left = await sql<Array<{ id: string }>>`select id from budget_reservations where request_id = 'cut-while-waiting'`
    t.equal(left.length, 0, `no hold is left for the refused call (found ${left.length})`)
    await sleep(4000) // past its TTL
    await app.budgetIntegration.sweepExpiredReservations()
    const status = await app.budgetTracker.getBudgetStatus(budget.id)
    t.equal(Number(status.currentAmount), 1, `the refused call is not charged: only the 1 recorded before (spent ${status.currentAmount})`)
    t.same(await findViolations(sql), [], 'the escrow invariants hold')
  })
}

t.test('a lease give-back whose reply is cut is sent again and gives back twice: the leased calls still running lose their cover, and a hard budget goes over its limit', async (t) => {
  const { app, sql, proxy, createBudget } = await proxiedGateway(t)
  await createBudget({ name: 'team', amount: '10', enforcement: 'hard' })
  const caller = { team: 'team-a' }
  const integration = app.budgetIntegration
  const still = stillClock(t) // the first call's hold leaves the line hot however long it takes
  const first = await still(async () => await integration.reserveCall(caller, '0.01'))
  const second = await integration.reserveCall(caller, '0.01')
  const third = await integration.reserveCall(caller, '0.01')
  t.ok(first.check.canProceed && second.check.canProceed && third.check.canProceed)
  const leaseRows = await sql<Array<{ amount: string }>>`select amount::text as amount from budget_reservations where lease`
  t.equal(leaseRows.length, 1, 'the second and third calls came from a lease')
  proxy.arm('budget_lease_return', { kind: 'cut-reply' })
  // The lease goes idle (2 s) while its two calls still run: what no call can use is given back, its reply cut.
  await sleep(3200)
  t.equal(proxy.cuts(), 1, 'the give-back\'s reply was dropped')
  const [lease] = await sql<Array<{ amount: string }>>`select amount::text as amount from budget_reservations where lease`
  t.equal(Number(lease!.amount), 0.02, `the lease row still covers its two running calls, 0.01 each (it holds ${lease!.amount})`)
  // Another call holds all the room left, then every call settles at no more than its estimate.
  const [window] = await sql<Array<{ room: string }>>`select (10 - current_amount - reserved_amount)::text as room from budget_status_cache`
  const filler = await integration.reserveCall(caller, window!.room)
  t.ok(filler.check.canProceed, `the room left (${window!.room}) is held`)
  t.match(await integration.settleCall(filler.reservationId!, window!.room), { outcome: 'recorded' })
  for (const call of [first, second, third]) t.match(await integration.settleCall(call.reservationId!, '0.01'), { outcome: 'recorded' })
  await app.close()
  const [spent] = await sql<Array<{ current: string }>>`select current_amount::text as current from budget_status_cache`
  t.ok(Number(spent!.current) <= 10, `the hard budget of 10 is not over its limit (spent ${spent!.current})`)
  t.same(await findViolations(sql), [], 'the escrow invariants hold')
})

t.test('a settlement whose reply comes after a hold measured its window is counted twice by the window ledger: a leased call is refused block-all that a hold admits', async (t) => {
  const { app, sql, proxy, createBudget } = await proxiedGateway(t)
  const team = await createBudget({ name: 'team', amount: '100', alerts: [{ threshold: 50, actions: ['block-all'] }] })
  await createBudget({ name: 'project', scopeType: 'project', scopeId: 'p', amount: '1000' })
  await app.budgetTracker.recordUsage({ budgetId: team.id, amount: '45', currency: 'USD', source: 'test' })
  const integration = app.budgetIntegration
  const leasedCaller = { team: 'team-a' }
  const heldCaller = { team: 'team-a', project: 'p' }
  const first = await stillClock(t)(async () => await integration.reserveCall(leasedCaller, '0.01')) // the line stays hot however long the hold takes
  const second = await integration.reserveCall(leasedCaller, '0.01')
  t.equal((await sql`select count(*)::int as n from budget_reservations where lease`)[0]!.n, 1, 'the second call came from a lease')
  const big = await integration.reserveCall(heldCaller, '3', { requestId: 'big-held' })
  t.ok(big.check.canProceed, 'a call of 3 holds on the other line (45 + 3 stays under the block-all threshold of 50)')
  // Its settlement commits; its reply is 600 ms late (a slow network, a busy client).
  proxy.arm('budget_settle_batch', { kind: 'delay-reply', ms: 600 })
  const settling = integration.settleCall(big.reservationId!, '3')
  for (let i = 0; i < 100; i++) {
    if ((await sql`select count(*)::int as n from budget_usage_records where idempotency_key = 'big-held'`)[0]!.n > 0) break
    await sleep(10)
  }
  // Meanwhile a hold on the same budget measures its window (the 3 settled included).
  const other = await integration.reserveCall(heldCaller, '0.01')
  t.ok(other.check.canProceed)
  t.match(await settling, { outcome: 'recorded' }, 'the late settlement is recorded')
  const expected = await integration.checkCaller(leasedCaller, '0.01')
  t.ok(expected.canProceed, `a read of the windows admits the call (spent ${expected.currentAmount ?? ''} of 100, block-all at 50)`)
  const leased = await integration.reserveCall(leasedCaller, '0.01')
  t.ok(leased.check.canProceed, `the leased call is admitted as a hold would be (got ${leased.check.code ?? 'admitted'}, spent ${leased.check.currentAmount ?? ''})`)
  t.equal(leased.check.currentAmount, expected.currentAmount, 'it reports the spend a read of the windows does')
  // The hot line keeps calling (every 250 ms, for 3 s: past the lease's 2 s idle time had it been idle): nothing measures the window again.
  let refusedLater = 0
  for (let i = 0; i < 12; i++) {
    await sleep(250)
    const again = await integration.reserveCall(leasedCaller, '0.01')
    if (!again.check.canProceed) refusedLater++
    else await integration.settleCall(again.reservationId!, '0.01')
  }
  t.equal(refusedLater, 0, `no later call on the hot line is refused while 48 of 100 is spent (${refusedLater} of 12 refused budget_blocked)`)
  for (const call of [first, second, other, leased]) if (call.reservationId !== null) await integration.settleCall(call.reservationId, '0.01')
  await app.close()
  t.same(await findViolations(sql), [], 'the escrow invariants hold')
})

t.test('two reservations of one request id: the second\'s settlement cut after its commit is answered recorded with the first\'s record, and the window ledger counts its cost again', async (t) => {
  const { app, sql, proxy, createBudget } = await proxiedGateway(t)
  await createBudget({ name: 'team', amount: '100' })
  await createBudget({ name: 'project', scopeType: 'project', scopeId: 'p', amount: '1000' })
  const integration = app.budgetIntegration
  const leasedCaller = { team: 'team-a' }
  const heldCaller = { team: 'team-a', project: 'p' }
  // A hot line on the team budget, leased.
  const warm = await integration.reserveCall(leasedCaller, '0.01')
  const leasedBefore = await integration.reserveCall(leasedCaller, '0.01')
  t.equal((await sql`select count(*)::int as n from budget_reservations where lease`)[0]!.n, 1, 'the team-only line is leased')
  // A library caller reserves twice under one request id (a retry); each is held on the other line.
  const firstTry = await integration.reserveCall(heldCaller, '2', { requestId: 'retried-request' })
  const secondTry = await integration.reserveCall(heldCaller, '2', { requestId: 'retried-request' })
  t.ok(firstTry.reservationId !== null && secondTry.reservationId !== null)
  const recorded = await integration.settleCall(firstTry.reservationId!, '1')
  t.match(recorded, { outcome: 'recorded' })
  // The second settles too (the caller did serve it): its statement commits, its reply is cut, and it is sent again.
  proxy.arm(secondTry.reservationId!, { kind: 'cut-reply' })
  const second = await integration.settleCall(secondTry.reservationId!, '1')
  t.equal(proxy.cuts(), 1, 'the second settlement\'s reply was dropped')
  t.equal((await sql`select count(*)::int as n from budget_usage_records where idempotency_key = 'retried-request'`)[0]!.n, 1, 'the request is recorded once')
  t.same(second, { outcome: 'already-recorded' }, `the second is answered already-recorded, as it is without the cut (got ${JSON.stringify(second)})`)
  const expected = await integration.checkCaller(leasedCaller, '0.01')
  const leased = await integration.reserveCall(leasedCaller, '0.01')
  t.equal((await sql`select count(*)::int as n from budget_reservations where not lease`)[0]!.n, 1, 'the call is leased (only the warm-up hold is held)')
  t.equal(leased.check.currentAmount, expected.currentAmount, `a leased admission reports the spend a read of the windows does (${expected.currentAmount ?? ''}; got ${leased.check.currentAmount ?? ''})`)
  for (const call of [warm, leasedBefore, leased]) await integration.settleCall(call.reservationId!, '0.01')
  await app.close()
  t.same(await findViolations(sql), [], 'the escrow invariants hold')
})

t.test('an unbudgeted call\'s record committed while its connection is cut is answered already-recorded, as another\'s replay', async (t) => {
  const { app, sql, proxy } = await proxiedGateway(t)
  proxy.arm('unbudgeted-cut-1', { kind: 'cut-reply', on: 'INSERT ' })
  const recorded = await app.budgetIntegration.recordUnbudgetedCall('0.5', { requestId: 'unbudgeted-cut-1' })
  t.equal(proxy.cuts(), 1, 'the insert\'s reply was dropped, and it was sent again')
  const records = await sql<Array<{ id: string }>>`select id from budget_usage_records where idempotency_key = 'unbudgeted-cut-1'`
  t.equal(records.length, 1, 'recorded once')
  t.same(recorded, { outcome: 'recorded', usageId: records[0]!.id }, `answered recorded with its own record (got ${JSON.stringify(recorded)})`)
  t.same(await findViolations(sql), [], 'the escrow invariants hold')
})
