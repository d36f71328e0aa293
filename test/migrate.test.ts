import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { pathToFileURL } from 'node:url'
import postgres from 'postgres'
import t from 'tap'
import { toUnits } from '../lib/kernel/money.js'
import { migrate, readMigrations, readRepeatables, type MigrationRun } from '../lib/kernel/database/migrate.js'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { createTestDatabase, createTestSql } from './fixtures/database.js'
import { buildGateway } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'

interface Teardown { teardown: (fn: () => unknown) => void }

/** An sql/ directory of its own: migrations/ and functions/ holding the given files. */
async function sqlDirectory (t: Teardown, files: { migrations: Record<string, string>, functions: Record<string, string> }): Promise<URL> {
  const root = await mkdtemp(join(tmpdir(), 'budgets-sql-'))
  t.teardown(async () => await rm(root, { recursive: true }))
  for (const kind of ['migrations', 'functions'] as const) {
    await mkdir(join(root, kind))
    for (const [name, text] of Object.entries(files[kind])) await writeFile(join(root, kind, name), text)
  }
  return pathToFileURL(`${root}/`)
}

/** A file's statements without their comments and function bodies. */
function statements (text: string): string {
  return text.replace(/\$\$[\s\S]*?\$\$/g, '$$$$').replace(/--.*$/gm, '')
}

const TABLE = 'create table counted (id int primary key);\n'
const COUNT = 'create or replace function counted_rows() returns bigint language sql stable as $$ select count(*) from counted $$;\n'

t.test('two processes migrating one database at once both come up, and each file runs once', async (t) => {
  const url = await createTestDatabase(t)
  const script = new URL('./fixtures/migrate-process.ts', import.meta.url).pathname
  const processes = [1, 2].map(() => spawn(process.execPath, ['--import', 'tsx', script, url], { stdio: ['pipe', 'pipe', 'inherit'] }))
  const outputs = processes.map((child) => {
    const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]()
    return { next: async () => (await lines.next()).value as string }
  })
  t.same(await Promise.all(outputs.map(async (output) => await output.next())), ['ready', 'ready'])
  for (const child of processes) child.stdin.write('go\n')
  const runs = await Promise.all(outputs.map(async (output) => JSON.parse(await output.next()) as MigrationRun))
  const exitCodes = await Promise.all(processes.map(async (child) => child.exitCode ?? (await once(child, 'exit'))[0]))
  t.same(exitCodes, [0, 0], 'both processes came up')
  const versions = (await readMigrations()).map((m) => m.version)
  const repeatables = (await readRepeatables()).map((file) => file.name)
  t.same(runs.flatMap((run) => run.versions).sort((a, b) => a - b), versions, 'between them they applied every migration exactly once')
  t.same(runs.flatMap((run) => run.repeatables).sort(), repeatables, 'and every repeatable file exactly once')

  const sql = postgres(url, { max: 1 })
  t.teardown(async () => await sql.end())
  t.same((await sql`select version from budget_schema_migrations order by version`).map((row) => row.version), versions, 'and recorded each once')
  t.same((await sql`select name from budget_schema_repeatables order by name`).map((row) => row.name), repeatables)
})

t.test('a second run applies nothing', async (t) => {
  const { sql } = await createTestSql(t)
  t.same(await migrate(sql), { versions: (await readMigrations()).map((m) => m.version), repeatables: (await readRepeatables()).map((file) => file.name) })
  t.same(await migrate(sql), { versions: [], repeatables: [] })
})

t.test('a failing migration rolls back whole and says which one failed', async (t) => {
  const { sql } = await createTestSql(t)
  const directory = await sqlDirectory(t, {
    migrations: { '001_counted.sql': TABLE, '002_broken.sql': '-- fails halfway: the table it creates must not survive\ncreate table half_done (id int);\nselect * from no_such_table;\n' },
    functions: { 'counted.sql': COUNT }
  })
  await t.rejects(migrate(sql, directory), { code: 'BUDGET_ERR_MIGRATION', message: /migrations\/002_broken\.sql.*no_such_table/ })
  const [row] = await sql`select to_regclass('counted') as counted, to_regclass('half_done') as half, to_regclass('budget_schema_migrations') as log`
  t.same(row, { counted: null, half: null, log: null }, 'nothing of the run is left')
})

t.test('a repeatable file that fails, or defines a body that does not hold, rolls back the whole run and is named', async (t) => {
  const { sql } = await createTestSql(t)
  const cases = {
    'a statement that fails': ['create or replace function broken() returns int language sql as $$ select 1 $$;\nselect * from no_such_table;\n', /functions\/b-broken\.sql.*no_such_table/],
    'a SQL body on a missing table': ['create or replace function broken() returns bigint language sql as $$ select count(*) from no_such_table $$;\n', /functions\/b-broken\.sql.*broken\(\).*no_such_table/],
    'a PL/pgSQL body that does not parse': ['create or replace function broken() returns int language plpgsql as $$ begin retrun 1; end $$;\n', /functions\/b-broken\.sql.*broken\(\).*syntax error/]
  } as const
  for (const [what, [text, message]] of Object.entries(cases)) {
    const directory = await sqlDirectory(t, { migrations: { '001_counted.sql': TABLE }, functions: { 'a-counted.sql': COUNT, 'b-broken.sql': text } })
    await t.rejects(migrate(sql, directory), { code: 'BUDGET_ERR_MIGRATION', message }, what)
    const [row] = await sql`select to_regclass('counted') as counted, to_regprocedure('counted_rows()') as fn, to_regclass('budget_schema_repeatables') as log`
    t.same(row, { counted: null, fn: null, log: null }, `${what}: nothing of the run is left`)
  }
})

t.test('a repeatable file runs again when its text changes, and only then; a file gone goes from the records', async (t) => {
  const { sql } = await createTestSql(t)
  const first = await sqlDirectory(t, { migrations: { '001_counted.sql': TABLE }, functions: { 'counted.sql': COUNT, 'other.sql': 'create or replace function other() returns int language sql immutable as $$ select 1 $$;\n' } })
  t.same(await migrate(sql, first), { versions: [1], repeatables: ['counted.sql', 'other.sql'] })
  t.same(await migrate(sql, first), { versions: [], repeatables: [] })

  // A settings change, and a signature change: the file drops the old signature itself (docs/data-model.md).
  const second = await sqlDirectory(t, {
    migrations: { '001_counted.sql': TABLE },
    functions: {
      'counted.sql': 'drop function if exists counted_rows();\n' +
        "create or replace function counted_rows(p_at_least int) returns bigint language sql stable set lock_timeout = '2s' as $$ select greatest(count(*), p_at_least) from counted $$;\n"
    }
  })
  t.same(await migrate(sql, second), { versions: [], repeatables: ['counted.sql'] }, 'only the changed file runs')
  const functions = await sql`select p.oid::regprocedure::text as signature, p.proconfig as config from pg_proc p where p.proname in ('counted_rows', 'other') order by 1`
  t.same(functions, [{ signature: 'counted_rows(integer)', config: ['lock_timeout=2s'] }, { signature: 'other()', config: null }],
    'the new definition runs, with its setting; the old signature is gone; a function whose file is gone stays until a file drops it')
  t.same((await sql`select name from budget_schema_repeatables`).map((row) => row.name), ['counted.sql'], 'the records list the files there are')
})

t.test('sql/: each function is defined by one file, once; migrations define none; every function of a migrated database has its file', async (t) => {
  const repeatables = await readRepeatables()
  const definitions = repeatables.flatMap((file) => file.functions.map((name) => `${name} in ${file.name}`))
  const names = repeatables.flatMap((file) => file.functions)
  t.same(names.filter((name, i) => names.indexOf(name) !== i), [], `no function defined twice: ${definitions.length} definitions`)
  const triggers = repeatables.flatMap((file) => [...file.text.matchAll(/\bcreate\s+(?:or\s+replace\s+|constraint\s+)trigger\s+(\w+)/gi)].map((match) => match[1]))
  t.same(triggers.filter((name, i) => triggers.indexOf(name) !== i), [], 'no trigger defined twice')
  for (const file of repeatables) {
    const text = statements(file.text)
    t.same([...text.matchAll(/\bcreate\s+(?!or\s+replace\b)(?!constraint\s+trigger\b)\w+/gi)].map((match) => match[0]), [],
      `${file.name}: every create is a create or replace, so the file can run again`)
    // A constraint trigger cannot be replaced: the file drops it first, on its table, so it can run again too.
    for (const [, name, table] of text.matchAll(/\bcreate\s+constraint\s+trigger\s+(\w+)\s+after\s+[\w\s]+?\s+on\s+(\w+)/gi)) {
      t.ok(new RegExp(`drop\\s+trigger\\s+if\\s+exists\\s+${name!}\\s+on\\s+${table!}\\s*;\\s*create\\s+constraint\\s+trigger\\s+${name!}\\b`, 'i').test(text),
        `${file.name}: the constraint trigger ${name!} is dropped right before it is created`)
    }
  }
  for (const migration of await readMigrations()) {
    t.same([...statements(migration.text).matchAll(/\bcreate\s+(?:or\s+replace\s+)?(?:function|procedure|trigger|view)\b/gi)].map((match) => match[0]), [],
      `${migration.name}: no function, trigger or view (they belong in sql/functions/)`)
  }

  const { sql } = await createTestSql(t)
  await migrate(sql)
  const inDatabase = (await sql`
    select p.proname as name from pg_proc p where p.pronamespace = 'public'::regnamespace order by 1`).map((row) => row.name as string)
  t.same(inDatabase, [...names].sort(), 'the migrated database has exactly the functions the files define')
  const triggersInDatabase = (await sql`
    select tgname from pg_trigger where not tgisinternal and tgrelid::regclass::text like 'budget\\_%' order by 1`).map((row) => row.tgname as string)
  t.same(triggersInDatabase, [...triggers].sort(), 'and exactly their triggers')
})

/**
 * What a newer version of the package would leave in a database after migrating it: a migration past this
 * sql/'s last, and budget_hold_batch and budget_line with a result column more (as this version added shadow_fits
 * and enforcement to the version before), their files recorded under checksums this sql/ does not have.
 */
async function migrateAsNewerVersion (url: string): Promise<{ codeVersion: number, databaseVersion: number }> {
  const sql = postgres(url, { max: 1, onnotice: () => {} })
  try {
    await migrate(sql)
    const codeVersion = (await readMigrations()).at(-1)!.version
    const files = new Map((await readRepeatables()).map((file) => [file.name, file.text]))
    const newer = (name: string, replacements: Array<[string, string]>) => replacements.reduce((text, [from, to]) => {
      if (!text.includes(from)) throw new Error(`${name} no longer has ${from}: update this test's newer version of it`)
      return text.replace(from, to)
    }, files.get(name)!)
    await sql.begin(async (tx) => {
      await tx`insert into budget_schema_migrations (version, name) values (${codeVersion + 1}, ${`${codeVersion + 1}_newer.sql`})`
      await tx.unsafe(newer('holds.sql', [['shadow_fits boolean)', 'shadow_fits boolean, newer_column text)'], ['r.over_cap, r.shadow_fits\n', "r.over_cap, r.shadow_fits, 'newer'::text\n"]]))
      // budget_line and budget_line_in_trees, which it returns from: both results get the newer column
      await tx.unsafe(newer('lines.sql', [['tree_version bigint)', 'tree_version bigint, newer_column text)'], ['tree_version bigint)', 'tree_version bigint, newer_column text)'],
        ['create or replace function budget_line_in_trees(', 'drop function if exists budget_line_in_trees(text[], text[], text, text, jsonb, uuid[], uuid);\ncreate or replace function budget_line_in_trees('], ['a.root_id, coalesce(v.version, 0)\n', "a.root_id, coalesce(v.version, 0), 'newer'::text\n"]]))
      await tx`update budget_schema_repeatables set checksum = 'newer' where name in ('holds.sql', 'lines.sql')`
    })
    return { codeVersion, databaseVersion: codeVersion + 1 }
  } finally {
    await sql.end()
  }
}

t.test('on a database a newer version migrated, an instance applies nothing, warns once, and its gate holds and settles on the newer functions', async (t) => {
  let versions = { codeVersion: 0, databaseVersion: 0 }
  const gateway = await buildGateway(t, {
    captureLogs: true,
    gate: { sweepIntervalMs: 0 },
    gatewayDatabase: async (url) => { versions = await migrateAsNewerVersion(url); return url }
  })
  const { sql } = gateway
  const results = async () => await sql`
    select p.proname as name, pg_get_function_result(p.oid) like '%newer_column text%' as newer
    from pg_proc p where p.proname in ('budget_hold_batch', 'budget_line') order by 1`
  t.same(await results(), [{ name: 'budget_hold_batch', newer: true }, { name: 'budget_line', newer: true }], 'the newer functions are the ones in the database')
  t.same((await sql`select name, checksum from budget_schema_repeatables where name in ('holds.sql', 'lines.sql') order by name`).map((row) => row.checksum),
    ['newer', 'newer'], 'no file was applied over them')
  t.same((await sql`select max(version) as version from budget_schema_migrations`)[0]!.version, versions.databaseVersion)
  const warnings = gateway.logs.filter((line) => /newer version of @relaycore\/budgets/.test(line.msg ?? ''))
  t.equal(warnings.length, 1, 'one warning')
  t.match(warnings[0], { level: 40, databaseVersion: versions.databaseVersion, codeVersion: versions.codeVersion, msg: new RegExp(`migration ${versions.databaseVersion}\\b.*last is ${versions.codeVersion}\\b`) },
    'naming both versions')
  t.same(await migrate(sql), { versions: [], repeatables: [], databaseAhead: versions }, 'migrate() says why it applied nothing')
  t.same(await results(), [{ name: 'budget_hold_batch', newer: true }, { name: 'budget_line', newer: true }], 'and leaves them')

  // The gate reads the newer functions' columns by name: a hold on the lease path (USD) and a hold per call (EUR, never leased).
  await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/exchange-rates/USD/EUR`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: { rate: '0.9' } })
  const usd = await gateway.createBudget({ amount: '10' })
  const eur = await gateway.createBudget({ scopeId: 'team-e', currency: 'EUR', amount: '10', maxCallCost: '0.001' })
  for (let i = 0; i < 3; i++) t.equal((await gateway.call({ team: 'team-a' })).statusCode, 200, `USD call ${i}`)
  for (let i = 0; i < 3; i++) t.equal((await gateway.call({ team: 'team-e' })).statusCode, 200, `EUR call ${i}`)
  t.equal((await gateway.call({ team: 'team-e' }, { max_tokens: 4000 })).statusCode, 402, 'a call over the EUR budget\'s cap is refused by the newer hold')
  await gateway.settled()
  for (const budget of [usd, eur]) {
    const status = await gateway.status(budget.id)
    t.ok(toUnits(status.currentAmount) > 0n && toUnits(status.reservedAmount) === 0n, `${status.currency}: settled ${status.currentAmount as string}, nothing reserved`)
  }
  await checkInvariants(t, sql)
})
