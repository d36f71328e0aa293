// Review: budget_record_usage_in_trees does not trust p_roots: wrong, partial, empty, null or foreign roots reach the same budgets.
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { budgetRequest, buildApp, postBudget } from './fixtures/app.js'

type App = Awaited<ReturnType<typeof buildApp>>

const createBudget = async (admin: App['admin'], overrides: Record<string, unknown> = {}) =>
  await postBudget(admin, budgetRequest({ amount: '1000', period: 'monthly', ...overrides }))

t.test('every p_roots reaches the lineages of the budget and of its other budgets, each once', async (t) => {
  const { admin, sql } = await buildApp(t)
  const a = await createBudget(admin, { name: 'A' })
  const a1 = await createBudget(admin, { name: 'A1', parentId: a.id, scopeId: 'a1' })
  const b = await createBudget(admin, { name: 'B', scopeId: 'b' })
  const b1 = await createBudget(admin, { name: 'B1', parentId: b.id, scopeId: 'b1' })
  const c = await createBudget(admin, { name: 'C', scopeId: 'c' })
  const names = new Map([[a.id, 'A'], [a1.id, 'A1'], [b.id, 'B'], [b1.id, 'B1'], [c.id, 'C']])
  const variants: Array<[string, string[] | null]> = [
    ['right', [a.rootId, b.rootId]], ['own tree only', [a.rootId]], ['other tree only', [b.rootId]], ['a foreign tree', [c.rootId]],
    ['empty', []], ['null', null], ['nonexistent', [randomUUID()]], ['right and more', [c.rootId, a.rootId, b.rootId, randomUUID()]]
  ]
  let k = 0
  for (const [label, roots] of variants) {
    const record = { budget_id: a1.id, amount: '1', currency: 'USD', source: 's', description: null, metadata: {}, idempotency_key: `k-${k}`,
      request_fingerprint: 'f', occurred_at: new Date().toISOString(), also_counts_toward: [b1.id, a.id, b1.id] }
    k++
    const [row] = await sql`select * from budget_record_usage_in_trees(${JSON.stringify(record)}::text::jsonb, ${roots}::uuid[], ${roots?.[0] ?? null}::uuid)`
    const reached = await sql`select a.budget_id, a.root_id, a.amount::text from budget_usage_allocations a where a.usage_id = ${row!.id}`
    t.same(reached.map((r) => names.get(r.budget_id)).sort(), ['A', 'A1', 'B', 'B1'], `${label}: the lineages of A1 and B1, each once`)
    t.ok(reached.every((r) => r.root_id === (['A', 'A1'].includes(names.get(r.budget_id)!) ? a.rootId : b.rootId)), `${label}: each allocation under its tree`)
    const [stored] = await sql`select root_id from budget_usage_records where id = ${row!.id}`
    t.equal(stored!.root_id, a.rootId, `${label}: the record under its budget's tree`)
  }
  const windows = await sql`select budget_id, current_amount::text, usage_count::int from budget_status_cache order by budget_id`
  t.same(windows.map((w) => [names.get(w.budget_id), w.current_amount, w.usage_count]).sort(),
    [['A', '8.0000000000', 8], ['A1', '8.0000000000', 8], ['B', '8.0000000000', 8], ['B1', '8.0000000000', 8]])
})
