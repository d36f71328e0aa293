// The bulk usage collector's bounds (issue 19, items 10 and 15; review rc): a key reused over many refused
// requests is decided in one run of the batch statement; the batch's checks and store run in its one bounded
// transaction, cut at the bound between statements as well as within one; 10,000 distinct budgets are asked
// in a few statements, not one each on the shared pool ahead of the gate.
import { randomUUID } from 'node:crypto'
import Fastify from 'fastify'
import t from 'tap'
import { boundedTransaction, withinBound } from '../lib/kernel/database/bounded.js'
import { AdminTimeoutError } from '../lib/kernel/errors.js'
import { ADMIN_TOKEN, PREFIX, budgetRequest, buildApp } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'

const BATCH = `${PREFIX}/usage/batch`

t.test('a key repeated over 200 refused requests is decided in one run of the batch statement', async (t) => {
  const { admin, sql } = await buildApp(t, { adminTimeoutMs: 600_000 })
  const budget = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ amount: '1000000', period: 'annual', startDate: '2024-01-01' }) })).json() as { id: string }
  // Each statement that inserts usage records takes a number; a sequence is not rolled back with a savepoint.
  await sql`create sequence usage_insert_statements`
  await sql`create function count_usage_insert() returns trigger language plpgsql as $$ begin perform nextval('usage_insert_statements'); return null; end $$`
  await sql`create trigger count_usage_insert after insert on budget_usage_records for each statement execute function count_usage_insert()`
  const runs = async () => ((await sql`select case when is_called then last_value else 0 end::int as n from usage_insert_statements`)[0]!.n as number)
  const good = Array.from({ length: 2000 }, (_, i) => ({ budgetId: budget.id, amount: '0.001', currency: 'USD', metadata: { requestId: `g-${i}` } }))
  // 200 records under one key, each another request (another amount), none with an EUR->USD rate; then one that has none either, and one in USD
  const bad = Array.from({ length: 200 }, (_, i) => ({ budgetId: budget.id, amount: String(i + 1), currency: 'EUR', metadata: { requestId: 'same-key' } }))
  const taker = { budgetId: budget.id, amount: '7', currency: 'USD', metadata: { requestId: 'same-key' } }
  const before = await runs()
  const response = await admin({ method: 'POST', url: BATCH, body: { records: [...good, ...bad, taker, bad[3]] } })
  t.equal(response.statusCode, 200)
  const body = response.json() as { created: number, refused: number, replayed: number, results: Array<{ status: string, error?: { code: string } }> }
  t.equal(body.created, 2001, 'the good records and the first request under the key that could be stored')
  t.equal(body.refused, 201, 'each request without a rate refused, and one after the key was taken a conflict')
  t.equal(body.results[2000]!.error!.code, 'BUDGET_ERR_EXCHANGE_RATE_MISSING')
  t.equal(body.results[2200]!.status, 'created', 'the next request under the refused ones\' key takes it, as one by one')
  t.not(body.results[2201]!.error!.code, 'BUDGET_ERR_EXCHANGE_RATE_MISSING', 'a record after the key was taken is the holder\'s conflict, not a refusal for its rate')
  t.equal(await runs() - before, 1, 'one run of the batch statement (it was one per request under the key: 201)')
})

t.test('with the default bound, 5,000 good records and 1,000 refused under one key: the good ones stored', async (t) => {
  const { admin, sql } = await buildApp(t)
  const budget = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ amount: '1000000', period: 'annual', startDate: '2024-01-01' }) })).json() as { id: string }
  const good = Array.from({ length: 5000 }, (_, i) => ({ budgetId: budget.id, amount: '0.001', currency: 'USD', metadata: { requestId: `g-${i}` } }))
  const bad = Array.from({ length: 1000 }, (_, i) => ({ budgetId: budget.id, amount: String(i + 1), currency: 'EUR', metadata: { requestId: 'same-key' } }))
  const response = await admin({ method: 'POST', url: BATCH, body: { records: [...good, ...bad] } })
  t.equal(response.statusCode, 200, 'the good records are stored, the bad refused')
  const [{ n }] = await sql`select count(*)::int as n from budget_usage_records` as unknown as [{ n: number }]
  t.equal(n, 5000)
})

t.test('a bounded transaction stops at its deadline between statements, each statement cut at what is left', async (t) => {
  const { sql } = await buildApp(t)
  await sql`create table bound_probe (n int)`
  const bounded = boundedTransaction(sql, 500, Fastify().log)
  let completed = 0
  const error = await bounded(async (tx) => {
    for (let n = 0; n < 3; n++) {
      await withinBound(tx)
      await tx`select pg_sleep(0.3)`
      await tx`insert into bound_probe values (${n})`
      completed++
    }
  }).catch((error: unknown) => error)
  t.type(error, AdminTimeoutError)
  t.ok(completed < 2, `the work stopped at the bound (${completed} of 3 statements of 300 ms ran under a 500 ms bound; each of its own timeout let all 3 run)`)
  t.same(await sql`select n from bound_probe`, [], 'nothing stored')
})

t.test('a batch held up past its bound answers BUDGET_ERR_TIMEOUT, stores nothing, and runs nothing after its answer', async (t) => {
  const { admin, sql } = await buildApp(t, { adminTimeoutMs: 1000 })
  const budget = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ amount: '1000' }) })).json() as { id: string }
  const blocker = await sql.reserve()
  t.teardown(() => { blocker.release() })
  // The checks (scope lookup, budgets, filters, windows) read budget_definitions: held, they wait in the bound.
  await blocker`begin`
  await blocker`lock table budget_definitions in access exclusive mode`
  const response = await admin({ method: 'POST', url: BATCH, body: { records: [{ budgetId: budget.id, amount: '1', currency: 'USD', metadata: { requestId: 'x' } }] } })
  const [running] = await sql`select count(*)::int as n from pg_stat_activity where datname = current_database() and query like '%budget_definitions%' and state = 'active' and pid <> pg_backend_pid() and pid <> ${(await blocker`select pg_backend_pid() as pid`)[0]!.pid as number}`
  await blocker`rollback`
  t.equal(response.statusCode, 503)
  t.equal((response.json() as { code: string }).code, 'BUDGET_ERR_TIMEOUT')
  t.equal(running!.n, 0, 'no statement of the batch still runs once it is answered')
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.same(await sql`select id from budget_usage_records where idempotency_key = 'x'`, [], 'nothing stored, even once the lock is let go')
})

t.test('10,000 distinct unknown budget ids: each refused 404, no gated call on another team refused meanwhile', async (t) => {
  const gw = await buildGateway(t, { gate: {} })
  await gw.createBudget({ name: 'b', scopeId: 'team-b', amount: '100000' })
  const records = Array.from({ length: 10_000 }, () => ({ budgetId: randomUUID(), amount: '1', currency: 'USD' }))
  let done: { status: number, codes: Set<string> } | null = null
  void gw.app.inject({ method: 'POST', url: BATCH, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: { records } }).then((r) => {
    done = { status: r.statusCode, codes: new Set((r.json() as { results: Array<{ error?: { code: string } }> }).results.map((result) => result.error?.code ?? 'none')) }
  })
  const codes = new Map<number, number>()
  const started = Date.now()
  while (done === null && Date.now() - started < 60_000) {
    for (const r of await Promise.all(Array.from({ length: 4 }, async () => await gw.call({ team: 'team-b' })))) codes.set(r.statusCode, (codes.get(r.statusCode) ?? 0) + 1)
  }
  t.equal(done!.status, 200)
  t.same([...done!.codes], ['BUDGET_ERR_NOT_FOUND'], 'each record answered as the single route answers an unknown budget')
  t.equal(codes.get(503) ?? 0, 0, `no gated call on another team refused (${JSON.stringify(Object.fromEntries(codes))})`)
})
