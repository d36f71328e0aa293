// Review (fdddc1d): splitStatements against PostgreSQL's own lexer. Each case is a file PostgreSQL runs whole
// (simple protocol, several statements at once); migrate() now sends a file's statements one by one as the
// splitter cuts them, so it must cut exactly where PostgreSQL does.
import t from 'tap'
import fc from 'fast-check'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { splitStatements } from '../lib/kernel/database/schema-statements.js'
import { migrate } from '../lib/kernel/database/migrate.js'
import { createTestSql } from './fixtures/database.js'

/** Each case: a file, and the statements PostgreSQL sees in it (checked below against the server itself). */
const CASES: Array<{ name: string, file: string, statements: number, objects: string[] }> = [
  { name: 'an E string with a backslash-escaped quote and a ; in it', file: "create table e1 (x text default E'it\\'s; fine');\ncreate table e2 (y int);\n", statements: 2, objects: ['e1', 'e2'] },
  { name: 'nested block comments (PostgreSQL nests /* */)', file: 'create table n1 (x int); /* outer /* inner */ still a comment; */\ncreate table n2 (y int);\n', statements: 2, objects: ['n1', 'n2'] },
  { name: 'CR-only line endings: a -- comment ends at \\r', file: 'create table r1 (x int); -- a note\rcreate table r2 (y int);\rcreate table r3 (z int);\r', statements: 3, objects: ['r1', 'r2', 'r3'] },
  { name: 'a dollar-quote tag with a non-ASCII letter', file: 'create function u1() returns int language plpgsql as $é$ begin return 1; end $é$;\ncreate table u2 (y int);\n', statements: 2, objects: ['u1', 'u2'] },
  { name: 'a 63-character dollar-quote tag', file: `create function l1() returns int language plpgsql as $${'t'.repeat(63)}$ begin return 1; end $${'t'.repeat(63)}$;\ncreate table l2 (y int);\n`, statements: 2, objects: ['l1', 'l2'] }
]

t.test('PostgreSQL runs each case whole and makes every object the case says (the cases are right)', async (t) => {
  const { sql } = await createTestSql(t, { max: 1 })
  for (const { name, file, objects } of CASES) {
    await sql.unsafe(file).simple()
    const made = (await sql`select relname as name from pg_class where relname = any (${objects}) union select proname from pg_proc where proname = any (${objects}) order by 1`).map((row) => row.name)
    t.same(made, objects, name)
  }
})


for (const { name, file, statements } of CASES) {
  t.test(`splitStatements: ${name}`, async (t) => {
    let pieces: string[] | Error
    try { pieces = splitStatements(file) } catch (error) { pieces = error as Error }
    t.notOk(pieces instanceof Error, `not refused (${pieces instanceof Error ? pieces.message : 'ok'})`)
    if (!(pieces instanceof Error)) t.equal(pieces.length, statements, `cut into PostgreSQL's ${statements} statements: ${JSON.stringify(pieces)}`)
  })
}

t.test('migrate() with a migration PostgreSQL runs whole: CR line endings lose a table silently', async (t) => {
  const { sql } = await createTestSql(t, { max: 2 })
  const root = await mkdtemp(join(tmpdir(), 'review-splitter-'))
  t.teardown(async () => await rm(root, { recursive: true }))
  await mkdir(join(root, 'migrations'))
  await mkdir(join(root, 'functions'))
  await writeFile(join(root, 'migrations', '001_cr.sql'), CASES[2]!.file)
  const run = await migrate(sql, pathToFileURL(`${root}/`))
  t.same(run.versions, [1], 'the migration is recorded as applied')
  const tables = (await sql`select relname from pg_class where relname in ('r1', 'r2', 'r3') order by 1`).map((row) => row.relname)
  t.same(tables, ['r1', 'r2', 'r3'], 'every table the file makes exists')
})

t.test('property: statements of quoted literals joined by ; are cut back into themselves', async (t) => {
  const literal = fc.oneof(
    fc.stringMatching(/^[a-z ;$'-]{0,8}$/).map((s) => `'${s.replace(/'/g, "''")}'`),
    fc.stringMatching(/^[a-z ;']{0,8}$/).map((s) => `E'${s.replace(/'/g, "\\'")}'`),
    fc.stringMatching(/^[a-z ;]{0,8}$/).map((s) => `$q$${s}$q$`),
    fc.stringMatching(/^[a-z ;]{0,8}$/).map((s) => `1 /* ${s} /* ${s} */ ${s} */`)
  )
  const statement = literal.map((l) => `select ${l} as v`)
  const result = fc.check(fc.property(fc.array(statement, { minLength: 1, maxLength: 4 }), (statements) => {
    let pieces: string[]
    try { pieces = splitStatements(statements.join(';\n')) } catch { return false }
    return JSON.stringify(pieces) === JSON.stringify(statements)
  }), { seed: 42, numRuns: 300 })
  t.notOk(result.failed, `counterexample: ${JSON.stringify(result.counterexample)}`)
})
