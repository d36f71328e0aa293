// Review: the usage API (budget_record_usage_in_trees) under concurrency: first records on windows that have no row yet,
// across two trees (alsoCountsToward), mixed with the batch route and direct inserts (the trigger); and one key raced.
import t from 'tap'
import { PREFIX, budgetRequest, buildApp, postBudget } from './fixtures/app.js'

type App = Awaited<ReturnType<typeof buildApp>>

const createBudget = async (admin: App['admin'], overrides: Record<string, unknown> = {}) =>
  await postBudget(admin, budgetRequest({ amount: '100000', period: 'daily', ...overrides }))

t.test('concurrent first records on new windows in two trees: no error, every window row equals its allocations', async (t) => {
  const { app, admin, sql } = await buildApp(t, {}, {})
  const alerts = [{ threshold: 1, actions: ['notify'], notificationChannels: ['email'] }, { threshold: 2, actions: ['notify'], notificationChannels: ['email'] }]
  const rootA = await createBudget(admin, { name: 'A', alerts })
  const childA = await createBudget(admin, { name: 'A1', parentId: rootA.id, scopeId: 'a1', alerts })
  const rootB = await createBudget(admin, { name: 'B', scopeId: 'b', alerts })
  const childB = await createBudget(admin, { name: 'B1', parentId: rootB.id, scopeId: 'b1' })
  const days = [1, 2, 3].map((back) => new Date(Date.now() - back * 86400000 - 3600000).toISOString())
  const jobs: Array<Promise<unknown>> = []
  let n = 0
  for (let round = 0; round < 12; round++) {
    for (const at of days) {
      const k = n++
      jobs.push(app.budgetTracker.record({ budgetId: childA.id, amount: '1.5', currency: 'USD', source: 's', occurredAt: at, alsoCountsToward: [childB.id], metadata: { requestId: `a-${k}` } }))
      jobs.push(app.budgetTracker.record({ budgetId: childB.id, amount: '2.25', currency: 'USD', source: 's', occurredAt: at, alsoCountsToward: [childA.id, rootA.id], metadata: { requestId: `b-${k}` } }))
      jobs.push(admin({ method: 'POST', url: `${PREFIX}/usage/batch`, body: { records: [{ budgetId: rootB.id, amount: '0.5', currency: 'USD', occurredAt: at, metadata: { requestId: `c-${k}` } }, { budgetId: childA.id, amount: '0.25', currency: 'USD', occurredAt: at, metadata: { requestId: `d-${k}` } }] } })
        .then((response) => { if (response.statusCode >= 300 || response.json().created !== 2) throw new Error(response.body) }))
      jobs.push(sql`insert into budget_usage_records (root_id, budget_id, amount, currency, source, metadata, occurred_at) values (${rootB.rootId}, ${childB.id}, 0.125, 'USD', 's', '{}'::jsonb, ${at})`)
    }
  }
  const settled = await Promise.allSettled(jobs)
  const failures = settled.filter((result) => result.status === 'rejected').map((result) => String((result as PromiseRejectedResult).reason?.code ?? '') + ' ' + String((result as PromiseRejectedResult).reason?.message))
  t.same(failures, [], 'every record stored (no deadlock, no unique violation)')
  const drift = await sql`
    select c.budget_id, c.period_start, c.current_amount::text as cached, c.usage_count::int as calls, s.total::text as total, s.n::int as n
    from budget_status_cache c
    cross join lateral (select coalesce(sum(a.amount), 0) as total, count(*) as n from budget_usage_allocations a
                        where a.budget_id = c.budget_id and a.occurred_at >= c.period_start and a.occurred_at < c.period_end) s
    where c.budget_id = any (${[rootA.id, childA.id, rootB.id, childB.id]}) and (c.current_amount <> s.total or c.usage_count <> s.n)`
  t.same(drift.map((row) => ({ ...row })), [], 'every window row equals its allocations')
  const [count] = await sql`select count(*)::int as n from budget_status_cache where budget_id = any (${[rootA.id, childA.id, rootB.id, childB.id]}) and period_start < now() - interval '20 hours'`
  t.equal(count!.n, 12, 'one row per budget and past day')
  const [totals] = await sql`select sum(current_amount)::text as total from budget_status_cache where budget_id = ${rootA.id}`
  // rootA: A1's 1.5 + B1's 2.25 (alsoCountsToward A1 and A: A once) + batch 0.25, 12 rounds x 3 days
  t.equal(totals!.total, String((1.5 + 2.25 + 0.25) * 36) + '.0000000000')
  const crossings = await sql`select budget_id, period_start, threshold::text from budget_alert_history where budget_id = ${rootA.id} order by period_start, threshold`
  t.equal(crossings.length, 0, 'no alert reached on a 100000 budget')
})

t.test('one key raced across budgets and trees: one record, the others replay or conflict', async (t) => {
  const { app, admin, sql } = await buildApp(t)
  const a = await createBudget(admin, { name: 'A' })
  const b = await createBudget(admin, { name: 'B', scopeId: 'b' })
  for (let round = 0; round < 6; round++) {
    const key = `raced-${round}`
    const results = await Promise.allSettled(Array.from({ length: 10 }, async (_, i) =>
      await app.budgetTracker.record({ budgetId: i % 2 === 0 ? a.id : b.id, amount: '1', currency: 'USD', source: 's', alsoCountsToward: [i % 2 === 0 ? b.id : a.id] }, { idempotencyKey: key })))
    const created = results.filter((result) => result.status === 'fulfilled' && !result.value.replayed).length
    t.equal(created, 1, `round ${round}: one record made`)
    for (const result of results) {
      if (result.status === 'rejected') t.match(result.reason, { code: 'BUDGET_ERR_IDEMPOTENCY_CONFLICT' }, 'a conflict, not a fault')
    }
  }
  const [records] = await sql`select count(*)::int as n from budget_usage_records`
  t.equal(records!.n, 6)
  const [sum] = await sql`select sum(current_amount)::text as total from budget_status_cache`
  t.equal(sum!.total, '12.0000000000', 'each record counted once toward each of the two budgets')
})
