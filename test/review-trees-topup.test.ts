// Review of 6a19965: a lease topped up by a second take whose line gained a budget (a row of a new tree), then
// a return retried under a number already applied to the older rows. A new row would start at returns_applied 0,
// with a trees list the older rows lack: a lease keeps the line of its first take, and a top-up on another one
// takes nothing (budget_lease_take, sql/functions/leases.sql).
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { twoTreeCalls } from './fixtures/two-tree-calls.js'

const setUp = twoTreeCalls

t.test('a top-up on a line with a budget the lease has no row for takes nothing; return number 1 retried moves nothing', async (t) => {
  const s = await setUp(t)
  const lease = randomUUID()
  t.equal(await s.takeLease(lease, '8', [s.org], [s.team, s.org]), '8', 'first take: team and org')
  await s.returnLease(lease, '8', false, 1, [s.org])
  t.equal(await s.takeLease(lease, '8', [s.user, s.org], s.budgets), null, 'second take, the line now with the user too: refused (a lease keeps its first line)')
  // return 1 sent again (its first try committed, its reply lost): applied before, so nothing moves
  await s.returnLease(lease, '8', false, 1, [s.user, s.org])
  const rows = await s.sql`select budget_id, trim_scale(amount)::text as amount, returns_applied, trees::text[] as trees from budget_reservations where id = ${lease} order by budget_id`
  t.same(rows.map((r) => r.budget_id).sort(), [s.team, s.org].sort(), 'no row on the user budget')
  t.same(rows.map((r) => r.amount), ['0', '0'], 'each row gave its 8 back once')
  for (const r of rows) t.same(r.trees, [s.org], `row ${r.budget_id as string}: its trees are the lease's one tree`)
  t.ok((await s.hold(randomUUID(), '100', [s.user], [s.user]))[0]!.fits, 'the user budget\'s whole room is free: the lease holds none of it')
  await s.returnLease(lease, '0', true, 2, [s.org])
  t.same(await s.broken(), [], 'no hard budget over its limit')
})

t.test('a top-up on the lease\'s own line adds to its rows, whose trees stay the lease\'s', async (t) => {
  const s = await setUp(t)
  const lease = randomUUID()
  t.equal(await s.takeLease(lease, '8', [s.user, s.org], s.budgets), '8', 'first take: the two trees')
  t.equal(await s.takeLease(lease, '8', [s.user, s.org], s.budgets), '8', 'second take on the same line')
  const rows = await s.sql`select budget_id, trim_scale(amount)::text as amount, trees::text[] as trees from budget_reservations where id = ${lease} order by budget_id`
  const all = [s.user, s.org].sort()
  for (const r of rows) {
    t.same([...(r.trees as string[])].sort(), all, `row ${r.budget_id as string}: trees lists both trees`)
    t.equal(r.amount, '16', `row ${r.budget_id as string}: both slices`)
  }
  await s.returnLease(lease, '0', true, 1, [s.user, s.org])
  t.same(await s.broken(), [], 'invariants')
})
