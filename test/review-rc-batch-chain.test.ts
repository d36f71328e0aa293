// Review rc: a batch that repeats one key over many different requests, each refused (no exchange rate),
// re-runs the whole batch statement once per request under that key (collector.ts store(): RetryBatch loop).
// The refused records are answered correctly, but the time is quadratic again (issue 19, item 10).
import t from 'tap'
import { PREFIX, budgetRequest, buildApp } from './fixtures/app.js'

const BATCH = `${PREFIX}/usage/batch`

t.test('a key repeated over N refused requests costs N runs of the whole batch', async (t) => {
  const { admin } = await buildApp(t, { adminTimeoutMs: 600_000 })
  const created = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ amount: '1000000', period: 'annual', startDate: '2024-01-01' }) })
  const budget = created.json() as { id: string }
  const GOOD = 2000
  const good = Array.from({ length: GOOD }, (_, i) => ({ budgetId: budget.id, amount: '0.001', currency: 'USD', metadata: { requestId: `g-${i}-${Math.random()}` } }))
  const run = async (records: unknown[]) => {
    const started = performance.now()
    const response = await admin({ method: 'POST', url: BATCH, body: { records } })
    return { ms: performance.now() - started, status: response.statusCode, body: response.json() as { created: number, refused: number } }
  }
  // one bad record (no EUR->USD rate) among GOOD good ones
  const oneBad = await run([...good, { budgetId: budget.id, amount: '1', currency: 'EUR', metadata: { requestId: 'bad-0' } }])
  const good2 = good.map((r) => ({ ...r, metadata: { requestId: `${r.metadata.requestId}-b` } }))
  const BAD = 200
  // BAD records under one key, each another request (another amount), none with a rate
  const chained = await run([...good2, ...Array.from({ length: BAD }, (_, i) => ({ budgetId: budget.id, amount: String(i + 1), currency: 'EUR', metadata: { requestId: 'same-key' } }))])
  t.comment(`one bad among ${GOOD}: ${oneBad.ms.toFixed(0)} ms (${oneBad.status}, created ${oneBad.body.created}); ${BAD} bad under one key among ${GOOD}: ${chained.ms.toFixed(0)} ms (${chained.status}, created ${chained.body.created}, refused ${chained.body.refused})`)
  t.equal(chained.status, 200)
  t.equal(chained.body.created, GOOD)
  t.ok(chained.ms < 2 * oneBad.ms + 1000, `the chained batch took ${chained.ms.toFixed(0)} ms, at most 2x the one-bad batch (${oneBad.ms.toFixed(0)} ms) expected`)
})

t.test('with the default bound, the same batch is refused whole (503) although every good record could be stored', async (t) => {
  const { admin, sql } = await buildApp(t)
  const created = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ amount: '1000000', period: 'annual', startDate: '2024-01-01' }) })
  const budget = created.json() as { id: string }
  const good = Array.from({ length: 5000 }, (_, i) => ({ budgetId: budget.id, amount: '0.001', currency: 'USD', metadata: { requestId: `g-${i}` } }))
  const bad = Array.from({ length: 1000 }, (_, i) => ({ budgetId: budget.id, amount: String(i + 1), currency: 'EUR', metadata: { requestId: 'same-key' } }))
  const started = performance.now()
  const response = await admin({ method: 'POST', url: BATCH, body: { records: [...good, ...bad] } })
  const [{ n }] = await sql`select count(*)::int as n from budget_usage_records` as unknown as [{ n: number }]
  t.comment(`${response.statusCode} after ${(performance.now() - started).toFixed(0)} ms; ${n} records stored; ${response.body.slice(0, 200)}`)
  t.equal(response.statusCode, 200, 'the good records are stored, the bad refused')
})
