// Review of fb798f9 (the gate's two rare reads name their line's trees): leaseHeld (a leased call released,
// was its lease swept?) and findSettledRecord (a settlement sent again after a connection cut). Here through
// the plugin's gate, on a caller whose line spans two trees (a user budget that is its own root; a team under
// an organization), each case with the user's root sorting before and after the organization's, so that the
// call's usage record lands once in the first tree the settlement names and once in the second. The answers,
// the records and the escrow invariants are what they were before the change.
import t from 'tap'
import { proxiedGateway } from './fixtures/gateway.js'
import { findViolations } from './fixtures/invariants.js'

const sleep = async (ms: number) => await new Promise((resolve) => setTimeout(resolve, ms))

// Fixed ids, so the order of the two roots (the trees a settlement names, sorted) is chosen, not drawn.
const LOW = '10000000-0000-4000-8000-000000000001'
const HIGH = 'f0000000-0000-4000-8000-000000000002'
const ORDERS = [
  { name: 'the user\'s root first', user: LOW, org: HIGH },
  { name: 'the organization\'s root first', user: HIGH, org: LOW }
]
const caller = { user: 'ada', team: 'platform' }

async function twoTreeGateway (t: Parameters<typeof proxiedGateway>[0], ids: { user: string, org: string }) {
  const gateway = await proxiedGateway(t)
  const { sql } = gateway
  await sql`insert into budget_definitions (id, name, scope_type, scope_id, amount, currency, period, start_date, enforcement)
            values (${ids.user}, 'user', 'user', 'ada', 100, 'USD', 'monthly', '2024-01-01', 'hard')`
  await sql`insert into budget_definitions (id, name, scope_type, scope_id, amount, currency, period, start_date, enforcement)
            values (${ids.org}, 'org', 'organization', 'acme', 100, 'USD', 'monthly', '2024-01-01', 'hard')`
  await sql`insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date, enforcement, parent_id)
            values ('team', 'team', 'platform', 100, 'USD', 'monthly', '2024-01-01', 'hard', ${ids.org})`
  const [team] = await sql<Array<{ id: string }>>`select id from budget_definitions where name = 'team'`
  /** The root of a usage record (null: none). */
  const rootOf = async (usageId: string) => (await sql<Array<{ root: string }>>`select root_id::text as root from budget_usage_records where id = ${usageId}`)[0]?.root ?? null
  /**
   * A call admitted from the line's lease: calls are reserved (and a held one settled) until one comes from the
   * lease (no hold row under its id), at most 20 tries, so a slow first take does not leave the case untested.
   * Each try under a request id of its own (`${prefix}-${try}`): the leased one's is returned with it.
   */
  const leasedCall = async (prefix: string) => {
    for (let i = 0; i < 20; i++) {
      const requestId = `${prefix}-${i}`
      const reserved = await gateway.app.budgetIntegration.reserveCall(caller, '0.01', { requestId })
      if (!reserved.check.canProceed || reserved.reservationId === null) throw new Error('refused')
      const [row] = await sql<Array<{ n: number }>>`select count(*)::int as n from budget_reservations where id = ${reserved.reservationId} and not lease`
      if (row!.n === 0) return { ...reserved, requestId }
      await gateway.app.budgetIntegration.settleCall(reserved.reservationId, '0.01')
    }
    throw new Error('no call came from a lease in 20 tries')
  }
  return { ...gateway, team: team!.id, rootOf, leasedCall }
}

for (const order of ORDERS) {
  t.test(`${order.name}: a hold's settlement committed while its connection is cut is answered recorded, with its own record`, async (t) => {
    const { app, sql, proxy, rootOf } = await twoTreeGateway(t, order)
    const integration = app.budgetIntegration
    const held = await integration.reserveCall(caller, '2', { requestId: 'two-tree-hold' })
    t.ok(held.check.canProceed && held.reservationId !== null, 'held')
    const roots = (await sql<Array<{ root: string }>>`select distinct root_id::text as root from budget_reservations where id = ${held.reservationId!} order by 1`).map((r) => r.root)
    t.same(roots, [LOW, HIGH], 'the hold has rows in both trees')
    proxy.arm(held.reservationId!, { kind: 'cut-reply' })
    const settled = await integration.settleCall(held.reservationId!, '1.5')
    t.equal(proxy.cuts(), 1, 'the settlement committed and its reply was cut, then it was sent again')
    const records = await sql<Array<{ id: string }>>`select id from budget_usage_records where idempotency_key = 'two-tree-hold'`
    t.equal(records.length, 1, 'recorded once')
    t.same(settled, { outcome: 'recorded', usageId: records[0]?.id }, `answered recorded with its own record (got ${JSON.stringify(settled)})`)
    t.comment(`the record is in the ${await rootOf(records[0]!.id) === LOW ? 'first' : 'second'} tree the settlement names`)
    t.same(await findViolations(sql), [], 'the escrow invariants hold')
  })

  t.test(`${order.name}: a hold given back while its connection is cut is answered released`, async (t) => {
    const { app, sql, proxy } = await twoTreeGateway(t, order)
    const held = await app.budgetIntegration.reserveCall(caller, '2', { requestId: 'two-tree-release' })
    proxy.arm(held.reservationId!, { kind: 'cut-reply' })
    t.same(await app.budgetIntegration.releaseCall(held.reservationId!), { outcome: 'released' })
    t.equal(proxy.cuts(), 1)
    t.same(await findViolations(sql), [])
  })

  t.test(`${order.name}: a first try on the team's line and a second on the two-tree line under one request id: the second, cut after its commit, is answered recorded with its own record`, async (t) => {
    const { app, sql, proxy } = await twoTreeGateway(t, order)
    const integration = app.budgetIntegration
    // the first try on the team's line alone (the organization's tree), the second on the two-tree line
    const firstTry = await integration.reserveCall({ team: 'platform' }, '2', { requestId: 'two-tree-retried' })
    const secondTry = await integration.reserveCall(caller, '2', { requestId: 'two-tree-retried' })
    t.match(await integration.settleCall(firstTry.reservationId!, '1'), { outcome: 'recorded' })
    // without the cut: what the second's statement says
    proxy.arm(secondTry.reservationId!, { kind: 'cut-reply' })
    const second = await integration.settleCall(secondTry.reservationId!, '1')
    t.equal(proxy.cuts(), 1)
    const records = await sql<Array<{ id: string, budget: string }>>`select id, budget_id::text as budget from budget_usage_records where idempotency_key = 'two-tree-retried' order by recorded_at`
    // The second try records on its most specific budget, the user's (another budget than the first's):
    // recorded, with its own record, found by its id in the user's tree.
    t.equal(records.length, 2, 'each try recorded on its own most specific budget')
    t.same(second, { outcome: 'recorded', usageId: records[1]?.id }, `the second is answered recorded with its own record (got ${JSON.stringify(second)})`)
    t.same(await findViolations(sql), [])
  })

  t.test(`${order.name}: a reservation on the user's line alone, then one on the two-tree line under its request id, cut after its commit: already-recorded`, async (t) => {
    const { app, sql, proxy, rootOf } = await twoTreeGateway(t, order)
    const integration = app.budgetIntegration
    const firstTry = await integration.reserveCall({ user: 'ada' }, '2', { requestId: 'two-tree-again' })
    const secondTry = await integration.reserveCall(caller, '2', { requestId: 'two-tree-again' })
    const first = await integration.settleCall(firstTry.reservationId!, '1')
    t.match(first, { outcome: 'recorded' })
    proxy.arm(secondTry.reservationId!, { kind: 'cut-reply' })
    const second = await integration.settleCall(secondTry.reservationId!, '1')
    t.equal(proxy.cuts(), 1)
    const records = await sql<Array<{ id: string }>>`select id from budget_usage_records where idempotency_key = 'two-tree-again'`
    t.equal(records.length, 1, 'the request is recorded once, on the user\'s budget')
    t.equal(await rootOf(records[0]!.id), order.user, 'in the user\'s tree')
    t.same(second, { outcome: 'already-recorded' }, `the second is answered already-recorded, as without the cut (got ${JSON.stringify(second)})`)
    t.same(await findViolations(sql), [])
  })

  t.test(`${order.name}: a leased call's settlement committed while its connection is cut is answered recorded, with its own record`, async (t) => {
    const { app, sql, proxy, rootOf, leasedCall } = await twoTreeGateway(t, order)
    const integration = app.budgetIntegration
    const leased = await leasedCall('two-tree-leased')
    const leaseRoots = (await sql<Array<{ root: string }>>`select distinct root_id::text as root from budget_reservations where lease order by 1`).map((r) => r.root)
    t.same(leaseRoots, [LOW, HIGH], 'the second call came from a lease with rows in both trees')
    proxy.arm('budget_settle_leased', { kind: 'cut-reply' })
    const settled = await integration.settleCall(leased.reservationId!, '0.008')
    t.equal(proxy.cuts(), 1)
    const records = await sql<Array<{ id: string }>>`select id from budget_usage_records where idempotency_key = ${leased.requestId}`
    t.equal(records.length, 1, 'recorded once')
    t.same(settled, { outcome: 'recorded', usageId: records[0]?.id }, `answered recorded with its own record (got ${JSON.stringify(settled)})`)
    t.comment(`the record is in the ${await rootOf(records[0]!.id) === LOW ? 'first' : 'second'} tree the settlement names`)
    await app.close()
    t.same(await findViolations(sql), [], 'the escrow invariants hold once the lease is given back')
  })

  t.test(`${order.name}: a leased call released is given back to its lease while its rows are there, and answered expired once they were swept`, async (t) => {
    const { app, sql, leasedCall } = await twoTreeGateway(t, order)
    const integration = app.budgetIntegration
    const a = await leasedCall('a')
    const b = await leasedCall('b')
    const c = await leasedCall('c')
    t.equal((await sql`select count(*)::int as n from budget_reservations where not lease`)[0]!.n, 0, 'a, b and c came from the lease')
    t.same(await integration.releaseCall(a.reservationId!), { outcome: 'released' }, 'the lease is held: released')
    // Another process's sweeper counts the lease (its rows in both trees) while this process still admits from it.
    await sql`update budget_reservations set expires_at = now() - interval '1 second' where lease`
    const [swept] = await sql<Array<{ n: number }>>`select budget_sweep_expired(100) as n`
    t.equal(swept!.n, 1, 'the lease was swept')
    t.same(await integration.releaseCall(b.reservationId!), { outcome: 'expired' }, 'swept: expired (counted at its estimate)')
    t.same(await integration.settleCall(c.reservationId!, '0.01'), { outcome: 'expired' }, 'a charge on the swept lease: expired')
    await app.close()
    await sleep(50)
    t.same(await findViolations(sql), [], 'the escrow invariants hold')
  })
}
