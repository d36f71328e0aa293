// Review of the row roots change (migration 010): a rolling deploy. docs/data-model.md ("Upgrades and
// rollbacks"): instances of the older version that are already running keep serving on the newer
// functions. The version before this change (fd4a9ca) names ON CONFLICT targets from its own TypeScript
// (lib/usage/usage-repository.ts insertUnbudgeted: (idempotency_key) where budget_id is null ...;
// lib/alerts/digest-repository.ts: (budget_id, every, first_day)); migration 010 replaced those unique indexes
// by ones ending in root_id, so PostgreSQL finds no arbiter (42P10) for the running older instance's statements.
import { execFile } from 'node:child_process'
import { existsSync, rmSync } from 'node:fs'
import { mkdtemp, symlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import t from 'tap'
import { ADMIN_TOKEN, PREFIX, TEST_CHANNELS } from './fixtures/app.js'
import { createTestSql } from './fixtures/database.js'

const run = promisify(execFile)
const REPO = fileURLToPath(new URL('../', import.meta.url))
const BEFORE = 'fd4a9ca' // the commit before the row roots change
const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }
const DAY = 86_400_000

async function versionBefore (): Promise<{ budgets: any, chatCompletions: any }> {
  const directory = await mkdtemp(join(tmpdir(), `relaycore-budgets-${BEFORE}-`))
  process.once('exit', () => rmSync(directory, { recursive: true, force: true }))
  await run('sh', ['-c', `git -C "$1" archive "$2" lib sql ui examples package.json tsconfig.json | tar -x -C "$3"`, 'sh', REPO, BEFORE, directory])
  await symlink(join(REPO, 'node_modules'), join(directory, 'node_modules'), 'dir')
  if (!existsSync(join(directory, 'lib', 'index.ts'))) throw new Error('no lib/index.ts')
  const { default: budgets } = await import(join(directory, 'lib', 'index.ts'))
  const { chatCompletions } = await import(join(directory, 'examples', 'chat-completions.ts'))
  return { budgets, chatCompletions }
}

async function startVersion (t: { teardown: (fn: () => unknown) => void }, url: string, plugin: any, chatRoutes: any) {
  const { default: Fastify } = await import('fastify')
  const app = Fastify()
  await app.register(plugin, { database: url, adminToken: ADMIN_TOKEN, gate: { routes: ['/v1/chat/completions'], sweepIntervalMs: 0 }, notifications: { intervalMs: 0, channels: TEST_CHANNELS } })
  await app.register(chatRoutes, { mockTokenDelayMs: 0 })
  await app.ready()
  t.teardown(async () => await app.close())
  return app
}

const body = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 20 }

async function unbudgeted (sql: any): Promise<number> {
  return (await sql`select count(*)::int as n from budget_usage_records where budget_id is null`)[0].n
}

async function waitFor (check: () => Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await check()) return true
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return false
}

t.test('an instance of the version before, running through the upgrade, keeps recording calls no budget covers, and keeps making digests', async (t) => {
  const { budgets: oldBudgets, chatCompletions: oldChat } = await versionBefore()
  const { default: newBudgets } = await import('../lib/index.js')
  const { sql, url } = await createTestSql(t)
  const old = await startVersion(t, url, oldBudgets, oldChat)

  const call = async (app: any, user: string) => (await app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'nobody', 'x-relay-user-id': user }, body })).statusCode
  t.equal(await call(old, 'u0'), 200, 'the old instance serves an uncovered call')
  t.ok(await waitFor(async () => await unbudgeted(sql) === 1, 5000), 'and records it, before the upgrade')

  // a budget with a daily digest, whose series began days ago: the old instance's producer makes one digest
  const created = await old.inject({ method: 'POST', url: PREFIX, headers: AUTH, body: { name: 'p', scopeType: 'team', scopeId: 'team-p', amount: '100', currency: 'USD', period: 'weekly', timezone: 'UTC', startDate: new Date(Date.now() - 21 * DAY).toISOString().slice(0, 10), digest: { every: 'daily', channels: ['ops'] } } })
  t.equal(created.statusCode, 201, created.body)

  const fresh = await startVersion(t, url, newBudgets, (await import('../examples/chat-completions.js')).chatCompletions)
  t.ok((await sql`select 1 from budget_schema_migrations where version = 10`).length === 1, 'the new instance migrated the database')

  t.equal(await call(old, 'u1'), 200, 'the old instance still serves an uncovered call after the upgrade')
  t.ok(await waitFor(async () => await unbudgeted(sql) === 2, 15000), `the old instance's uncovered call is recorded after the upgrade (unbudgeted records: ${await unbudgeted(sql)})`)

  const made = await old.budgetNotifications.produceDigests().then((n: number) => String(n), (error: Error) => `error ${(error as any).code}: ${error.message}`)
  t.equal(made, '1', 'the old instance makes the budget\'s digest after the upgrade')
  t.equal(await call(fresh, 'u2'), 200)
})
