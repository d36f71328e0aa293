// The definitions' versions on a real Citus cluster (`npm run test:citus`): what the triggers on a tree's
// rows bump runs on the tree's shard, and the global version is bumped from the coordinator
// (sql/functions/definitions.sql). Before each tree had its own version, a change to a budget on the
// distributed schema failed at commit: its trigger wrote the global row, a reference table, from a shard.
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { distributeOnCitus } from '../lib/kernel/database/citus.js'
import { migrate } from '../lib/kernel/database/migrate.js'
import { createTestSql } from '../test/fixtures/database.js'

t.test('a change to a budget, and a crossing that does more than notify, bump their tree\'s version on its shard; the global one moves from the coordinator', async (t) => {
  const { sql } = await createTestSql(t, { max: 1 })
  await migrate(sql)
  await distributeOnCitus(sql)
  const treeVersion = async (root: string) => (await sql<Array<{ version: string | null }>>`
    select max(version)::text as version from budget_tree_versions where root_id = ${root}`)[0]!.version
  const globalVersion = async () => (await sql<Array<{ version: string }>>`select version::text from budget_definitions_version`)[0]!.version

  const [a, b] = [randomUUID(), randomUUID()]
  for (const root of [a, b]) {
    await sql`insert into budget_definitions (id, root_id, name, scope_type, scope_id, amount, currency, period, start_date)
              values (${root}, ${root}, ${root}, 'organization', ${root}, 100, 'USD', 'monthly', '2024-01-01')`
  }
  t.same([await treeVersion(a), await treeVersion(b)], ['1', '1'], 'each tree\'s create bumped its own version')
  for (const root of [a, b]) {
    const nodes = await sql<Array<{ table: string, node: string }>>`
      select t.name as table, s.nodename || ':' || s.nodeport as node
      from unnest(array['budget_definitions', 'budget_tree_versions']) as t(name)
      join citus_shards s on s.table_name = t.name::regclass and s.shardid = get_shard_id_for_distribution_column(t.name, ${root}::uuid)`
    t.equal(new Set(nodes.map((row) => row.node)).size, 1, `tree ${root}: its version's row on the node of its budgets (${nodes.map((row) => row.node).join(', ')})`)
  }

  const child = randomUUID()
  await sql.begin(async (tx) => {
    await tx`insert into budget_definitions (id, root_id, parent_id, name, scope_type, scope_id, amount, currency, period, start_date)
             values (${child}, ${a}, ${a}, 'team', 'team', 'platform', 50, 'USD', 'monthly', '2024-01-01')`
    await tx`update budget_definitions set amount = 60 where root_id = ${a} and id = ${child}`
  })
  t.equal(await treeVersion(a), '2', 'a child\'s create and update in one transaction: one bump of its root\'s tree, at commit')
  t.equal(await treeVersion(b), '1', 'the other tree\'s version did not move')

  const global = await globalVersion()
  await sql`select budget_definitions_bump()`
  t.equal(await globalVersion(), String(BigInt(global) + 1n), 'the global version is bumped from the coordinator')

  await sql`insert into budget_alert_history (budget_id, root_id, period_start, threshold, basis, actions, spent, limit_amount)
            values (${b}, ${b}, now(), 50, 'current', array['block-all'], 60, 100)`
  t.equal(await treeVersion(b), '2', 'a block-all crossing bumped its tree\'s version')
  await sql`insert into budget_alert_history (budget_id, root_id, period_start, threshold, basis, actions, spent, limit_amount)
            values (${b}, ${b}, now(), 10, 'current', array['notify'], 60, 100)`
  t.equal(await treeVersion(b), '2', 'a crossing that only notifies did not')
})
