// Admin writes behind a lock another session holds: 503 BUDGET_ERR_TIMEOUT within the bound, nothing stored.
import t from 'tap'
import { PREFIX, budgetRequest, buildApp, snapshotTables } from './fixtures/app.js'

t.test('admin writes behind held locks', async (t) => {
  const { admin, sql } = await buildApp(t, { adminTimeoutMs: 1000 })
  const budget = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ amount: '1000' }) })).json() as { id: string }
  t.equal((await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: { amount: '1', currency: 'USD' } })).statusCode, 201)
  const blocker = await sql.reserve()
  t.teardown(() => { blocker.release() })
  const attempts: Array<[string, string, () => Promise<unknown>, () => Promise<{ statusCode: number, body: string }>]> = [
    ['status row', 'usage', async () => await blocker`select 1 from budget_status_cache for update`, async () => await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: { amount: '1', currency: 'USD', metadata: { requestId: 'x1' } } })],
    ['status row', 'batch', async () => await blocker`select 1 from budget_status_cache for update`, async () => await admin({ method: 'POST', url: `${PREFIX}/usage/batch`, body: { records: [{ budgetId: budget.id, amount: '1', currency: 'USD', metadata: { requestId: 'x2' } }] } })],
    ['budget row', 'PUT budget', async () => await blocker`select 1 from budget_definitions for update`, async () => await admin({ method: 'PUT', url: `${PREFIX}/${budget.id}`, body: { amount: '2000' } })],
    ['budget row', 'usage', async () => await blocker`select 1 from budget_definitions for update`, async () => await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: { amount: '1', currency: 'USD', metadata: { requestId: 'x3' } } })],
    ['budget row', 'batch', async () => await blocker`select 1 from budget_definitions for update`, async () => await admin({ method: 'POST', url: `${PREFIX}/usage/batch`, body: { records: [{ budgetId: budget.id, amount: '1', currency: 'USD', metadata: { requestId: 'x4' } }] } })],
    ['budget row', 'DELETE budget', async () => await blocker`select 1 from budget_definitions for update`, async () => await admin({ method: 'DELETE', url: `${PREFIX}/${budget.id}` })],
    ['rate lock', 'PUT rate', async () => await blocker`select pg_advisory_lock(hashtextextended(${'relaycore-budgets:exchange-rate:USD/EUR'}, 0))`, async () => await admin({ method: 'PUT', url: `${PREFIX}/exchange-rates/USD/EUR`, body: { rate: '0.9' } })],
    ['rates table', 'PUT rate', async () => await blocker`lock table budget_exchange_rates in access exclusive mode`, async () => await admin({ method: 'PUT', url: `${PREFIX}/exchange-rates/USD/EUR`, body: { rate: '0.9' } })],
    ['audit table', 'PUT rate', async () => await blocker`lock table budget_audit_log in access exclusive mode`, async () => await admin({ method: 'PUT', url: `${PREFIX}/exchange-rates/USD/EUR`, body: { rate: '0.9' } })],
    ['records table', 'batch', async () => await blocker`lock table budget_usage_records in access exclusive mode`, async () => await admin({ method: 'POST', url: `${PREFIX}/usage/batch`, body: { records: [{ budgetId: budget.id, amount: '1', currency: 'USD', metadata: { requestId: 'x5' } }] } })],
    ['definitions table', 'batch', async () => await blocker`lock table budget_definitions in access exclusive mode`, async () => await admin({ method: 'POST', url: `${PREFIX}/usage/batch`, body: { records: [{ budgetId: budget.id, amount: '1', currency: 'USD', metadata: { requestId: 'x6' } }] } })],
    ['definitions table', 'usage', async () => await blocker`lock table budget_definitions in access exclusive mode`, async () => await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: { amount: '1', currency: 'USD', metadata: { requestId: 'x7' } } })]
  ]
  for (const [what, route, lock, send] of attempts) {
    const before = await snapshotTables(sql)
    await blocker`begin`
    await lock()
    const started = Date.now()
    const timer = setTimeout(() => { void blocker`rollback`.catch(() => {}) }, 6000) // let go after 6 s whatever happens
    const response = await send()
    const took = Date.now() - started
    clearTimeout(timer)
    await blocker`rollback`.catch(() => {})
    await blocker`select pg_advisory_unlock_all()`
    await new Promise((resolve) => setTimeout(resolve, 300))
    t.comment(`${what} held, ${route}: ${response.statusCode} after ${took} ms ${response.body.slice(0, 120)}`)
    t.ok(response.statusCode === 503 && took < 1800, `${what} held, ${route}: 503 within the bound (got ${response.statusCode} after ${took} ms)`)
    t.same(await snapshotTables(sql), before, `${what} held, ${route}: nothing stored`)
  }
})
