// Scheduled digests (lib/alerts/digests.ts): one per budget and day or week in the budget's
// time zone, made once across processes, with the period's spend, the window's burn rate and forecast, and
// the top models and callers, delivered through the notification outbox with its retries.
import Fastify from 'fastify'
import t from 'tap'
import budgets, { type BudgetEvent, type DigestEvent } from '../lib/index.js'
import { fromUnits, toUnits } from '../lib/kernel/money.js'
import { digestEmail } from '../lib/alerts/notifications.js'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'
import { localSeries, recordSeries } from './fixtures/series.js'

const DAY = 86_400_000
const admin = { authorization: `Bearer ${ADMIN_TOKEN}` }

/** A webhook receiver on a free port that refuses the first `failures` requests (503). */
async function startHook (t: { teardown: (fn: () => unknown) => void }, failures = 0) {
  const received: Array<{ id: string, body: DigestEvent }> = []
  let requests = 0
  const hook = Fastify()
  hook.post('/hook', async (request, reply) => {
    requests++
    if (requests <= failures) return await reply.code(503).send({ down: true })
    received.push({ id: request.headers['x-budget-event-id'] as string, body: request.body as DigestEvent })
    return { ok: true }
  })
  const url = `${await hook.listen({ port: 0, host: '127.0.0.1' })}/hook`
  t.teardown(async () => await hook.close())
  return { url, received, requests: () => requests }
}

// Weekdays: alice's gpt-4o call of 6 at 09:00 and bob's gpt-4o-mini call of 4 at 15:00; weekends: carol's 2.
const rate = (isodow: number) => (isodow <= 5 ? 10n : 2n)
const calls = ({ isodow }: { isodow: number }): Array<[string, string, Record<string, string>]> => isodow <= 5
  ? [['09:00', '6', { modelId: 'gpt-4o', userId: 'alice' }], ['15:00', '4', { modelId: 'gpt-4o-mini', userId: 'bob' }]]
  : [['12:00', '2', { modelId: 'gpt-4o-mini', userId: 'carol' }]]

/** A weekly budget in UTC (windows from Monday) with five weeks of that series up to yesterday, and its daily digest. */
async function weekdaySeries (t: Parameters<typeof buildGateway>[0], notifications: Parameters<typeof buildGateway>[1] = {}) {
  const gateway = await buildGateway(t, notifications)
  const [row] = await gateway.sql<Array<{ today: string, monday: string }>>`
    select to_char(now() at time zone 'UTC', 'YYYY-MM-DD') as today, to_char(date_trunc('week', now() at time zone 'UTC'), 'YYYY-MM-DD') as monday`
  const { today, monday } = row!
  const first = new Date(Date.parse(monday) - 35 * DAY).toISOString().slice(0, 10)
  const budget = await gateway.createBudget({
    name: 'Platform', amount: '1000', period: 'weekly', timezone: 'UTC', startDate: first, digest: { every: 'daily', channels: ['hook', 'capture'] }
  })
  const days = (Date.parse(today) - Date.parse(first)) / DAY
  await recordSeries(gateway.app, budget.id, await localSeries(gateway.sql, 'UTC', first, days, calls))
  return { ...gateway, budget, today: Date.parse(today) }
}

/** What the digest of yesterday must say, computed here from the series' rule. */
function expectedDigest (today: number) {
  const yesterday = today - DAY
  const isodow = (at: number) => ((new Date(at).getUTCDay() + 6) % 7) + 1
  const monday = yesterday - (isodow(yesterday) - 1) * DAY
  let windowSpent = 0n
  for (let day = monday; day <= yesterday; day += DAY) windowSpent += rate(isodow(day))
  let projected = windowSpent
  for (let day = today; day < monday + 7 * DAY; day += DAY) projected += rate(isodow(day)) // the profile's rates are exactly 10 and 2
  const units = toUnits(windowSpent.toString())
  const elapsed = BigInt(today - monday)
  const weekday = isodow(yesterday) <= 5
  return {
    periodStart: new Date(yesterday).toISOString(),
    periodEnd: new Date(today).toISOString(),
    firstDay: new Date(yesterday).toISOString().slice(0, 10),
    spent: weekday ? '10' : '2',
    usageCount: weekday ? 2 : 1,
    window: {
      periodStart: new Date(monday).toISOString(),
      periodEnd: new Date(monday + 7 * DAY).toISOString(),
      spent: windowSpent.toString(),
      limit: '1000',
      percentUsed: Number(units * 10000n / toUnits('1000')) / 100,
      burnRate: fromUnits((units * BigInt(DAY) * 2n + elapsed) / (elapsed * 2n)),
      projectedTotal: projected.toString()
    },
    topModels: weekday ? [{ modelId: 'gpt-4o', total: '6', count: 1 }, { modelId: 'gpt-4o-mini', total: '4', count: 1 }] : [{ modelId: 'gpt-4o-mini', total: '2', count: 1 }],
    topUsers: weekday ? [{ userId: 'alice', total: '6', count: 1 }, { userId: 'bob', total: '4', count: 1 }] : [{ userId: 'carol', total: '2', count: 1 }]
  }
}

t.test('one digest per budget and day across two processes, delivered once per channel, its numbers exact', async (t) => {
  const hook = await startHook(t)
  const captured: BudgetEvent[] = []
  const channels = { hook: { type: 'webhook' as const, url: hook.url }, capture: { deliver: async (event: BudgetEvent) => { captured.push(event) } } }
  const { app, sql, url, budget, today } = await weekdaySeries(t, { notifications: { channels } })
  const other = Fastify()
  await other.register(budgets, { database: url, adminToken: ADMIN_TOKEN, notifications: { channels, intervalMs: 0 } })
  await other.ready()
  t.teardown(async () => await other.close())

  const made = await Promise.all([app.budgetNotifications.produceDigests(), other.budgetNotifications.produceDigests(), app.budgetNotifications.produceDigests()])
  t.equal(made.reduce((sum, count) => sum + count, 0), 1, 'three producers at once, one digest')
  t.equal(await other.budgetNotifications.produceDigests(), 0, 'and none when asked again')
  const rows = await sql`select budget_id, every from budget_digests`
  t.same(rows.map((row) => [row.budget_id, row.every]), [[budget.id, 'daily']])
  t.equal((await sql`select count(*)::int as n from budget_notification_outbox where digest_id is not null`)[0]!.n, 2, 'one notification per channel')

  for (let round = 0; round < 3; round++) {
    await Promise.all([app.budgetNotifications.deliverDue(), other.budgetNotifications.deliverDue()])
  }
  t.equal(hook.received.length, 1, 'the webhook received the digest once')
  t.equal(captured.length, 1, 'and the other channel once')
  const event = hook.received[0]!.body
  t.equal(hook.received[0]!.id, event.digestId, 'x-budget-event-id is the digest\'s id')
  t.same(captured[0], event, 'both channels got the same event')
  const expected = expectedDigest(today)
  t.match(event, { type: 'budget.digest', every: 'daily', timezone: 'UTC', budget: { id: budget.id, name: 'Platform', currency: 'USD' } })
  const { periodStart, periodEnd, firstDay, lastDay, spent, usageCount, window, topModels, topUsers } = event
  t.same({ periodStart, periodEnd, firstDay, spent, usageCount, window, topModels, topUsers }, expected,
    'yesterday\'s spend, the week\'s spend, burn rate and forecast as of midnight, the day\'s models and callers by spend: exact')
  t.equal(lastDay, firstDay, 'a daily digest\'s period is one day')
  t.match(event.text, new RegExp(`^Budget 'Platform' daily digest, ${expected.firstDay}: ${expected.spent} USD spent\\. .*projected ${expected.window.projectedTotal} by`))

  const email = digestEmail(event, 'https://gateway.example.com/api/v1/budgets/ui')
  t.equal(email.subject, `Budget 'Platform' daily digest, ${expected.firstDay}: ${expected.spent} USD spent`)
  t.match(email.text, `Spent: ${expected.spent} USD in ${expected.usageCount} call`)
  t.match(email.text, `${expected.window.spent} of 1000 USD spent (${expected.window.percentUsed}%)`)
  t.match(email.text, `Burn rate: ${expected.window.burnRate} USD a day.`)
  t.match(email.text, `Projected by the end of the budget period: ${expected.window.projectedTotal} USD.`)
  t.match(email.text, `Top callers:\n  ${expected.topUsers[0]!.userId}: ${expected.topUsers[0]!.total} USD (1 call)`)
  t.match(email.text, 'Dashboard: https://gateway.example.com/api/v1/budgets/ui')
})

t.test('a failed delivery is retried with backoff and arrives once', async (t) => {
  const hook = await startHook(t, 2)
  const { app, sql, createBudget } = await buildGateway(t, { notifications: { channels: { hook: { type: 'webhook', url: hook.url } }, backoffMs: 10 } })
  const today = Date.parse(new Date().toISOString().slice(0, 10))
  const budget = await createBudget({ name: 'Ops', startDate: new Date(today - 3 * DAY).toISOString().slice(0, 10), digest: { every: 'daily', channels: ['hook'] } })
  await app.budgetTracker.recordUsage({ budgetId: budget.id, amount: '0.25', currency: 'USD', source: 'test', occurredAt: new Date(today - DAY / 2) })
  t.equal(await app.budgetNotifications.produceDigests(), 1)
  for (let round = 0; round < 40 && hook.received.length === 0; round++) {
    await app.budgetNotifications.deliverDue()
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  for (let round = 0; round < 3; round++) await app.budgetNotifications.deliverDue()
  t.equal(hook.requests(), 3, 'two failures, one success, nothing after')
  t.equal(hook.received.length, 1, 'the digest arrived once')
  t.match(hook.received[0]!.body, { type: 'budget.digest', spent: '0.25', usageCount: 1, topUsers: [{ userId: null, total: '0.25', count: 1 }] })
  const [outbox] = await sql`select status, attempts, last_error from budget_notification_outbox`
  t.match(outbox, { status: 'delivered', attempts: 3, last_error: null })
})

t.test('the digest field: which budgets get one, its checks, its audit', async (t) => {
  const { app, sql, createBudget } = await buildGateway(t)
  const today = Date.parse(new Date().toISOString().slice(0, 10))
  const none = await createBudget({ scopeId: 'none' })
  await createBudget({ scopeId: 'fresh', startDate: new Date(today).toISOString().slice(0, 10), digest: { every: 'daily', channels: ['ops'] } })
  const weekly = await createBudget({ scopeId: 'weekly', startDate: new Date(today - 21 * DAY).toISOString().slice(0, 10), digest: { every: 'weekly', channels: ['ops'] } })
  const monday = today - ((new Date(today).getUTCDay() + 6) % 7) * DAY
  await app.budgetTracker.recordUsage({ budgetId: weekly.id, amount: '0.5', currency: 'USD', source: 'test', occurredAt: new Date(monday - 3 * DAY + DAY / 2) })
  await app.budgetTracker.recordUsage({ budgetId: weekly.id, amount: '0.125', currency: 'USD', source: 'test', occurredAt: new Date(monday - 8 * DAY) })

  t.equal(await app.budgetNotifications.produceDigests(), 1, 'only the weekly budget: one without a digest, and one that began today, have none')
  const digests = await sql`select budget_id, every, period_start, period_end, spent::text as spent from budget_digests`
  t.same(digests.map((row) => [row.budget_id, row.every, row.period_start.toISOString(), row.period_end.toISOString(), row.spent]),
    [[weekly.id, 'weekly', new Date(monday - 7 * DAY).toISOString(), new Date(monday).toISOString(), '0.5000000000']], 'last ISO week, Monday to Monday: its spend only')

  const read = await app.inject({ url: `${PREFIX}/${weekly.id}`, headers: admin })
  t.same(read.json().digest, { every: 'weekly', channels: ['ops'] })
  t.equal((await app.inject({ url: `${PREFIX}/${none.id}`, headers: admin })).json().digest, null)

  for (const [digest, field] of [[{ every: 'hourly', channels: ['ops'] }, 'digest.every'], [{ every: 'daily', channels: [] }, 'digest.channels'],
    [{ every: 'daily' }, 'digest'], [{ every: 'daily', channels: ['ops', 'ops'] }, 'digest.channels'], [{ every: 'daily', channels: ['ops'], at: '09:00' }, 'digest'], ['daily', 'digest']] as const) {
    const refused = await app.inject({ method: 'PUT', url: `${PREFIX}/${none.id}`, headers: admin, body: { digest } })
    t.equal(refused.statusCode, 400, JSON.stringify(digest))
    t.match(refused.json(), { code: 'BUDGET_ERR_VALIDATION', field: new RegExp(`^${field}`) })
  }
  await t.rejects(app.budgetRegistry.createBudget({ name: 'x', scopeType: 'team', scopeId: 'lib', amount: '1', currency: 'USD', period: 'daily', startDate: '2024-01-01',
    digest: { every: 'daily', channels: [7 as unknown as string] } }), { code: 'BUDGET_ERR_VALIDATION', field: 'digest.channels' }, 'the library\'s callers meet the same checks')

  const set = await app.inject({ method: 'PUT', url: `${PREFIX}/${none.id}`, headers: admin, body: { digest: { every: 'daily', channels: ['ops', 'email'] } } })
  t.equal(set.statusCode, 200)
  t.same(set.json().digest, { every: 'daily', channels: ['ops', 'email'] })
  const cleared = await app.inject({ method: 'PUT', url: `${PREFIX}/${none.id}`, headers: admin, body: { digest: null } })
  t.equal(cleared.json().digest, null)
  const audit = (await app.inject({ url: `${PREFIX}/${none.id}/audit`, headers: admin })).json()
  t.match(audit.entries.slice(0, 2), [
    { action: 'update', changes: ['digest'], before: { digest: { every: 'daily' } }, after: { digest: null } },
    { action: 'update', changes: ['digest'], before: { digest: null }, after: { digest: { every: 'daily', channels: ['ops', 'email'] } } }
  ], 'each change audited, before and after')
})

t.test('a time zone change never sends a day (or an ISO week) that was digested already', async (t) => {
  const hook = await startHook(t)
  const { app, sql, createBudget } = await buildGateway(t, { notifications: { channels: { hook: { type: 'webhook', url: hook.url } } } })
  const daily = await createBudget({ name: 'Daily', scopeId: 'daily', timezone: 'UTC', startDate: '2026-05-01', digest: { every: 'daily', channels: ['hook'] } })
  const weekly = await createBudget({ name: 'Weekly', scopeId: 'weekly', timezone: 'UTC', startDate: '2026-05-01', digest: { every: 'weekly', channels: ['hook'] } })
  await app.budgetTracker.recordUsage({ budgetId: daily.id, amount: '3', currency: 'USD', source: 'test', occurredAt: new Date('2026-06-09T12:00:00Z') })
  // Wednesday 10 June 2026, 15:00 UTC: the day ended last is Tuesday the 9th, the ISO week ended last the one from Monday 1 June,
  // in UTC, in New York (11:00) and in Paris (17:00) alike: the same dates, other instants.
  const at = new Date('2026-06-10T15:00:00Z')
  t.equal(await app.budgetNotifications.produceDigests(at), 2, 'one daily and one weekly digest')
  for (const timezone of ['America/New_York', 'Europe/Paris', 'UTC']) {
    for (const budget of [daily, weekly]) {
      const changed = await app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: admin, body: { timezone } })
      t.equal(changed.statusCode, 200, `${timezone}: ${changed.body.slice(0, 200)}`)
    }
    t.equal(await app.budgetNotifications.produceDigests(at), 0, `after a change to ${timezone}, nothing more for the same day and week`)
  }
  const digests = await sql`select every, to_char(period_start at time zone timezone, 'YYYY-MM-DD') as first from budget_digests order by every`
  t.same(digests.map((row) => [row.every, row.first]), [['daily', '2026-06-09'], ['weekly', '2026-06-01']])
  for (let round = 0; round < 3; round++) await app.budgetNotifications.deliverDue()
  t.equal(hook.received.length, 2, 'two webhooks: one per digest')

  // The next day in Tokyo (00:30 on Thursday the 11th there) is a day not digested yet: it is sent.
  await app.inject({ method: 'PUT', url: `${PREFIX}/${daily.id}`, headers: admin, body: { timezone: 'Asia/Tokyo' } })
  t.equal(await app.budgetNotifications.produceDigests(new Date('2026-06-10T15:30:00Z')), 1, 'Wednesday the 10th, ended in Tokyo')
})
