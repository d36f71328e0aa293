// Review: the usage API's errors against the per-row trigger's (RB001 naming the pair; 22003).
import t from 'tap'
import { PREFIX, budgetRequest, buildApp, postBudget, snapshotTables } from './fixtures/app.js'

type App = Awaited<ReturnType<typeof buildApp>>

const createBudget = async (admin: App['admin'], overrides: Record<string, unknown> = {}) =>
  await postBudget(admin, budgetRequest({ amount: '100', period: 'annual', ...overrides }))

t.test('a record reaching two budgets with no rate names the same pair as the trigger does', async (t) => {
  const { app, admin, sql } = await buildApp(t)
  const own = await createBudget(admin, { name: 'own' })
  // the GBP budget's tree first in root order: the trigger meets it first
  let eur: { id: string, rootId: string }
  let gbp: { id: string, rootId: string }
  for (;;) {
    eur = await createBudget(admin, { name: 'eur', currency: 'EUR', scopeId: 'e' })
    gbp = await createBudget(admin, { name: 'gbp', currency: 'GBP', scopeId: 'g' })
    if (gbp.rootId < eur.rootId) break
  }
  const also = [eur.id, gbp.id]
  const triggered = await sql`insert into budget_usage_records (root_id, budget_id, amount, currency, source, metadata, occurred_at, also_counts_toward)
                              values (${own.rootId}, ${own.id}, 1, 'USD', 'test', '{}'::jsonb, now(), ${also}::uuid[])`
    .then(() => null, (error: { code?: string, detail?: string }) => ({ code: error.code, detail: error.detail }))
  t.same(triggered, { code: 'RB001', detail: 'USD/GBP' }, 'the trigger names the pair of the first budget it meets')

  const before = await snapshotTables(sql)
  const refused = await app.budgetTracker.record({ budgetId: own.id, amount: '1', currency: 'USD', source: 'test', alsoCountsToward: also })
    .then(() => null, (error: { code?: string, from?: string, to?: string }) => ({ code: error.code, pair: `${error.from}/${error.to}` }))
  t.same(refused, { code: 'BUDGET_ERR_EXCHANGE_RATE_MISSING', pair: 'USD/GBP' }, 'the API names the same pair as the trigger')
  t.same(await snapshotTables(sql), before, 'nothing stored')
})

t.test('a record that would take a window past numeric(28,10) is a 400 that stores nothing, as through the trigger', async (t) => {
  const { admin, sql } = await buildApp(t)
  const a = await createBudget(admin, { name: 'a', amount: '999999999999999999' })
  const b = await createBudget(admin, { name: 'b', amount: '999999999999999999' })
  for (const budget of [a, b]) {
    const first = await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: { amount: '999999999999999990', currency: 'USD', source: 'test' } })
    t.equal(first.statusCode, 201, 'the first large record fits')
  }
  const triggered = await sql`insert into budget_usage_records (root_id, budget_id, amount, currency, source, metadata, occurred_at)
                              values (${b.rootId}, ${b.id}, 20, 'USD', 'test', '{}'::jsonb, now())`
    .then(() => null, (error: { code?: string }) => error.code)
  t.equal(triggered, '22003')
  const before = await snapshotTables(sql)
  const response = await admin({ method: 'POST', url: `${PREFIX}/${a.id}/usage`, body: { amount: '20', currency: 'USD', source: 'test' } })
  t.equal(response.statusCode, 400, response.body)
  t.match(response.json(), { field: 'amount' })
  t.same(await snapshotTables(sql), before, 'nothing stored')
  const [row] = await sql`select current_amount::text as amount, usage_count::int as calls from budget_status_cache where budget_id = ${a.id}`
  t.same({ ...row }, { amount: '999999999999999990.0000000000', calls: 1 })
})
