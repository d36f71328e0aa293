// Adversarial review of budget_recon_move_correction under load: true-up moves of a child and its parent
// while gated calls (holds, leases, settlements) and usage records hit the same windows.
import t from 'tap'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'
import { findViolations, waitForSettled } from './fixtures/invariants.js'

const DAY_MS = 86_400_000
const dayBefore = (days: number): string => new Date(Date.now() - days * DAY_MS).toISOString().slice(0, 10)
const YESTERDAY = dayBefore(1)
const TWO_DAYS_AGO = dayBefore(2)
const headers = { authorization: `Bearer ${ADMIN_TOKEN}` }
const caller = { organization: 'acme', team: 'platform' }

t.test('moves under gated load keep every window at the sum of its allocations, and answer no 5xx', async (t) => {
  const { app, sql, createBudget } = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const alerts = [{ threshold: 50, actions: ['notify'], notificationChannels: ['ops'] }]
  const parent = await createBudget({ scopeType: 'organization', scopeId: 'acme', amount: '100000', period: 'annual', startDate: TWO_DAYS_AGO, alerts })
  const child = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '50000', parentId: parent.id, period: 'monthly', startDate: TWO_DAYS_AGO, alerts })
  const admin = async (method: 'GET' | 'POST' | 'PUT', url: string, body?: Record<string, unknown>, extra: Record<string, string> = {}, payload?: string) =>
    await app.inject({ method, url: `${PREFIX}${url}`, headers: { ...headers, ...extra }, ...(body === undefined ? {} : { body }), ...(payload === undefined ? {} : { payload }) })
  for (const mapping of [
    { provider: 'mistral', kind: 'account', value: 'acme', budgetId: parent.id, trueUp: true },
    { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: child.id, trueUp: true }
  ]) t.equal((await admin('POST', '/provider-costs/mappings', mapping)).statusCode, 201)

  const statuses: number[] = []
  const errors: string[] = []
  const [before] = await sql<Array<{ n: string }>>`select deadlocks::text as n from pg_stat_database where datname = current_database()`
  let key = 0
  for (let round = 0; round < 25; round++) {
    const childBill = (1000 + ((round * 7919) % 3000) - 1500 + round).toString()
    const otherBill = (((round * 104729) % 2000) - 700).toString()
    const csv = ['date,provider,account,project,amount,currency', `${YESTERDAY},mistral,acme,proj_a,${childBill},USD`, `${YESTERDAY},mistral,acme,proj_b,${otherBill},USD`].join('\n')
    const imported = await admin('POST', '/provider-costs/import', undefined, { 'content-type': 'text/csv' }, csv)
    if (imported.statusCode !== 200) throw new Error(imported.body)
    const work: Array<Promise<unknown>> = []
    const order = round % 2 === 0 ? [child.id, parent.id] : [parent.id, child.id]
    for (const budgetId of order) {
      work.push(admin('POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId }).then((r) => { statuses.push(r.statusCode); if (r.statusCode >= 300) errors.push(r.body) }))
    }
    for (let i = 0; i < 4; i++) {
      work.push((async () => {
        const reserved = await app.budgetIntegration.reserveCall(caller, '2')
        if (reserved.reservationId === null) { errors.push('refused'); return }
        await app.budgetIntegration.settleCall(reserved.reservationId, (1 + i / 10).toString())
      })().catch((error: Error) => { errors.push(`gate: ${error.message}`) }))
    }
    for (const [budgetId, occurredAt] of [[child.id, `${YESTERDAY}T03:00:00Z`], [parent.id, `${YESTERDAY}T05:00:00Z`], [child.id, undefined]] as const) {
      work.push(admin('POST', `/${budgetId}/usage`, { amount: '0.5', currency: 'USD', ...(occurredAt === undefined ? {} : { occurredAt }), metadata: { requestId: `u${key++}` } })
        .then((r) => { statuses.push(r.statusCode); if (r.statusCode >= 300) errors.push(r.body) }))
    }
    await Promise.all(work)
  }
  await waitForSettled(sql)
  t.same(errors, [], 'every request answered 2xx')
  t.same(await findViolations(sql), [], 'every window is the sum of its allocations')
  const counts = await sql`select c.budget_id, c.period_start, c.usage_count::int as cached, (select count(*)::int from budget_usage_allocations a
                             where a.budget_id = c.budget_id and a.occurred_at >= c.period_start and a.occurred_at < c.period_end) as counted
                           from budget_status_cache c`
  t.same(counts.filter((row) => row.cached !== row.counted).map((row) => ({ ...row })), [], 'usage_count is the number of allocations')
  // Trued up again, in order: each at its own invoice.
  for (const budgetId of [child.id, parent.id]) t.equal((await admin('POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId })).statusCode, 200)
  const lines = (await admin('GET', `/reconciliation?from=${YESTERDAY}&to=${YESTERDAY}`)).json<{ lines: Array<{ budgetId: string, difference: string, correction: string }> }>().lines
  t.same(lines.map((line) => line.difference === line.correction), [true, true], 'each correction is its line\'s difference')
  const active = await sql`select budget_id, period_start, threshold, count(*)::int as n from budget_alert_history group by 1, 2, 3 having count(*) > 1`
  t.same(active.map((row) => ({ ...row })), [], 'each crossing recorded once')
  await new Promise((resolve) => setTimeout(resolve, 1500))
  const [after] = await sql<Array<{ n: string }>>`select deadlocks::text as n from pg_stat_database where datname = current_database()`
  t.equal(after!.n, before!.n, 'no deadlock')
  t.comment(`statuses: ${JSON.stringify(statuses.reduce<Record<number, number>>((acc, s) => ({ ...acc, [s]: (acc[s] ?? 0) + 1 }), {}))}`)
})
