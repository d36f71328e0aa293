// Review: alsoCountsToward naming deleted budgets, ids of no budget, duplicates and the record's own budget: the API
// (budget_record_usage_in_trees, with the trees the tracker finds) reaches what the trigger reaches.
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { PREFIX, budgetRequest, buildApp, postBudget } from './fixtures/app.js'

type App = Awaited<ReturnType<typeof buildApp>>

const createBudget = async (admin: App['admin'], overrides: Record<string, unknown> = {}) =>
  await postBudget(admin, budgetRequest({ amount: '1000', period: 'monthly', ...overrides }))

t.test('deleted, missing, duplicate and own ids in alsoCountsToward reach the same budgets as through the trigger', async (t) => {
  const { app, admin, sql } = await buildApp(t)
  const build = async (label: string) => {
    const a = await createBudget(admin, { name: `${label}-A`, scopeId: `${label}a` })
    const a1 = await createBudget(admin, { name: `${label}-A1`, parentId: a.id, scopeId: `${label}a1` })
    const b = await createBudget(admin, { name: `${label}-B`, scopeId: `${label}b` })
    const b1 = await createBudget(admin, { name: `${label}-B1`, parentId: b.id, scopeId: `${label}b1` })
    const gone = await createBudget(admin, { name: `${label}-gone`, scopeId: `${label}g` })
    const deleted = await admin({ method: 'DELETE', url: `${PREFIX}/${gone.id}` })
    t.ok(deleted.statusCode < 300, `${label}: a budget deleted`)
    return { a, a1, b, b1, gone, names: new Map([[a.id, 'A'], [a1.id, 'A1'], [b.id, 'B'], [b1.id, 'B1'], [gone.id, 'gone']]) }
  }
  const api = await build('api')
  const trg = await build('trg')
  const nobody = randomUUID()
  const alsoOf = (f: typeof api) => [[f.gone.id], [nobody], [f.b1.id, f.b1.id, f.a1.id], [nobody, f.b1.id], [f.gone.id, f.b.id]]
  const apiAlso = alsoOf(api)
  const trgAlso = alsoOf(trg)
  for (const [i, also] of apiAlso.entries()) {
    const outcome = await app.budgetTracker.record({ budgetId: api.a1.id, amount: '1', currency: 'USD', source: `r${i}`, alsoCountsToward: also })
      .then(() => 'stored', (error: { code?: string }) => error.code)
    const triggered = await sql`insert into budget_usage_records (root_id, budget_id, amount, currency, source, metadata, occurred_at, also_counts_toward)
                                values (${trg.a1.rootId}, ${trg.a1.id}, 1, 'USD', ${`r${i}`}, '{}'::jsonb, now(), ${trgAlso[i]!}::uuid[])`
      .then(() => 'stored', (error: { code?: string }) => error.code)
    t.same([outcome, triggered], ['stored', 'stored'], `record ${i}: stored through both`)
    const reached = async (f: typeof api) => (await sql`select a.budget_id from budget_usage_allocations a join budget_usage_records u on u.id = a.usage_id
                                                        where u.source = ${`r${i}`} and u.budget_id = ${f.a1.id}`).map((r) => f.names.get(r.budget_id)).sort()
    t.same(await reached(api), await reached(trg), `record ${i}: the same budgets reached`)
  }
  const [counted] = await sql`select count(*)::int as n from budget_usage_allocations a where a.budget_id = ${api.gone.id}`
  const [counted2] = await sql`select count(*)::int as n from budget_usage_allocations a where a.budget_id = ${trg.gone.id}`
  t.equal(counted!.n, counted2!.n, 'the deleted budget counts as much through both')
})
