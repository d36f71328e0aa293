// The upgrade path: a database made by the 24 migrations the baseline folds (sql/ at FOLD_COMMIT, read
// from git) reaches, through migrate(), the schema a new database gets, compared as pg_dump --schema-only
// prints them. Needs git with the repository's history, and a pg_dump at least as new as the server.
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import t from 'tap'
import { migrate, readMigrations, readRepeatables } from '../lib/kernel/database/migrate.js'
import { createTestSql } from './fixtures/database.js'
import { foldedMigrations, migrateFolded } from './fixtures/folded-migrations.js'

const run = promisify(execFile)

/**
 * The schema as pg_dump prints it. Normalised: only the \restrict and \unrestrict lines, which carry a key
 * pg_dump draws at random for each dump. The rows of budget_schema_migrations and budget_schema_repeatables
 * are data, not in a schema-only dump; the test compares them itself.
 */
async function schema (url: string): Promise<string> {
  const { stdout } = await run('pg_dump', ['--schema-only', url], { maxBuffer: 64 * 1024 * 1024 })
  return stdout.split('\n').filter((line) => !/^\\(un)?restrict /.test(line)).join('\n')
}

t.test('a database the folded migrations made reaches the schema of a new one, and keeps its data', async (t) => {
  const fresh = await createTestSql(t, { max: 1 })
  await migrate(fresh.sql)

  const { url, sql } = await createTestSql(t, { max: 1 })
  t.same(await migrateFolded(sql), (await foldedMigrations()).map((m) => m.version), 'the earlier version made it, 001 to 026')
  const [budget] = await sql`insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date)
    values ('team', 'team', 'team-a', 100, 'USD', 'annual', '2024-01-01') returning id`
  await sql`insert into budget_usage_records (budget_id, amount, currency, idempotency_key) values (${budget!.id}, 2, 'USD', 'before')`
  const [user] = await sql`insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date, parent_id)
    values ('user', 'user', 'alice', 10, 'USD', 'monthly', '2024-01-01', ${budget!.id}) returning id`

  const repeatables = (await readRepeatables()).map((file) => file.name)
  // The migrations written after the baseline (002 on) run as on any database at the baseline.
  const later = (await readMigrations()).filter((migration) => migration.version > 1)
  t.same(await migrate(sql), { versions: later.map((migration) => migration.version), repeatables }, 'the baseline is recorded, not run; later migrations and every function file run')
  t.same(await sql`select version, name from budget_schema_migrations order by version`, [{ version: 1, name: '001_baseline.sql' }, ...later.map(({ version, name }) => ({ version, name }))],
    'the folded migrations are recorded as the baseline')
  t.same((await sql`select name from budget_schema_repeatables order by name`).map((row) => row.name), repeatables)
  t.equal(await schema(url), await schema(fresh.url), 'pg_dump --schema-only prints the same schema as for a new database')
  t.same(await migrate(sql), { versions: [], repeatables: [] }, 'and a second run applies nothing')
  t.same(await sql`select id, root_id from budget_definitions order by name`, [{ id: budget!.id, root_id: budget!.id }, { id: user!.id, root_id: budget!.id }],
    'each budget carries its tree\'s root: a root its own id, a child its parent\'s')

  // the usage trigger the files define counts on top of what the earlier one counted
  await sql`insert into budget_usage_records (budget_id, amount, currency, idempotency_key) values (${budget!.id}, 3, 'USD', 'after')`
  const [row] = await sql`select current_amount::text as spent, usage_count::int as calls from budget_status_cache where budget_id = ${budget!.id}`
  t.same(row, { spent: '5.0000000000', calls: 2 })
})

t.test('a database the folded migrations brought only part of the way is refused, saying what to do, and left as it was', async (t) => {
  const { sql } = await createTestSql(t, { max: 1 })
  await migrateFolded(sql, { to: 17 })
  const before = await sql`select version, name from budget_schema_migrations order by version`
  await t.rejects(migrate(sql), {
    code: 'BUDGET_ERR_MIGRATION',
    message: /001_baseline\.sql.*up to 016_lease_integrity\.sql: 16 of the 24 migrations.*missing 018_usage_keys_and_batch_checks\.sql, 019_forecasts_digests_rates\.sql, 020_alerts_follow_definitions\.sql and 5 more.*e31f161 first/
  })
  t.same(await sql`select version, name from budget_schema_migrations order by version`, before, 'its migrations are as they were')
  const [row] = await sql`select to_regclass('budget_schema_repeatables') as repeatables, to_regclass('budget_decision_log') as decisions`
  t.same(row, { repeatables: null, decisions: null }, 'nothing of the run is left')
})
