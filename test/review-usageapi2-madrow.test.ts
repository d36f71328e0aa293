// Review 2: budget_record_usage_in_trees where a window has earlier allocations but no status cache row (after a
// period change): projected alerts, a record dated before the window's last allocation, a refusal (22003) that
// must leave no row, and records racing to make the row. Compared with the per-row trigger.
import t from 'tap'
import { PREFIX, budgetRequest, buildApp, postBudget, snapshotTables } from './fixtures/app.js'

type App = Awaited<ReturnType<typeof buildApp>>

const createBudget = async (admin: App['admin'], overrides: Record<string, unknown>) =>
  await postBudget(admin, budgetRequest({ amount: '100', period: 'monthly', ...overrides }))

async function viaApi (admin: App['admin'], budgetId: string, amount: string, occurredAt: string): Promise<void> {
  const response = await admin({ method: 'POST', url: `${PREFIX}/${budgetId}/usage`, body: { amount, currency: 'USD', source: 'test', occurredAt } })
  if (response.statusCode !== 201) throw new Error(response.body)
}

async function outcome (sql: App['sql'], budgetId: string) {
  const alerts = await sql`select period_start, threshold::text, basis, spent::text, limit_amount::text, resolved_at is null as active
                           from budget_alert_history where budget_id = ${budgetId} order by period_start, basis, threshold`
  const windows = await sql`select period_start, period_end, current_amount::text, usage_count::int, last_usage_at from budget_status_cache
                            where budget_id = ${budgetId} order by period_start`
  return { alerts: alerts.map((row) => ({ ...row })), windows: windows.map((row) => ({ ...row })) }
}

// two days back at 10:00 UTC, in a daily window that is over (its forecast is its spend)
const day = new Date(Date.now() - 2 * 86400000)
day.setUTCHours(10, 0, 0, 0)
const at = (hours: number) => new Date(day.getTime() + hours * 3600000).toISOString()

t.test('projected and current alerts on a window made by the record: the same crossings, row, count and last instant as the trigger', async (t) => {
  const { admin, sql } = await buildApp(t)
  const alerts = [
    { threshold: 50, actions: ['notify'], notificationChannels: ['email'] },
    { threshold: 60, basis: 'projected', actions: ['notify'], notificationChannels: ['email'] },
    { threshold: 95, basis: 'projected', actions: ['notify'], notificationChannels: ['email'] }
  ]
  const api = await createBudget(admin, { name: 'api', alerts, startDate: '2024-01-01' })
  const trg = await createBudget(admin, { name: 'trg', alerts, startDate: '2024-01-01', scopeId: 'trg' })
  for (const budget of [api, trg]) {
    await viaApi(admin, budget.id, '20', at(1))
    await viaApi(admin, budget.id, '25', at(3))
    const put = await admin({ method: 'PUT', url: `${PREFIX}/${budget.id}`, body: { period: 'daily' } })
    t.equal(put.statusCode, 200)
  }
  const [rows] = await sql`select count(*)::int as n from budget_status_cache where budget_id = any (${[api.id, trg.id]}) and period_start <= ${at(0)} and period_end > ${at(0)}`
  t.equal(rows!.n, 0, 'the day has no row on either budget')

  // dated before the day's last allocation: the row's last instant stays at(3)
  await viaApi(admin, api.id, '20', at(2))
  await sql`insert into budget_usage_records (root_id, budget_id, amount, currency, source, metadata, occurred_at)
            values (${trg.rootId}, ${trg.id}, 20, 'USD', 'test', '{}'::jsonb, ${at(2)})`

  const [a, b] = [await outcome(sql, api.id), await outcome(sql, trg.id)]
  t.same(a, b, 'the same rows and crossings')
  const dayRow = a.windows.find((w) => (w.period_start as Date).getTime() === Date.parse(at(-10)))
  t.same(dayRow && { amount: dayRow.current_amount, calls: dayRow.usage_count, last: (dayRow.last_usage_at as Date).toISOString() },
    { amount: '65.0000000000', calls: 3, last: at(3) }, 'the day: 65 over 3 records, last at 13:00')
  t.same(a.alerts.filter((x) => (x.period_start as Date).getTime() === Date.parse(at(-10))).map((x) => [x.threshold, x.basis, x.spent]),
    [['50', 'current', '65.0000000000'], ['60', 'projected', '65.0000000000']],
    'the day crosses 50% and projected 60% at 65 (an ended window projects its spend)')
})

t.test('a record refused with 22003 on a window it would have made a row for leaves nothing, as the trigger', async (t) => {
  const { app, admin, sql } = await buildApp(t)
  const big = '999999999999999000'
  const api = await createBudget(admin, { name: 'api', amount: '999999999999999999' })
  const trg = await createBudget(admin, { name: 'trg', amount: '999999999999999999', scopeId: 'trg' })
  const other = await createBudget(admin, { name: 'other', amount: '1000', scopeId: 'o' })
  for (const budget of [api, trg]) {
    await viaApi(admin, budget.id, big, at(1))
    const put = await admin({ method: 'PUT', url: `${PREFIX}/${budget.id}`, body: { period: 'daily' } })
    t.equal(put.statusCode, 200)
  }
  const before = await snapshotTables(sql)
  const triggered = await sql`insert into budget_usage_records (root_id, budget_id, amount, currency, source, metadata, occurred_at, also_counts_toward)
                              values (${trg.rootId}, ${trg.id}, 5000, 'USD', 'test', '{}'::jsonb, ${at(2)}, ${[other.id]}::uuid[])`
    .then(() => 'stored', (error: { code?: string }) => error.code)
  t.equal(triggered, '22003', 'the trigger refuses it')
  t.same(await snapshotTables(sql), before, 'the trigger leaves nothing')
  const refused = await app.budgetTracker.record({ budgetId: api.id, amount: '5000', currency: 'USD', source: 'test', occurredAt: at(2), alsoCountsToward: [other.id] })
    .then(() => 'stored', (error: { code?: string, field?: string }) => `${error.code} ${error.field}`)
  t.equal(refused, 'BUDGET_ERR_VALIDATION amount', 'the API refuses it on its amount')
  t.same(await snapshotTables(sql), before, 'the API leaves nothing: no record, no row made for the day nor for the other budget')
})

t.test('records racing on a window with earlier allocations and no row: made once, at every allocation', async (t) => {
  const { app, admin, sql } = await buildApp(t)
  const alerts = [{ threshold: 50, actions: ['notify'], notificationChannels: ['email'] }]
  const parent = await createBudget(admin, { name: 'p', amount: '1000', alerts })
  const child = await createBudget(admin, { name: 'c', amount: '1000', parentId: parent.id, scopeId: 'c', alerts })
  await viaApi(admin, child.id, '300', at(0))
  for (const budget of [child, parent]) {
    const put = await admin({ method: 'PUT', url: `${PREFIX}/${budget.id}`, body: { period: 'daily' } })
    t.equal(put.statusCode, 200)
  }
  const jobs: Array<Promise<unknown>> = []
  for (let i = 0; i < 24; i++) {
    jobs.push(app.budgetTracker.record({ budgetId: i % 2 === 0 ? child.id : parent.id, amount: '10', currency: 'USD', source: 's', occurredAt: at(1 + (i % 5) / 10) }))
    if (i % 4 === 0) jobs.push(sql`insert into budget_usage_records (root_id, budget_id, amount, currency, source, metadata, occurred_at) values (${parent.rootId}, ${child.id}, 1, 'USD', 't', '{}'::jsonb, ${at(1)})`)
  }
  const settled = await Promise.allSettled(jobs)
  t.same(settled.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason)), [], 'every record stored')
  const rows = await sql`select budget_id, current_amount::text as amount, usage_count::int as calls from budget_status_cache
                         where period_start = ${at(-10)} order by budget_id = ${parent.id}`
  t.same(rows.map((r) => [r.budget_id, r.amount, r.calls]), [[child.id, '426.0000000000', 19], [parent.id, '546.0000000000', 31]],
    'child: 300 + 12 x 10 + 6 x 1; parent: that and 12 x 10 of its own')
  const crossings = await sql`select budget_id, spent::text from budget_alert_history where period_start = ${at(-10)} order by budget_id = ${parent.id}`
  t.same(crossings.map((r) => r.budget_id), [parent.id], 'one crossing of 50%, the parent\'s (the child stays under 500)')
  t.ok(Number(crossings[0]!.spent) >= 500 && Number(crossings[0]!.spent) <= 511, `crossed at its first spend at or past 500 (${crossings[0]!.spent})`)
})
