// Review 2: text the library hands to app.budgetTracker.record now travels inside one JSON document
// (budget_record_usage_in_trees(p_record jsonb)) instead of as its own text parameters. A description cut by
// String#slice can end in half a surrogate pair (an emoji): stored before the change (as text parameters,
// the driver writes U+FFFD), and stored the same way by the per-row trigger's insert.
import t from 'tap'
import { PREFIX, budgetRequest, buildApp } from './fixtures/app.js'

t.test('a description cut in the middle of an emoji is stored, as a plain insert stores it', async (t) => {
  const { app, admin, sql } = await buildApp(t)
  const created = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ name: 'text', amount: '100', period: 'monthly' }) })
  t.equal(created.statusCode, 201)
  const budget = created.json() as { id: string, rootId: string }
  const description = ('a'.repeat(9) + '\u{1F600}').slice(0, 10) // 'aaaaaaaaa' and a lone high surrogate
  t.equal(description.length, 10)

  // the per-row trigger's way (the insert the API used before the change): text parameters
  const [direct] = await sql`insert into budget_usage_records (root_id, budget_id, amount, currency, source, description, metadata, occurred_at)
                             values (${budget.rootId}, ${budget.id}, 1, 'USD', 'lib', ${description}, '{}'::jsonb, now()) returning description`
  t.equal(direct!.description, 'aaaaaaaaa\ufffd', 'the trigger path stores it, the half pair as U+FFFD')

  const outcome = await app.budgetTracker.record({ budgetId: budget.id, amount: '1', currency: 'USD', source: 'lib', description })
    .then(({ record }) => ({ stored: record.description }), (error: { code?: string, message?: string }) => ({ error: `${error.code ?? ''} ${error.message ?? ''}` }))
  t.same(outcome, { stored: 'aaaaaaaaa\ufffd' }, 'the API path stores it too')
  const [row] = await sql`select current_amount::text as amount, usage_count::int as calls from budget_status_cache where budget_id = ${budget.id}`
  t.same({ ...row }, { amount: '2.0000000000', calls: 2 }, 'both records counted')
})

t.test('a source and an idempotency key with half a surrogate pair: stored as before', async (t) => {
  const { app, admin, sql } = await buildApp(t)
  const created = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ name: 'text', amount: '100', period: 'monthly' }) })
  const budget = created.json() as { id: string }
  const cut = '\u{1F680}'.slice(0, 1)
  const outcome = await app.budgetTracker.record({ budgetId: budget.id, amount: '2.5', currency: 'USD', source: `src${cut}` }, { idempotencyKey: `key${cut}` })
    .then(({ record }) => ({ source: record.source }), (error: { code?: string, message?: string }) => ({ error: `${error.code ?? ''} ${error.message ?? ''}` }))
  t.same(outcome, { source: 'src\ufffd' })
  const [row] = await sql`select idempotency_key from budget_usage_records where budget_id = ${budget.id}`
  t.equal(row?.idempotency_key, 'key\ufffd')
})
