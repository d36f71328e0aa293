import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { createInterface } from 'node:readline'
import postgres from 'postgres'
import t from 'tap'
import { migrate, readMigrations } from '../lib/kernel/database/migrate.js'
import { createTestDatabase, createTestSql } from './fixtures/database.js'

t.test('two processes migrating one database at once both come up, and each migration runs once', async (t) => {
  const url = await createTestDatabase(t)
  const script = new URL('./fixtures/migrate-process.ts', import.meta.url).pathname
  const processes = [1, 2].map(() => spawn(process.execPath, ['--import', 'tsx', script, url], { stdio: ['pipe', 'pipe', 'inherit'] }))
  const outputs = processes.map((child) => {
    const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]()
    return { next: async () => (await lines.next()).value as string }
  })
  t.same(await Promise.all(outputs.map(async (output) => await output.next())), ['ready', 'ready'])
  for (const child of processes) child.stdin.write('go\n')
  const applied = await Promise.all(outputs.map(async (output) => JSON.parse(await output.next()) as number[]))
  const exitCodes = await Promise.all(processes.map(async (child) => child.exitCode ?? (await once(child, 'exit'))[0]))
  t.same(exitCodes, [0, 0], 'both processes came up')
  const versions = (await readMigrations()).map((m) => m.version)
  t.same([...applied[0]!, ...applied[1]!].sort((a, b) => a - b), versions, 'between them they applied every migration exactly once')

  const sql = postgres(url, { max: 1 })
  t.teardown(async () => await sql.end())
  const rows = await sql`select version from budget_schema_migrations order by version`
  t.same(rows.map((row) => row.version), versions, 'and recorded each once')
})

t.test('a second run applies nothing', async (t) => {
  const { sql } = await createTestSql(t)
  t.same(await migrate(sql), (await readMigrations()).map((m) => m.version))
  t.same(await migrate(sql), [])
})

t.test('a failing migration rolls back whole and says which one failed', async (t) => {
  const { sql } = await createTestSql(t)
  await t.rejects(migrate(sql, new URL('./fixtures/broken-migrations/', import.meta.url)), {
    code: 'BUDGET_ERR_MIGRATION',
    message: /002_broken\.sql.*no_such_table/
  })
  const [row] = await sql`select to_regclass('budget_definitions') as definitions, to_regclass('half_done') as half, to_regclass('budget_schema_migrations') as log`
  t.same(row, { definitions: null, half: null, log: null }, 'nothing of the run is left')
})
