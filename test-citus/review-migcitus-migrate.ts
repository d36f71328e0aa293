// Review (fdddc1d): migrate() on the Citus cluster, run at once by several clients, on a database with the
// extension and no node that takes shards, after a distribution step half done, and an upgrade while a
// gateway serves calls.
import t from 'tap'
import postgres from 'postgres'
import { randomUUID } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { migrate, readMigrations } from '../lib/kernel/database/migrate.js'
import { runStatements, lockMigrations } from '../lib/kernel/database/schema-statements.js'
import { createTestSql, serverUrl } from '../test/fixtures/database.js'
import { buildGateway } from '../test/fixtures/gateway.js'
import { findViolations } from '../test/fixtures/invariants.js'
import { nextSql } from '../test/fixtures/next-sql.js'
import { ADMIN_TOKEN } from '../test/fixtures/app.js'

const DELEGATED = ['budget_hold_batch', 'budget_lease_renew', 'budget_lease_return', 'budget_lease_take', 'budget_line_in_trees', 'budget_rate_give_back',
  'budget_rate_take', 'budget_record_usage_in_trees', 'budget_settle_batch', 'budget_settle_leased', 'budget_sweep_trees']
const delegated = async (sql: any) => (await sql`
  select p.proname as name from pg_dist_object o join pg_proc p on p.oid = o.objid
  where o.classid = 'pg_proc'::regclass and o.distribution_argument_index is not null order by 1`).map((row: { name: string }) => row.name)
const undistributedRootTables = async (sql: any) => (await sql`
  select c.table_name as name from information_schema.columns c
  where c.table_schema = current_schema() and c.column_name = 'root_id'
    and not exists (select 1 from pg_dist_partition p where p.logicalrelid = c.table_name::regclass) order by 1`).map((row: { name: string }) => row.name)

/**
 * Runs migrate() from `directory` on the gateway's database while three callers send calls through it, from
 * half a second before to half a second after; the run, and each status answered (with the first 5xx bodies).
 */
async function migrateWhileCalling (t: { teardown: (fn: () => unknown) => void }, gateway: Awaited<ReturnType<typeof buildGateway>>, directory: URL) {
  const statuses = new Map<number, number>()
  const bodies: string[] = []
  let stop = false
  const callers = [1, 2, 3].map(async () => {
    while (!stop) {
      const response = await gateway.call({ organization: 'acme' })
      statuses.set(response.statusCode, (statuses.get(response.statusCode) ?? 0) + 1)
      if (response.statusCode >= 500) bodies.push(response.body.slice(0, 300))
    }
  })
  await new Promise((resolve) => setTimeout(resolve, 500))
  const upgrader = postgres(gateway.url, { max: 1, onnotice: () => {} })
  t.teardown(async () => await upgrader.end({ timeout: 1 }))
  const run = await migrate(upgrader, directory)
  await new Promise((resolve) => setTimeout(resolve, 500))
  stop = true
  await Promise.all(callers)
  return { run, failed: [...statuses.keys()].filter((status) => status >= 500), summary: `${JSON.stringify([...statuses])} ${bodies.slice(0, 3).join(' | ')}` }
}

t.test('three migrate() at once on a fresh database of the cluster: all come up, each migration once, all distributed and delegated', async (t) => {
  const { url, sql } = await createTestSql(t, { max: 2 })
  const clients = [1, 2, 3].map(() => postgres(url, { max: 1, onnotice: () => {} }))
  t.teardown(async () => { for (const c of clients) await c.end({ timeout: 1 }) })
  const settled = await Promise.allSettled(clients.map(async (c) => await migrate(c)))
  t.same(settled.map((s) => s.status === 'rejected' ? String((s.reason as Error).message) : 'ok'), ['ok', 'ok', 'ok'], 'every migrate() came up')
  const runs = settled.flatMap((s) => s.status === 'fulfilled' ? [s.value] : [])
  t.same(runs.map((r) => r.distributed), runs.map(() => true))
  const versions = (await readMigrations()).map((m) => m.version)
  t.same(runs.flatMap((r) => r.versions).sort((a, b) => a - b), versions, 'each migration exactly once')
  t.same(await delegated(sql), DELEGATED)
  t.same(await undistributedRootTables(sql), [])
})

t.test('a database with the citus extension and no node that takes shards stays plain; two migrate() at once; the plugin works on it', async (t) => {
  const name = `budgets_review_${randomUUID().replace(/-/g, '')}`
  const admin = postgres(serverUrl(), { max: 1, onnotice: () => {} })
  t.teardown(async () => { await admin.unsafe(`drop database if exists ${name} with (force)`).catch(() => {}); await admin.end({ timeout: 1 }) })
  await admin.unsafe(`create database ${name} template template0`)
  const url = new URL(serverUrl()); url.pathname = `/${name}`
  const sql = postgres(url.toString(), { max: 4, onnotice: () => {} })
  t.teardown(async () => await sql.end({ timeout: 1 }))
  await sql`create extension citus`
  const other = postgres(url.toString(), { max: 1, onnotice: () => {} })
  t.teardown(async () => await other.end({ timeout: 1 }))
  const runs = await Promise.all([migrate(sql), migrate(other)])
  t.same(runs.map((r) => r.distributed), [undefined, undefined], 'not distributed')
  t.equal((await sql`select count(*)::int as n from pg_dist_partition`)[0]!.n, 0)

  const gateway = await buildGateway(t, { gatewayDatabase: async () => url.toString() })
  const { id } = await (async () => {
    const response = await gateway.app.inject({
      method: 'POST', url: '/api/v1/budgets', headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      body: { name: 'plain', scopeType: 'organization', scopeId: 'acme', amount: '0.0000001', currency: 'USD', period: 'monthly', startDate: '2024-01-01', enforcement: 'hard' }
    })
    t.equal(response.statusCode, 201, response.body)
    return response.json()
  })()
  t.ok(id)
  const refused = await gateway.call({ organization: 'acme' })
  t.equal(refused.statusCode, 402, `a hard budget too small refuses the call: ${refused.body.slice(0, 200)}`)
})

t.test('the distribution step half done (distribute.sql committed, delegate.sql not), then migrate(): finished', async (t) => {
  const { sql } = await createTestSql(t, { max: 2 })
  const run = await migrate(sql, undefined, { distribute: false })
  t.equal(run.distributed, undefined)
  const text = await readFile(new URL('../sql/citus/distribute.sql', import.meta.url), 'utf8')
  await sql.begin(async (tx) => { await lockMigrations(tx); await runStatements(tx, text) })
  t.same(await delegated(sql), [], 'nothing delegated yet')
  const again = await migrate(sql)
  t.equal(again.distributed, true)
  t.same(await delegated(sql), DELEGATED)
  t.same(await undistributedRootTables(sql), [])
})

t.test('an upgrade (holds.sql and lines.sql changed) while a gateway serves calls: no call fails, delegation kept, invariants hold', async (t) => {
  const gateway = await buildGateway(t)
  const { sql, createBudget, call, settled } = gateway
  t.same(await delegated(sql), DELEGATED, 'the plugin distributed its database')
  await createBudget({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '1000', enforcement: 'hard' })
  await createBudget({ name: 'shadow', scopeType: 'organization', scopeId: 'acme', amount: '0.0001', enforcement: 'shadow' })
  const { directory } = await nextSql(t, { changed: ['functions/holds.sql', 'functions/lines.sql', 'functions/settlements.sql'] })
  const { run, failed, summary } = await migrateWhileCalling(t, gateway, directory)
  t.same(run.repeatables, ['holds.sql', 'lines.sql', 'settlements.sql'])
  t.same(await delegated(sql), DELEGATED, 'still delegated')
  t.same(failed, [], `no call failed: ${summary}`)
  await settled(15_000)
  t.same(await findViolations(sql), [], 'invariants')
  const after = await call({ organization: 'acme' })
  t.equal(after.statusCode, 200, after.body.slice(0, 200))
})

t.test('an upgrade with a new migration on a distributed table while a gateway serves calls: no call fails', async (t) => {
  const gateway = await buildGateway(t)
  const { sql, createBudget, settled } = gateway
  await createBudget({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '1000', enforcement: 'hard' })
  const { directory, version: next } = await nextSql(t, { changed: ['functions/holds.sql'], migration: 'alter table budget_reservations add column next_note text;\n' })
  const { run, failed, summary } = await migrateWhileCalling(t, gateway, directory)
  t.same(run.versions, [next])
  t.same(await delegated(sql), DELEGATED, 'still delegated')
  t.same(failed, [], `no call failed: ${summary}`)
  await settled(15_000)
  t.same(await findViolations(sql), [], 'invariants')
})
