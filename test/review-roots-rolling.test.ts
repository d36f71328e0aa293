// Review of the row roots change (migration 010): a rolling deploy. docs/data-model.md ("Upgrades and
// rollbacks"): instances of the older version that are already running keep serving on the newer
// functions. The version before this change (fd4a9ca) names ON CONFLICT targets from its own TypeScript
// (lib/usage/usage-repository.ts insertUnbudgeted: (idempotency_key) where budget_id is null ...;
// lib/alerts/digest-repository.ts: (budget_id, every, first_day)). Migration 010 keys those rows with root_id,
// and keeps the old keys beside them (*_across_trees) so that the older instance's statements still find
// their arbiter; without them, PostgreSQL answered 42P10 and the older instance's uncovered calls went unrecorded.
import t from 'tap'
import { ADMIN_TOKEN, PREFIX, TEST_CHANNELS } from './fixtures/app.js'
import { createTestSql } from './fixtures/database.js'
import { waitFor } from './fixtures/invariants.js'
import { versionBefore } from './fixtures/version-before.js'

const BEFORE = 'fd4a9ca' // the commit before the row roots change
const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }
const DAY = 86_400_000

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

t.test('an instance of the version before, running through the upgrade, keeps recording calls no budget covers, and keeps making digests', async (t) => {
  const { budgets: oldBudgets, chatCompletions: oldChat } = await versionBefore(BEFORE)
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
