// migrate() on a Citus cluster (`npm run test:citus`): it finds the cluster and applies the distribution step
// itself, and it upgrades a database already distributed (function files and migrations run statement by
// statement, since Citus passes each DDL statement's text on to the workers; a function made again is
// delegated again).
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { migrate } from '../lib/kernel/database/migrate.js'
import { createHoldRepository } from '../lib/gate/hold-repository.js'
import { createLineRepository } from '../lib/gate/line-repository.js'
import { createTestSql } from '../test/fixtures/database.js'
import { nextSql } from '../test/fixtures/next-sql.js'

const delegated = async (sql: any) => (await sql`
  select p.proname as name from pg_dist_object o join pg_proc p on p.oid = o.objid
  where o.classid = 'pg_proc'::regclass and o.distribution_argument_index is not null order by 1`).map((row: { name: string }) => row.name)
const distributedTables = async (sql: any) => Number((await sql`select count(*)::int as n from pg_dist_partition where logicalrelid::text like 'budget\\_%'`)[0]!.n)

t.test('migrate() on a Citus cluster distributes the tables and delegates the gate\'s statements; run again, it changes nothing', async (t) => {
  const { sql } = await createTestSql(t, { max: 2 })
  const run = await migrate(sql)
  t.equal(run.distributed, true, 'it says it distributed')
  const tables = await distributedTables(sql)
  t.ok(tables >= 24, `${tables} budget tables in Citus's metadata`)
  const functions = await delegated(sql)
  t.same(functions, ['budget_hold_batch', 'budget_lease_renew', 'budget_lease_return', 'budget_lease_take', 'budget_line_in_trees', 'budget_rate_give_back',
    'budget_rate_take', 'budget_record_usage_in_trees', 'budget_settle_batch', 'budget_settle_leased', 'budget_sweep_trees'], 'the gate\'s statements delegated')
  const again = await migrate(sql)
  t.same(again, { versions: [], repeatables: [], distributed: true }, 'run again: nothing applied')
  t.equal(await distributedTables(sql), tables)
  t.same(await delegated(sql), functions)
})

t.test('an upgrade of a distributed database: a changed function file and a new migration run on it, and what was delegated stays delegated', async (t) => {
  const { sql } = await createTestSql(t, { max: 2 })
  await migrate(sql)
  const functions = await delegated(sql)
  // the next version's sql/: holds.sql changed (it drops and makes budget_hold_batch again), lines.sql changed,
  // and a migration that adds a column to a distributed table
  const { directory, version: next } = await nextSql(t, {
    changed: ['functions/holds.sql', 'functions/lines.sql'],
    migration: 'alter table budget_reservations add column next_note text;\ncomment on column budget_reservations.next_note is \'the next version; its ; in a string\';\n'
  })
  const run = await migrate(sql, directory)
  t.same(run, { versions: [next], repeatables: ['holds.sql', 'lines.sql'], distributed: true }, 'the migration and both files applied on the distributed database')
  t.same(await delegated(sql), functions, 'every gate statement still delegated (budget_hold_batch made again, and delegated again)')
  const [column] = await sql<Array<{ n: number }>>`select count(*)::int as n from information_schema.columns where table_name = 'budget_reservations' and column_name = 'next_note'`
  t.equal(column!.n, 1, 'the new column on the distributed table')

  // the gate's statements on the upgraded database: a budget's line loaded on its tree's node, and a hold on it
  const root = randomUUID()
  await sql`insert into budget_definitions (id, root_id, name, scope_type, scope_id, amount, currency, period, start_date, enforcement)
            values (${root}, ${root}, 'org', 'organization', 'acme', 10, 'USD', 'monthly', '2024-01-01', 'hard')`
  const { line } = await createLineRepository(sql).loadLine({ scopes: [{ type: 'organization', id: 'acme' }], model: 'gpt-4o-mini' }, 'USD', { byTree: true })
  t.same(line.map((budget) => budget.budgetId), [root], 'the line')
  const [held] = await createHoldRepository(sql).holdBatch([{ reservationId: randomUUID(), requestId: randomUUID(), amount: '1', line }], 'USD', 60_000)
  t.ok(held!.reserved, 'a hold')
})
