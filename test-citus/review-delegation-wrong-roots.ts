// On the Citus cluster (`npm run test:citus`): test/review-delegation-wrong-roots.test.ts's cases where the trees a
// caller names (p_roots) are not the trees of the rows, on a distributed database, each call delegated by its
// p_root. The line: test/fixtures/two-tree-cluster.ts.
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { BOTH, ORG, TEAM, USER, twoTreeStatements as setUp } from '../test/fixtures/two-tree-cluster.js'

t.test('budget_lease_take told one tree, or a tree not the line\'s: no lease (on Citus the lock count tells)', async (t) => {
  const s = await setUp(t)
  t.ok(await s.hold(randomUUID(), '96', [TEAM, ORG]), '96 held on the team and organization')
  t.equal(await s.takeLease(randomUUID(), '8', [USER]), null, 'the user\'s tree only: no lease')
  t.equal(await s.takeLease(randomUUID(), '1000', [randomUUID()]), null, 'another tree: no lease')
  t.same(await s.broken(), [], 'invariants')
})

t.test('budget_settle_leased told only the user\'s tree, then the lease returned whole: the call counts on every budget of its lease', async (t) => {
  const s = await setUp(t)
  const lease = randomUUID()
  t.equal(await s.takeLease(lease, '8', BOTH), '8', 'a slice of 8')
  const [settled] = await s.settleLeased(lease, 'r1', '5', [USER])
  t.ok(settled!.lease_found, 'answered as found')
  await s.returnLease(lease, '0', true, 1, BOTH)
  t.same(await s.broken(), [], 'invariants')
  t.same(await s.spent(), { user: '5', team: '5', org: '5' }, 'the call\'s 5 counts on every budget of its lease')
})

t.test('budget_lease_return told one tree, then sent again with both under the same number', async (t) => {
  const s = await setUp(t)
  const lease = randomUUID()
  t.equal(await s.takeLease(lease, '8', BOTH), '8', 'a slice of 8')
  await s.returnLease(lease, '3', false, 1, [USER])
  await s.returnLease(lease, '3', false, 1, BOTH)
  const rows = await s.sql`select budget_id, trim_scale(amount)::text as amount from budget_reservations where id = ${lease} order by budget_id`
  t.same(rows.map((r) => r.amount), ['5', '5', '5'], 'return number 1 applied once on every row')
})

t.test('budget_settle_batch told only the user\'s tree: recorded once, at its cost on every budget', async (t) => {
  const s = await setUp(t)
  const id = randomUUID()
  t.ok(await s.hold(id, '1'), 'held 1')
  t.equal((await s.settle(id, '5', [USER])).length, 1, 'answered as settled')
  await s.sql`update budget_reservations set expires_at = now() - interval '1 second'`
  await s.sql`select budget_sweep_expired(100)`
  const records = await s.sql`select count(*)::int as n from budget_usage_records where idempotency_key = ${`req-${id}`}`
  t.equal(records[0]!.n, 1, 'the call recorded once')
  t.same(await s.spent(), { user: '5', team: '5', org: '5' }, 'its actual cost on every budget')
})
