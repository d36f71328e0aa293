// Review of the trees' versions (sql/functions/definitions.sql): a change made after
// `SET CONSTRAINTS ALL IMMEDIATE` must still bump its tree's version by commit.
import t from 'tap'
import { buildGateway } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'
import type { Sql } from 'postgres'

const treeVersion = async (sql: Sql, rootId: string) => Number((await sql`select coalesce(max(version), 0) as version from budget_tree_versions where root_id = ${rootId}`)[0]!.version)

t.test('SET CONSTRAINTS ALL IMMEDIATE, then a change: the tree is bumped by commit', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const a = await gateway.createBudget({ name: 'a', scopeId: 'a', amount: '100' })
  const before = await treeVersion(gateway.sql, a.id)
  await gateway.sql.begin(async (tx) => {
    await tx`set constraints all immediate`
    await tx`update budget_definitions set amount = 200 where id = ${a.id}`
  })
  t.ok(await treeVersion(gateway.sql, a.id) > before, `tree a bumped (before ${before}, after ${await treeVersion(gateway.sql, a.id)})`)
  await checkInvariants(t, gateway.sql)
})

t.test('a change, SET CONSTRAINTS ALL IMMEDIATE mid-transaction, then a change in another tree: both bumped', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const a = await gateway.createBudget({ name: 'a', scopeId: 'a', amount: '100' })
  const b = await gateway.createBudget({ name: 'b', scopeId: 'b', amount: '100' })
  const beforeA = await treeVersion(gateway.sql, a.id)
  const beforeB = await treeVersion(gateway.sql, b.id)
  await gateway.sql.begin(async (tx) => {
    await tx`update budget_definitions set amount = 200 where id = ${a.id}`
    await tx`set constraints all immediate`
    await tx`update budget_definitions set amount = 200 where id = ${b.id}`
  })
  const afterA = await treeVersion(gateway.sql, a.id)
  const afterB = await treeVersion(gateway.sql, b.id)
  t.ok(afterA > beforeA, `tree a bumped (${beforeA} -> ${afterA})`)
  t.ok(afterB > beforeB, `tree b bumped (${beforeB} -> ${afterB})`)
  await checkInvariants(t, gateway.sql)
})

t.test('SET CONSTRAINTS ALL IMMEDIATE, then one statement changing budgets of three trees: all three bumped', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const roots = [
    await gateway.createBudget({ name: 'a', scopeId: 'a', amount: '100' }),
    await gateway.createBudget({ name: 'b', scopeId: 'b', amount: '100' }),
    await gateway.createBudget({ name: 'c', scopeId: 'c', amount: '100' })
  ]
  const ids = roots.map((r) => r.id)
  const before = await Promise.all(ids.map(async (id) => await treeVersion(gateway.sql, id)))
  await gateway.sql.begin(async (tx) => {
    await tx`set constraints all immediate`
    await tx`update budget_definitions set amount = 300 where id = any(${ids}::uuid[])`
  })
  const after = await Promise.all(ids.map(async (id) => await treeVersion(gateway.sql, id)))
  t.same(ids.filter((_, i) => !(after[i]! > before[i]!)), [], `every tree bumped (before ${JSON.stringify(before)}, after ${JSON.stringify(after)})`)
  await checkInvariants(t, gateway.sql)
})

t.test('SET CONSTRAINTS ALL IMMEDIATE, then a block-all crossing recorded by hand: the tree is bumped by commit', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const root = await gateway.createBudget({ name: 'root', scopeId: 'root', amount: '1000' })
  const kid = await gateway.createBudget({ name: 'kid', scopeType: 'project', scopeId: 'kid', parentId: root.id, amount: '100', alerts: [{ threshold: 50, actions: ['block-all'] }] })
  const before = await treeVersion(gateway.sql, root.id)
  await gateway.sql.begin(async (tx) => {
    await tx`set constraints all immediate`
    await tx`insert into budget_alert_history (budget_id, period_start, threshold, basis, actions, spent, limit_amount, shadow)
             values (${kid.id}, date_trunc('month', now()), 50, 'current', array['block-all'], 60, 100, false)`
  })
  const [crossing] = await gateway.sql`select count(*)::int as n from budget_alert_history where budget_id = ${kid.id} and 'block-all' = any(actions)`
  t.equal(crossing!.n, 1, 'the crossing is recorded')
  const after = await treeVersion(gateway.sql, root.id)
  t.ok(after > before, `tree bumped by the block-all crossing (${before} -> ${after})`)
  await checkInvariants(t, gateway.sql)
})
