// Review 2: several moves of child and parent corrections; figures, idempotency, invariants.
import t from 'tap'
import { buildApp, snapshotTables, type TestApp } from './fixtures/app.js'
import { TWO_DAYS_AGO, YESTERDAY, importCsv, ok } from './fixtures/reconciliation.js'
import { findViolations } from './fixtures/invariants.js'

async function budget (app: TestApp, overrides: Record<string, unknown> = {}): Promise<string> {
  const created = await ok<{ id: string }>(app, 'POST', '', {
    name: 'Team budget', scopeType: 'team', scopeId: 'team-a', amount: '100000', currency: 'USD', period: 'monthly', startDate: TWO_DAYS_AGO, ...overrides
  }, 201)
  return created.id
}
interface Line { budgetId: string, providerAmount: string, recordedAmount: string, correction: string | null, difference: string, ratio: string | null }
async function lines (app: TestApp): Promise<Line[]> {
  return (await ok<{ lines: Line[] }>(app, 'GET', `/reconciliation?from=${YESTERDAY}&to=${YESTERDAY}`)).lines
}
async function checkCounts (app: TestApp): Promise<unknown[]> {
  const rows = await app.sql`select c.budget_id, c.period_start, c.usage_count::int as cached, (select count(*)::int from budget_usage_allocations a
      where a.budget_id = c.budget_id and a.occurred_at >= c.period_start and a.occurred_at < c.period_end) as counted from budget_status_cache c`
  return rows.filter((r) => r.cached !== r.counted).map((r) => ({ ...r }))
}

t.test('child and parent both mapped, random orders and bills: each ends at its invoice, idempotent', async (t) => {
  const app = await buildApp(t)
  const parent = await budget(app, { name: 'Org', scopeType: 'organization', scopeId: 'acme', period: 'annual' })
  const child = await budget(app, { name: 'Team', parentId: parent })
  const grand = await budget(app, { name: 'User', scopeType: 'user', scopeId: 'u1', parentId: child })
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'account', value: 'acme', budgetId: parent, trueUp: true }, 201)
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: child, trueUp: true }, 201)
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_u', budgetId: grand, trueUp: true }, 201)
  await ok(app, 'POST', `/${grand}/usage`, { amount: '3', currency: 'USD', occurredAt: `${YESTERDAY}T01:00:00Z`, metadata: { requestId: 'g' } }, 201)
  await ok(app, 'POST', `/${child}/usage`, { amount: '8', currency: 'USD', occurredAt: `${YESTERDAY}T01:00:00Z`, metadata: { requestId: 'a' } }, 201)
  await ok(app, 'POST', `/${parent}/usage`, { amount: '5', currency: 'USD', occurredAt: `${YESTERDAY}T02:00:00Z`, metadata: { requestId: 'b' } }, 201)
  const ids = { parent, child, grand }
  let seed = 7
  const rnd = (n: number) => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n }
  const billsOf = [[10, 5, 4], [6, 0, 4], [0, 0, 0], [10, 5, 4], [13.5, -2, 1], [10, 5, 4], [3, 3, 3], [20, 1, 9]]
  for (let step = 0; step < 40; step++) {
    const [a, b, u] = billsOf[rnd(billsOf.length)]!
    await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,${a},USD`, `${YESTERDAY},mistral,acme,proj_b,${b},USD`, `${YESTERDAY},mistral,acme,proj_u,${u},USD`])
    const order = (['parent', 'child', 'grand'] as const).slice().sort(() => rnd(2) - 0.5)
    const subset = order.slice(0, 1 + rnd(3))
    for (const name of subset) await ok(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: ids[name] })
    // all trued up (in a random order) at the end of every 4th step: every line's correction = its difference
    if (step % 4 === 3) {
      for (const name of order) await ok(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: ids[name] })
      const report = await lines(app)
      const bad = report.filter((l) => l.correction !== null && l.correction !== l.difference && !(Number(l.difference) === 0 && Number(l.correction) === 0))
      t.same(bad, [], `step ${step}: every trued-up line at its invoice (${JSON.stringify(report.map((l) => [l.budgetId === parent ? 'P' : l.budgetId === child ? 'C' : 'G', l.providerAmount, l.recordedAmount, l.correction, l.difference]))})`)
      const before = await snapshotTables(app.sql)
      for (const name of order) {
        const r = await ok<{ status: string }>(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: ids[name] })
        t.equal(r.status, 'unchanged', `step ${step}: ${name} twice is unchanged`)
      }
      const after = await snapshotTables(app.sql)
      // audit log not written for unchanged
      t.same(after, before, `step ${step}: a second round writes nothing`)
      // the records of each correction sum to it
      const sums = await app.sql`select c.budget_id, c.amount::text as amount, (select sum(u.amount)::text from budget_usage_records u where u.id = c.usage_id or u.metadata ->> 'adjusts' = c.usage_id::text) as records
        from budget_recon_corrections c`
      t.same(sums.filter((r) => Number(r.amount) !== Number(r.records)).map((r) => ({ ...r })), [], 'records sum to the correction')
      // the parent's window spend = the provider's account total (the whole bill) since the parent is trued up last in the tree sense
      t.same(await findViolations(app.sql), [], `step ${step}: invariants`)
      t.same(await checkCounts(app), [], `step ${step}: usage_count`)
    }
  }
  const [w] = await app.sql`select current_amount::text as spent from budget_status_cache where budget_id = ${parent}`
  const report = await lines(app)
  t.comment(JSON.stringify(report), w!.spent)
  t.equal(Number(w!.spent), Number(report.find((l) => l.budgetId === parent)!.providerAmount), 'the parent window is at its bill')
})
