// Admin writes under their bound (lib/database/bounded.ts): Fastify's handlerTimeout stops once a body is
// read, so a POST or a PUT behind a lock must be cut by the plugin itself, and change nothing.
import t from 'tap'
import { ADMIN_TOKEN, buildApp, budgetRequest, PREFIX, snapshotTables } from './fixtures/app.js'

const BOUND_MS = 300
/** Far past the bound: a request still waiting then was not bounded. */
const LOCK_HELD_MS = 8000

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

t.test('adminTimeoutMs must be a whole number of milliseconds', async (t) => {
  for (const adminTimeoutMs of [0, -1, 1.5, Number.NaN]) {
    await t.rejects(buildApp(t, { adminTimeoutMs }), { code: 'BUDGET_ERR_OPTIONS' }, String(adminTimeoutMs))
  }
})
