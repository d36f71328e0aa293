// Review: the usage API (budget_record_usage_in_trees) against the per-row trigger, where a window has
// allocations but no status cache row (a past window after a period change).
import t from 'tap'
import { PREFIX, budgetRequest, buildApp, postBudget } from './fixtures/app.js'

type App = Awaited<ReturnType<typeof buildApp>>

const createBudget = async (admin: App['admin'], overrides: Record<string, unknown> = {}) =>
  await postBudget(admin, budgetRequest({ amount: '100', ...overrides }))

async function viaApi (admin: App['admin'], budgetId: string, amount: string, occurredAt: string): Promise<void> {
  const response = await admin({ method: 'POST', url: `${PREFIX}/${budgetId}/usage`, body: { amount, currency: 'USD', source: 'test', occurredAt } })
  if (response.statusCode !== 201) throw new Error(response.body)
}

async function viaTrigger (sql: App['sql'], budgetId: string, amount: string, occurredAt: string): Promise<void> {
  await sql`insert into budget_usage_records (root_id, budget_id, amount, currency, source, metadata, occurred_at)
            select d.root_id, d.id, ${amount}, 'USD', 'test', '{}'::jsonb, ${occurredAt} from budget_definitions d where d.id = ${budgetId}`
}

async function outcome (sql: App['sql'], budgetId: string) {
  const alerts = await sql`select period_start, threshold::text, basis, spent::text, limit_amount::text from budget_alert_history
                           where budget_id = ${budgetId} order by period_start, threshold, crossed_at`
  const windows = await sql`select period_start, current_amount::text, usage_count::int, last_usage_at from budget_status_cache
                            where budget_id = ${budgetId} order by period_start`
  return { alerts: alerts.map((row) => ({ ...row })), windows: windows.map((row) => ({ ...row })) }
}

t.test('a backdated record into a window with allocations but no row crosses its alert at the same spend as the trigger', async (t) => {
  const { admin, sql } = await buildApp(t)
  const alerts = [{ threshold: 50, actions: ['notify'], notificationChannels: ['email'] }, { threshold: 90, actions: ['notify'], notificationChannels: ['email'] }]
  const api = await createBudget(admin, { name: 'api', alerts })
  const trig = await createBudget(admin, { name: 'trigger', alerts })
  const day = new Date(Date.now() - 86400000)
  day.setUTCHours(10, 0, 0, 0)
  const at = (hours: number) => new Date(day.getTime() + hours * 3600000).toISOString()
  // spend 60 on that day while the budgets are monthly (they are the same on both paths)
  for (const budget of [api, trig]) {
    await viaApi(admin, budget.id, '30', at(0))
    await viaApi(admin, budget.id, '30', at(1))
    const put = await admin({ method: 'PUT', url: `${PREFIX}/${budget.id}`, body: { period: 'daily' } })
    t.equal(put.statusCode, 200, 'the period changes to daily')
  }
  const [missing] = await sql`select count(*)::int as n from budget_status_cache where budget_id = any (${[api.id, trig.id]}) and period_start <= ${at(0)} and period_end > ${at(0)}`
  t.equal(missing!.n, 0, 'the day has no window row on either budget')

  await viaApi(admin, api.id, '10', at(2))
  await viaTrigger(sql, trig.id, '10', at(2))

  const [a, b] = [await outcome(sql, api.id), await outcome(sql, trig.id)]
  t.same(a.windows, b.windows, 'the same window rows')
  t.same(a.alerts, b.alerts, 'the same alert crossings (the 50% crossing of the day records spent 70, as the trigger does)')
})
