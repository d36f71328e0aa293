// The distribution step on a database it left half done (a review's reproductions, test:citus): a rooted
// table a later migration adds after the distribution, and a distribution stopped after budget_definitions.
// Each run of the step distributes what is not yet and ends by checking that every rooted table is.
import t from 'tap'
import { distributeOnCitus } from '../lib/kernel/database/citus.js'
import { migrate } from '../lib/kernel/database/migrate.js'
import { createTestSql } from '../test/fixtures/database.js'

t.test('a rooted table left local after distribution: the step run again refuses, or distributes it', async (t) => {
  const { sql } = await createTestSql(t, { max: 1 })
  await migrate(sql)
  await distributeOnCitus(sql)
  // what a later migration would do: a new table whose rows belong to a tree
  await sql`create table budget_later_rows (budget_id uuid not null, root_id uuid not null, amount numeric(28, 10) not null)`

  const outcome = await distributeOnCitus(sql).then(() => 'accepted', (error: Error) => `refused: ${error.message}`)
  const [row] = await sql<Array<{ distributed: boolean }>>`
    select exists (select 1 from pg_dist_partition where logicalrelid = 'budget_later_rows'::regclass) as distributed`
  t.ok(outcome.startsWith('refused') || row!.distributed,
    `the step either refuses or distributes the new rooted table (outcome: ${outcome}; distributed: ${row!.distributed})`)
})

t.test('budget_definitions distributed, the rest not: the step run on it refuses, or finishes the job', async (t) => {
  const { sql } = await createTestSql(t, { max: 1 })
  await migrate(sql, undefined, { distribute: false }) // the tables left local, as the step found them before migrate() ran it
  // a distribution stopped after its first table (by hand, or by an older step): budget_definitions alone
  await sql.begin(async (tx) => {
    await tx.unsafe(`set local citus.enable_unsafe_triggers = on`)
    for (const row of await tx<Array<{ tbl: string, conname: string }>>`
      select conrelid::regclass::text as tbl, conname from pg_constraint where contype = 'f'
        and (confrelid = 'budget_definitions'::regclass) and conname <> 'budget_definitions_root_parent_fkey'`) {
      await tx.unsafe(`alter table ${row.tbl} drop constraint ${row.conname}`)
    }
    await tx`drop index budget_definitions_id_across_trees`
    await tx`select create_distributed_table('budget_definitions', 'root_id')`
  })
  const outcome = await distributeOnCitus(sql).then(() => 'accepted', (error: Error) => `refused: ${error.message}`)
  const local = await sql<Array<{ table: string }>>`
    select c.table_name as table from information_schema.columns c
    where c.table_schema = current_schema() and c.column_name = 'root_id'
      and not exists (select 1 from pg_dist_partition p where p.logicalrelid = c.table_name::regclass) order by 1`
  t.ok(outcome.startsWith('refused') || local.length === 0,
    `the step either refuses or distributes the rest (outcome: ${outcome}; rooted tables still local: ${local.length})`)
})
