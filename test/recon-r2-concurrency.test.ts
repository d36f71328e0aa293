// Review 2: true-ups of one day from two apps (two pools) in parallel with gated calls and usage.
import t from 'tap'
import Fastify from 'fastify'
import postgres from 'postgres'
import budgets from '../lib/index.js'
import { ADMIN_TOKEN, PREFIX, TEST_CHANNELS } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'
import { findViolations, waitForSettled } from './fixtures/invariants.js'

const DAY_MS = 86_400_000
const dayBefore = (days: number): string => new Date(Date.now() - days * DAY_MS).toISOString().slice(0, 10)
const YESTERDAY = dayBefore(1)
const TWO_DAYS_AGO = dayBefore(2)
const headers = { authorization: `Bearer ${ADMIN_TOKEN}` }

t.test('two apps true up one day in parallel with gated calls and usage', async (t) => {
  const { app, sql, url, createBudget } = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const sqlB = postgres(url, { onnotice: () => {} })
  const appB = Fastify()
  await appB.register(budgets, { database: sqlB, adminToken: ADMIN_TOKEN, notifications: { intervalMs: 0, channels: TEST_CHANNELS } })
  await appB.ready()
  t.teardown(async () => { await appB.close(); await sqlB.end({ timeout: 1 }) })
  const alerts = [{ threshold: 50, actions: ['notify'], notificationChannels: ['ops'] }, { threshold: 90, actions: ['notify'], notificationChannels: ['ops'] }]
  const parent = await createBudget({ enforcement: 'soft', scopeType: 'organization', scopeId: 'acme', amount: '6000', period: 'annual', startDate: TWO_DAYS_AGO, alerts })
  const child = await createBudget({ enforcement: 'soft', scopeType: 'team', scopeId: 'platform', amount: '3000', parentId: parent.id, period: 'monthly', startDate: TWO_DAYS_AGO, alerts })
  const grand = await createBudget({ enforcement: 'soft', scopeType: 'user', scopeId: 'u1', amount: '500', parentId: child.id, period: 'daily', startDate: TWO_DAYS_AGO, alerts })
  const apps = [app, appB]
  const admin = async (i: number, method: 'GET' | 'POST' | 'PUT', path: string, body?: Record<string, unknown>, extra: Record<string, string> = {}, payload?: string) =>
    await apps[i]!.inject({ method, url: `${PREFIX}${path}`, headers: { ...headers, ...extra }, ...(body === undefined ? {} : { body }), ...(payload === undefined ? {} : { payload }) })
  for (const mapping of [
    { provider: 'mistral', kind: 'account', value: 'acme', budgetId: parent.id, trueUp: true },
    { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: child.id, trueUp: true },
    { provider: 'mistral', kind: 'project', value: 'proj_u', budgetId: grand.id, trueUp: true }
  ]) t.equal((await admin(0, 'POST', '/provider-costs/mappings', mapping)).statusCode, 201)
  const ids = [parent.id, child.id, grand.id]
  const [before] = await sql<Array<{ n: string }>>`select deadlocks::text as n from pg_stat_database where datname = current_database()`
  const errors: string[] = []
  let key = 0
  for (let round = 0; round < 30; round++) {
    const bills = [(round * 37) % 900 + 100, (round * 53) % 1300 - 200, (round * 71) % 700]
    const csv = ['date,provider,account,project,amount,currency', `${YESTERDAY},mistral,acme,proj_a,${bills[0]},USD`, `${YESTERDAY},mistral,acme,proj_b,${bills[1]},USD`, `${YESTERDAY},mistral,acme,proj_u,${bills[2]},USD`].join('\n')
    const imported = await admin(round % 2, 'POST', '/provider-costs/import', undefined, { 'content-type': 'text/csv' }, csv)
    if (imported.statusCode !== 200) throw new Error(imported.body)
    const work: Array<Promise<unknown>> = []
    for (let k = 0; k < 4; k++) {
      const budgetId = ids[(round + k * 2) % 3]!
      work.push(admin(k % 2, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId })
        .then((r) => { if (r.statusCode >= 300) errors.push(`true-up ${r.statusCode} ${r.body}`) }))
    }
    for (let i = 0; i < 4; i++) {
      work.push((async () => {
        const reserved = await app.budgetIntegration.reserveCall({ organization: 'acme', team: 'platform', user: 'u1' }, '2')
        if (reserved.reservationId === null) { errors.push('refused'); return }
        await app.budgetIntegration.settleCall(reserved.reservationId, (1 + i / 10).toString())
      })().catch((error: Error) => { errors.push(`gate: ${error.message}`) }))
    }
    for (const [budgetId, occurredAt] of [[child.id, `${YESTERDAY}T03:00:00Z`], [child.id, `${YESTERDAY}T13:00:00Z`], [parent.id, `${YESTERDAY}T05:00:00Z`], [grand.id, undefined]] as const) {
      work.push(admin(key % 2, 'POST', `/${budgetId}/usage`, { amount: '0.5', currency: 'USD', ...(occurredAt === undefined ? {} : { occurredAt }), metadata: { requestId: `u${key++}` } })
        .then((r) => { if (r.statusCode >= 300) errors.push(`usage ${r.statusCode} ${r.body}`) }))
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
  const sums = await sql`select c.budget_id, c.amount::text as amount, (select sum(u.amount)::text from budget_usage_records u where u.id = c.usage_id or u.metadata ->> 'adjusts' = c.usage_id::text) as records from budget_recon_corrections c`
  t.same(sums.filter((r) => Number(r.amount) !== Number(r.records)).map((r) => ({ ...r })), [], 'each correction\'s records sum to it')
  for (const budgetId of [grand.id, child.id, parent.id]) t.equal((await admin(0, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId })).statusCode, 200)
  const lines = (await admin(1, 'GET', `/reconciliation?from=${YESTERDAY}&to=${YESTERDAY}`)).json<{ lines: Array<{ budgetId: string, difference: string, correction: string }> }>().lines
  t.same(lines.map((line) => line.difference === line.correction), [true, true, true], 'each correction is its line\'s difference')
  const dup = await sql`select budget_id, period_start, threshold, count(*)::int as n from budget_alert_history group by 1, 2, 3 having count(*) > 1`
  t.same(dup.map((row) => ({ ...row })), [], 'each crossing recorded once')
  const ended = await sql`select h.budget_id, h.period_start, h.threshold from budget_alert_history h join budget_status_cache c on c.budget_id = h.budget_id and c.period_start = h.period_start
                          where c.period_end <= h.crossed_at and h.period_start = ${`${YESTERDAY}T00:00:00Z`}::timestamptz`
  t.same(ended.map((row) => ({ ...row })), [], 'no alert recorded in yesterday\'s ended daily window')
  await new Promise((resolve) => setTimeout(resolve, 1500))
  const [after] = await sql<Array<{ n: string }>>`select deadlocks::text as n from pg_stat_database where datname = current_database()`
  t.equal(after!.n, before!.n, 'no deadlock')
})
