// Review of 6a19965 on the Citus cluster: a lease topped up by a take whose line gained a tree would have left the
// older rows' trees list without it, and a settlement told the old tree only would have missed the new tree's row.
// A lease keeps the line of its first take: such a top-up takes nothing (budget_lease_take). The line: test/fixtures/two-tree-cluster.ts.
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { BOTH, ORG, TEAM, twoTreeStatements as setUp } from '../test/fixtures/two-tree-cluster.js'


t.test('a top-up on a line that gained the user tree takes nothing; the lease, settled and returned on its own tree, counts its call there', async (t) => {
  const s = await setUp(t)
  const lease = randomUUID()
  t.equal(await s.takeLease(lease, '8', [ORG], [TEAM, ORG]), '8', 'first take: team and organization')
  t.equal(await s.takeLease(lease, '8', BOTH), null, 'second take, the line now with the user: refused (a lease keeps its first line)')
  await s.settleLeased(lease, 'r1', '5', [ORG])
  await s.returnLease(lease, '0', true, 1, [ORG])
  const left = await s.sql`select count(*)::int as n from budget_reservations where id = ${lease}`
  t.equal(left[0]!.n, 0, 'the final return ended every row of the lease')
  t.same(await s.spent(), { user: '0', team: '5', org: '5' }, 'the call\'s 5 counts on the budgets of its lease, the team and the organization')
  t.same(await s.broken(), [], 'invariants')
})
