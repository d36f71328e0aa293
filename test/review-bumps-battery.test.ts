// Review of the trees' versions (sql/functions/definitions.sql): what a transaction does to a tree's budgets
// by hand, however it is shaped, bumps the tree by commit; a rolled-back one bumps nothing; the
// transaction-local list of touched trees is empty again on the pooled connection's next transaction.
import t from 'tap'
import postgres, { type Sql } from 'postgres'
import { buildGateway } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'

const versions = async (sql: Sql, ids: string[]) => {
  const rows = await sql<Array<{ id: string, version: string }>>`
    select r.id::text as id, coalesce(v.version, 0)::text as version from unnest(${ids}::uuid[]) r(id) left join budget_tree_versions v on v.root_id = r.id`
  return new Map(rows.map((row) => [row.id, Number(row.version)]))
}

t.test('savepoints, several statements, a delete, a rolled-back transaction, a pooled connection', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const roots: string[] = []
  for (const name of ['a', 'b', 'c', 'd', 'e']) roots.push((await gateway.createBudget({ name, scopeId: name, amount: '100' })).id)
  const [a, b, c, d, e] = roots as [string, string, string, string, string]
  // a child inserted by hand (no audit rows), so it can be deleted outright
  const kid = (await gateway.sql`insert into budget_definitions (name, scope_type, scope_id, parent_id, amount, currency, period, start_date)
    values ('kid', 'project', 'kid', ${e}, 10, 'USD', 'monthly', '2024-01-01') returning id::text as id`)[0]!.id as string
  const one = postgres(gateway.url, { max: 1, onnotice: () => {} })
  t.teardown(async () => await one.end())

  let before = await versions(gateway.sql, roots)
  await one.begin(async (tx) => {
    await tx`update budget_definitions set amount = 201 where id = ${a}`
    await tx.savepoint(async (sp) => {
      await sp`update budget_definitions set amount = 202 where id = ${b}`
      throw new Error('rolled back')
    }).catch(() => {})
    await tx.savepoint(async (sp) => {
      await sp`update budget_definitions set amount = 203 where id = ${c}`
    })
    await tx`update budget_definitions set description = 'x' where id = ${a}`
    await tx`delete from budget_definitions where id = ${kid}`
  })
  let after = await versions(gateway.sql, roots)
  t.ok(after.get(a)! > before.get(a)!, 'a: changed twice in the outer transaction, bumped')
  t.equal(after.get(b), before.get(b), 'b: changed only in a rolled-back savepoint, not bumped')
  t.ok(after.get(c)! > before.get(c)!, 'c: changed in a released savepoint, bumped')
  t.ok(after.get(e)! > before.get(e)!, 'e: a budget of its tree deleted, bumped')
  t.equal(after.get(d), before.get(d), 'd: untouched, not bumped')
  t.same((await one`select coalesce(current_setting('relaycore_budgets.touched_trees', true), '') as v`)[0]!.v, '', 'the next transaction on the connection starts with no tree named')

  // a bump fired inside a savepoint (SET CONSTRAINTS ALL IMMEDIATE) that is then rolled back: fired again at commit
  before = await versions(gateway.sql, roots)
  await one.begin(async (tx) => {
    await tx`update budget_definitions set amount = 204 where id = ${d}`
    await tx.savepoint(async (sp) => {
      await sp`set constraints all immediate`
      throw new Error('rolled back')
    }).catch(() => {})
  })
  after = await versions(gateway.sql, roots)
  t.ok(after.get(d)! > before.get(d)!, `d: bumped at commit though its bump ran in a rolled-back savepoint (${before.get(d)!} -> ${after.get(d)!})`)

  // a rolled-back transaction bumps nothing, even one whose bump ran before the rollback
  before = await versions(gateway.sql, roots)
  await one.begin(async (tx) => {
    await tx`update budget_definitions set amount = 205 where id = any(${roots}::uuid[])`
    await tx`set constraints all immediate`
    throw new Error('rolled back')
  }).catch(() => {})
  after = await versions(gateway.sql, roots)
  t.same([...after], [...before], 'nothing bumped for a rolled-back transaction')
  t.same((await one`select coalesce(current_setting('relaycore_budgets.touched_trees', true), '') as v`)[0]!.v, '', 'nothing named after the rollback')
  await checkInvariants(t, gateway.sql)
})

t.test('one statement changing 400 trees by hand bumps each once', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const rows = await gateway.sql<Array<{ id: string }>>`
    insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date)
    select 'r' || i, 'team', 'r' || i, 100, 'USD', 'monthly', '2024-01-01' from generate_series(1, 400) i returning id::text as id`
  const ids = rows.map((row) => row.id)
  const before = await versions(gateway.sql, ids)
  t.same([...new Set(before.values())], [1], 'each tree bumped once by its insert')
  await gateway.sql.begin(async (tx) => {
    await tx`update budget_definitions set amount = 300 where id = any(${ids}::uuid[])`
    await tx`update budget_definitions set amount = 301 where id = any(${ids}::uuid[])`
  })
  const after = await versions(gateway.sql, ids)
  t.same([...new Set(after.values())], [2], 'each tree bumped once more by the transaction that changed it twice')
  await checkInvariants(t, gateway.sql)
})

t.test('a budget deleted through the admin API bumps its tree', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const root = (await gateway.createBudget({ name: 'root', scopeId: 'root', amount: '100' })).id
  const kid = (await gateway.createBudget({ name: 'kid', scopeType: 'project', scopeId: 'kid', parentId: root, amount: '10' })).id
  const before = (await versions(gateway.sql, [root])).get(root)!
  const deleted = await gateway.app.inject({ method: 'DELETE', url: `${PREFIX}/${kid}`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
  t.ok(deleted.statusCode < 300, `deleted: ${deleted.statusCode} ${deleted.body}`)
  const after = (await versions(gateway.sql, [root])).get(root)!
  t.ok(after > before, `the tree bumped (${before} -> ${after})`)
  await checkInvariants(t, gateway.sql)
})
