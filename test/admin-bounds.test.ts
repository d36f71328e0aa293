// Admin writes under their bound (lib/kernel/database/bounded.ts): Fastify's handlerTimeout stops once a body is
// read, so a POST or a PUT behind a lock must be cut by the plugin itself, and change nothing.
import Fastify from 'fastify'
import postgres from 'postgres'
import t from 'tap'
import budgets from '../lib/index.js'
import { ADMIN_TOKEN, buildApp, budgetRequest, PREFIX, snapshotTables } from './fixtures/app.js'
import { createTestSql } from './fixtures/database.js'

const BOUND_MS = 2000 // short, yet long enough for the setup's own writes on a busy machine
/** Far past the bound: a request still waiting then was not bounded. */
const LOCK_HELD_MS = 10_000

t.test('a POST /:id/usage, a PUT of a budget and a batch POST behind a row lock answer a coded 503 within the bound, and store nothing', async (t) => {
  const { app, sql, admin } = await buildApp(t, { adminTimeoutMs: BOUND_MS })
  // Over HTTP, as a client meets it: Fastify's own timer stops once the body has been read.
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  const send = async ({ method, url, body }: { method: string, url: string, body: unknown }) => {
    const response = await fetch(`${address}${url}`, { method, headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(body) })
    return { statusCode: response.status, body: await response.json() as { code?: string, created?: number } }
  }
  const budget = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ amount: '100' }) })).json<{ id: string }>()
  const usage = (key: string) => ({ amount: '1.25', currency: 'USD', source: 'test', metadata: { requestId: key } })
  t.equal((await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: usage('first') })).statusCode, 201, 'the window row exists')

  const writes = {
    'POST /:id/usage': { method: 'POST' as const, url: `${PREFIX}/${budget.id}/usage`, body: usage('second') },
    'PUT /:id': { method: 'PUT' as const, url: `${PREFIX}/${budget.id}`, body: { amount: '90' } },
    'POST /usage/batch': { method: 'POST' as const, url: `${PREFIX}/usage/batch`, body: { records: [{ budgetId: budget.id, ...usage('third') }] } }
  }
  for (const [name, request] of Object.entries(writes)) {
    // A test connection holds the rows the write must lock: the budget's definition and its window's cache row.
    const locker = await sql.reserve()
    await locker`begin`
    await locker`select 1 from budget_definitions where id = ${budget.id} for update`
    await locker`select 1 from budget_status_cache where budget_id = ${budget.id} for update`
    const before = await snapshotTables(sql)
    let lockHeld = true
    const release = setTimeout(() => { lockHeld = false; void locker`rollback`.then(() => { locker.release() }) }, LOCK_HELD_MS)
    const response = await send(request)
    const answeredUnderLock = lockHeld
    clearTimeout(release)
    if (lockHeld) { await locker`rollback`; locker.release() }
    t.ok(answeredUnderLock, `${name}: answered while the lock was still held`)
    t.equal(response.statusCode, 503, `${name}: 503`)
    t.equal(response.body.code, 'BUDGET_ERR_TIMEOUT', `${name}: a stable code`)
    t.same(await snapshotTables(sql), before, `${name}: nothing was stored`)
  }

  // With the rows free, the same writes go through: it was the lock that cut them.
  t.equal((await send(writes['POST /:id/usage'])).statusCode, 201)
  t.equal((await send(writes['PUT /:id'])).statusCode, 200)
  t.equal((await send(writes['POST /usage/batch'])).body.created, 1)
})

t.test('an admin PUT does not queue behind a pooled statement that waits for a row lock (issue 19, item 4)', async (t) => {
  // Two pooled connections: one runs a statement blocked on a hot window's row lock, as a gate statement
  // is under load (a hold waits up to its lock_timeout of 2 s, a lease's settlement 5 s), the other a
  // short one. postgres.js sends a statement to a busy connection when none is free, the first in line:
  // behind the blocked one. An admin write must instead wait for a connection of its own, the first free.
  const { url, sql } = await createTestSql(t, { max: 2 })
  const app = Fastify()
  await app.register(budgets, { database: sql, adminToken: ADMIN_TOKEN, notifications: { intervalMs: 0 } })
  await app.ready()
  t.teardown(async () => await app.close())
  const created = await app.inject({ method: 'POST', url: PREFIX, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: budgetRequest({ amount: '100' }) })
  const budget = created.json<{ id: string }>()
  t.equal((await app.inject({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    body: { amount: '1', currency: 'USD', metadata: { requestId: 'r1' } } })).statusCode, 201, 'the window row exists')

  const locker = postgres(url, { max: 1, onnotice: () => {} }) // a client of its own: locks and watches
  await locker`begin`
  await locker`select 1 from budget_status_cache where budget_id = ${budget.id} for update`
  // Without parameters, as a prepared gate statement is sent: postgres.js pipelines behind it (a statement
  // it must first describe is not pipelined behind).
  const blockedStatement = sql.unsafe(`select 1 from budget_status_cache where budget_id = '${budget.id}' for update`).execute()
  const waiting = async () => await locker<Array<{ pid: number, since: Date }>>`
    select pid, query_start as since from pg_stat_activity where wait_event_type = 'Lock' and query like '%budget_status_cache%for update%' and pid <> pg_backend_pid()`
  let blocked = await waiting()
  for (let waited = 0; blocked.length === 0; waited += 20) {
    // generous: under the whole suite's load the pool's other work may hold the connection a while first
    if (waited > 30_000) throw new Error('the statement never waited for the lock')
    await new Promise((resolve) => setTimeout(resolve, 20))
    blocked = await waiting()
  }
  const short = sql`select pg_sleep(0.3)`.execute() // the other connection, busy a moment
  // Released after a while whatever happens, so a PUT queued behind the blocked statement ends too.
  const release = setTimeout(() => { void locker`rollback` }, LOCK_HELD_MS / 2)
  const put = await app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: { description: 'changed under load' } })
  const stillWaiting = await waiting()
  clearTimeout(release)
  await locker`rollback`
  await Promise.all([short, blockedStatement])
  await locker.end()
  t.equal(put.statusCode, 200, 'the PUT is made')
  t.same(stillWaiting, blocked, 'and answered while the blocked statement still waited for the lock')
})

t.test('adminTimeoutMs must be a whole number of milliseconds', async (t) => {
  for (const adminTimeoutMs of [0, -1, 1.5, Number.NaN]) {
    await t.rejects(buildApp(t, { adminTimeoutMs }), { code: 'BUDGET_ERR_OPTIONS' }, String(adminTimeoutMs))
  }
})
