// The schema on a real Citus cluster (`npm run test:citus`): migrate() and then the distribution step
// (sql/citus/distribute.sql) on a fresh database of the coordinator and its workers.
import t from 'tap'
import { distributeOnCitus } from '../lib/kernel/database/citus.js'
import { migrate } from '../lib/kernel/database/migrate.js'
import { createTestSql } from '../test/fixtures/database.js'

const REFERENCE_TABLES = ['budget_definitions_version', 'budget_exchange_rates', 'budget_provider_cost_cursors', 'budget_provider_costs']

type Sql = Awaited<ReturnType<typeof createTestSql>>['sql']

/** Citus's metadata for every budget table: how it is distributed, by what, and with which tables. */
async function distribution (sql: Sql) {
  return await sql<Array<{ table: string, method: string, column: string | null, colocation: number }>>`
    select p.logicalrelid::text as table, p.partmethod as method, column_to_column_name(p.logicalrelid, p.partkey) as column,
           p.colocationid as colocation
    from pg_dist_partition p where p.logicalrelid::text like 'budget\_%' order by 1`
}

/** The tables of the current schema whose rows carry a root_id, budget_definitions among them. */
async function rootedTables (sql: Sql): Promise<string[]> {
  return (await sql<Array<{ table: string }>>`
    select table_name as table from information_schema.columns
    where table_schema = current_schema() and column_name = 'root_id' order by 1`).map((row) => row.table)
}

t.test('every table whose rows carry a root is distributed by root_id with budget_definitions; the shared ones are reference tables', async (t) => {
  const { sql } = await createTestSql(t, { max: 2 })
  await migrate(sql)
  await distributeOnCitus(sql)

  const rooted = await rootedTables(sql)
  t.ok(rooted.length >= 19, `${rooted.length} tables carry a root`)
  const tables = await distribution(sql)
  const byName = new Map(tables.map((row) => [row.table, row]))
  const definitions = byName.get('budget_definitions')
  t.same(definitions && { method: definitions.method, column: definitions.column }, { method: 'h', column: 'root_id' }, 'budget_definitions: hash on root_id')
  for (const table of rooted) {
    const row = byName.get(table)
    t.same(row && { method: row.method, column: row.column, colocation: row.colocation },
      { method: 'h', column: 'root_id', colocation: definitions?.colocation }, `${table}: by root_id, co-located with budget_definitions`)
  }
  t.same(tables.filter((row) => row.method === 'n').map((row) => row.table), REFERENCE_TABLES, 'reference tables')
  t.same(tables.map((row) => row.table).sort(), [...rooted, ...REFERENCE_TABLES].sort(), 'no other budget table is in Citus')

  const across = await sql`select conname from pg_constraint where conname like '%\_across\_trees'
                           union all select relname from pg_class where relname like '%\_across\_trees'`
  t.same(across, [], 'the keys only one database can hold are gone')

  const before = await distribution(sql)
  await distributeOnCitus(sql)
  t.same(await distribution(sql), before, 'run again, the step changes nothing')
})

t.test('every primary and unique key of a distributed table includes root_id, and so does every key between them', async (t) => {
  const { sql } = await createTestSql(t, { max: 1 })
  await migrate(sql)
  await distributeOnCitus(sql)
  const keys = await sql<Array<{ table: string, name: string, definition: string }>>`
    select c.conrelid::regclass::text as table, c.conname as name, pg_get_constraintdef(c.oid) as definition
    from pg_constraint c join pg_dist_partition p on p.logicalrelid = c.conrelid
    where p.partmethod = 'h' and c.contype in ('p', 'u', 'f') order by 1, 2`
  t.ok(keys.length > 40, `${keys.length} keys`)
  const withoutRoot = keys.filter((key) => !/\(([^)]*\b)?root_id\b/.test(key.definition))
  t.same(withoutRoot, [], 'none without root_id')
  const foreign = keys.filter((key) => key.definition.startsWith('FOREIGN KEY'))
  t.ok(foreign.every((key) => /^FOREIGN KEY \(root_id, /.test(key.definition) && /REFERENCES \w+\(root_id, /.test(key.definition)),
    'each foreign key names root_id first on both sides (Citus requires the same position)')
})

t.test('a tree\'s shards sit together: every table\'s shard for a root is on one node, and two trees can be on different nodes', async (t) => {
  const { sql } = await createTestSql(t, { max: 1 })
  await migrate(sql)
  await distributeOnCitus(sql)
  const rooted = await rootedTables(sql)
  const roots = Array.from({ length: 16 }, (_, i) => `00000000-0000-4000-8000-${String(i + 1).padStart(12, '0')}`)
  const nodes = new Set<string>()
  for (const root of roots) {
    const placements = await sql<Array<{ table: string, node: string }>>`
      select t.name as table, s.nodename || ':' || s.nodeport as node
      from unnest(${rooted}::text[]) as t(name)
      join citus_shards s on s.table_name = t.name::regclass
                         and s.shardid = get_shard_id_for_distribution_column(t.name, ${root}::uuid)`
    t.equal(placements.length, rooted.length, `root ${root}: a shard of every table`)
    const on = new Set(placements.map((placement) => placement.node))
    t.equal(on.size, 1, `root ${root}: all on ${[...on].join(', ')}`)
    for (const node of on) nodes.add(node)
  }
  t.ok(nodes.size >= 2, `16 trees spread over ${[...nodes].sort().join(', ')}`)
})
