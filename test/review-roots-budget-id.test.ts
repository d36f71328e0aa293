// Review of the row roots change: migration 010 turned budget_definitions' primary key (id) into (id, root_id)
// and kept no key on id alone (the keys it keeps "across trees" are a usage record's id, the idempotency key
// and a recon dimension). So on plain PostgreSQL a second budget may now carry an existing budget's id, in
// another tree; before 010 the primary key refused it (23505). Any writer that names ids (a restore, a
// hand-written fix: tree.sql's budget_definitions_root says such rows are kept as named) can now make one id
// name two budgets, and every lookup by id then sees both: a usage record on that id fails with 'more than one
// row returned by a subquery used as an expression' (spend.sql's root lookups), answered 500.
import t from 'tap'
import { PREFIX, budgetRequest, buildApp } from './fixtures/app.js'

t.test('a budget id names one budget: a second row with the same id in another tree is refused', async (t) => {
  const { admin, sql } = await buildApp(t)
  const create = async (body: Record<string, unknown>) => (await admin({ method: 'POST', url: PREFIX, body: budgetRequest(body) })).json<{ id: string }>().id
  const a = await create({ name: 'A', scopeId: 'team-a', amount: '100' })
  const b = await create({ name: 'B', scopeType: 'organization', scopeId: 'acme', amount: '100' })
  const duplicate = await sql`
    insert into budget_definitions (id, name, scope_type, scope_id, amount, currency, period, start_date, parent_id)
    values (${a}, 'A again', 'user', 'u1', 5, 'USD', 'monthly', '2024-01-01', ${b})`.then(() => 'inserted', (error: { code?: string }) => error.code)
  t.equal(duplicate, '23505', 'a second budget with A\'s id is refused, as it was before migration 010')
  if (duplicate !== 'inserted') return

  const [named] = await sql<Array<{ n: number }>>`select count(*)::int as n from budget_definitions where id = ${a}`
  t.equal(named!.n, 1, `budget id ${a} names ${named!.n} budgets`)
  // what that does to spend: a record on A is refused with a 500 (spend.sql's scalar root lookup by id finds two rows)
  const recorded = await admin({ method: 'POST', url: `${PREFIX}/${a}/usage`, body: { amount: '1', currency: 'USD' } })
  const allocations = await sql<Array<{ budget_id: string, root_id: string }>>`select budget_id, root_id from budget_usage_allocations order by budget_id, root_id`
  t.same(allocations.map((row) => row.budget_id), [a], `a record on A (${recorded.statusCode}) counts toward A only: ${JSON.stringify(allocations)}`)
})
