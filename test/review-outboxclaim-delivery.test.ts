// Review of 280874c (claimOutboxRow in two steps: up to 16 due rows read, then each claimed by a statement naming its
// tree): each notification delivered once per channel with three processes, failing webhooks and retries, a claim
// that dies, channels configured in one process only, and more due rows than one read holds.
import Fastify from 'fastify'
import postgres from 'postgres'
import t from 'tap'
import budgets, { type BudgetEvent, type BudgetsOptions } from '../lib/index.js'
import { createAlertRepository } from '../lib/alerts/alert-repository.js'
import { ADMIN_TOKEN } from './fixtures/app.js'
import { createTestDatabase } from './fixtures/database.js'

interface Teardown { teardown: (fn: () => unknown) => void }

/** A seeded generator (mulberry32): the same failures every run. */
function random (seed: number) {
  let a = seed
  return () => {
    a = (a + 0x6D2B79F5) | 0
    let r = Math.imul(a ^ (a >>> 15), 1 | a)
    r = (r + Math.imul(r ^ (r >>> 7), 61 | r)) ^ r
    return ((r ^ (r >>> 14)) >>> 0) / 4294967296
  }
}

/** A webhook receiver at /hook/:channel: refuses a request (503) with probability `failRate`; records every request. */
async function startHook (t: Teardown, failRate: number, seed = 7) {
  const next = random(seed)
  const requests: Array<{ channel: string, eventId: string, ok: boolean }> = []
  const hook = Fastify()
  hook.post('/hook/:channel', async (request, reply) => {
    const ok = next() >= failRate
    requests.push({ channel: (request.params as { channel: string }).channel, eventId: request.headers['x-budget-event-id'] as string, ok })
    return ok ? { ok: true } : await reply.code(503).send({ down: true })
  })
  const base = await hook.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(async () => { hook.server.closeAllConnections(); await hook.close() })
  return { url: (channel: string) => `${base}/hook/${channel}`, requests }
}

async function startApp (t: Teardown, url: string, notifications: BudgetsOptions['notifications']) {
  const sql = postgres(url, { max: 6, onnotice: () => {} })
  const app = Fastify()
  await app.register(budgets, { database: sql, adminToken: ADMIN_TOKEN, notifications: { intervalMs: 0, ...notifications } })
  await app.ready()
  t.teardown(async () => { await app.close(); await sql.end({ timeout: 1 }) })
  return { app, sql }
}

type App = Awaited<ReturnType<typeof startApp>>['app']

/** A budget of 1 USD per team, spent to 0.6: its 50% alert crosses, one outbox row per channel. */
async function cross (app: App, team: string, channels: string[]) {
  const budget = await app.budgetRegistry.createBudget({
    name: team, scopeType: 'team', scopeId: team, amount: '1', currency: 'USD', period: 'monthly', startDate: '2024-01-01',
    alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: channels }]
  })
  await app.budgetTracker.recordUsage({ budgetId: budget.id, amount: '0.6', currency: 'USD' })
  return budget
}

const sleep = async (ms: number) => await new Promise((resolve) => setTimeout(resolve, ms))

t.test('three processes, a flaky webhook and retries: each crossing delivered once per channel, a round tries a row at most once', async (t) => {
  const url = await createTestDatabase(t)
  const hook = await startHook(t, 0.35)
  const failCustom = random(11)
  /** Calls of the custom channel, as `process:round:event`. */
  const customCalls: string[] = []
  const customOk: string[] = []
  const rounds = [0, 0, 0]
  const custom = (process: number) => ({
    deliver: async (event: BudgetEvent) => {
      const id = (event as { alertId: string }).alertId
      customCalls.push(`${process}:${rounds[process]!}:${id}`)
      if (failCustom() < 0.35) throw new Error('the pager is down')
      customOk.push(id)
    }
  })
  const apps = await Promise.all([0, 1, 2].map(async (process) => await startApp(t, url, {
    channels: { a: { type: 'webhook', url: hook.url('a') }, b: { type: 'webhook', url: hook.url('b') }, c: custom(process) },
    backoffMs: 1,
    maxAttempts: 100
  })))
  const budgets = []
  for (let i = 0; i < 30; i++) budgets.push(await cross(apps[i % 3]!.app, `team-${i}`, ['a', 'b', 'c']))
  const sql = apps[0]!.sql
  t.equal((await sql<Array<{ n: number }>>`select count(*)::int as n from budget_notification_outbox where status = 'pending'`)[0]!.n, 90, '90 rows due: more than one read of 16')

  for (let round = 0; round < 300; round++) {
    await Promise.all(apps.map(async ({ app }, process) => { rounds[process]!++; await app.budgetNotifications.deliverDue(7) }))
    const [left] = await sql<Array<{ n: number }>>`select count(*)::int as n from budget_notification_outbox where status <> 'delivered'`
    if (left!.n === 0) break
  }
  const alertIds = (await sql<Array<{ id: string }>>`select id from budget_alert_history order by id`).map((row) => row.id)
  t.equal(alertIds.length, 30)
  const outbox = await sql<Array<{ status: string, n: number }>>`select status, count(*)::int as n from budget_notification_outbox group by status`
  t.same(outbox, [{ status: 'delivered', n: 90 }], 'every row delivered')
  for (const channel of ['a', 'b']) {
    t.same(hook.requests.filter((request) => request.ok && request.channel === channel).map((request) => request.eventId).sort(), alertIds, `channel ${channel}: each crossing answered 2xx once`)
  }
  t.same([...customOk].sort(), alertIds, 'channel c: each crossing delivered once')
  const repeated = customCalls.filter((call, i) => customCalls.indexOf(call) !== i)
  t.same(repeated, [], 'no process tried a row twice in one round')
  // Every request made is an attempt recorded: no claim was lost, none sent twice under one claim.
  const attempts = await sql<Array<{ alertId: string, channel: string, attempts: number }>>`
    select alert_id as "alertId", channel, attempts from budget_notification_outbox`
  const mismatched = attempts.filter(({ alertId, channel, attempts }) => {
    const made = channel === 'c'
      ? customCalls.filter((call) => call.endsWith(`:${alertId}`)).length
      : hook.requests.filter((request) => request.channel === channel && request.eventId === alertId).length
    return made !== attempts
  })
  t.same(mismatched, [], 'each row\'s attempts are the requests made for it')
})

t.test('a channel only another process has: left to it during the grace, and rows behind 16 of them are still claimed', async (t) => {
  const url = await createTestDatabase(t)
  const hook = await startHook(t, 0)
  const pagerSeen: string[] = []
  const pager = { deliver: async (event: BudgetEvent) => { pagerSeen.push((event as { alertId: string }).alertId) } }
  // Process b has the pager; process a (an older deploy) does not.
  const b = await startApp(t, url, { channels: { slack: { type: 'webhook', url: hook.url('slack') }, pager }, unconfiguredChannelGraceMs: 600_000 })
  const a = await startApp(t, url, { channels: { slack: { type: 'webhook', url: hook.url('slack') } }, unconfiguredChannelGraceMs: 600_000 })
  // Twenty pager rows first (the oldest due), then one slack row.
  for (let i = 0; i < 20; i++) await cross(b.app, `pager-${i}`, ['pager'])
  await sleep(5)
  await cross(b.app, 'slack-team', ['slack'])
  t.same(await a.app.budgetNotifications.deliverDue(), { delivered: 1, failed: 0 }, 'process a delivers the slack row behind 20 rows it leaves alone')
  for (let i = 0; i < 3; i++) t.same(await a.app.budgetNotifications.deliverDue(), { delivered: 0, failed: 0 }, 'and touches no pager row')
  const untouched = await a.sql<Array<{ n: number }>>`select count(*)::int as n from budget_notification_outbox where channel = 'pager' and attempts = 0 and claim_id is null and next_attempt_at <= now()`
  t.equal(untouched[0]!.n, 20, 'every pager row still due, unclaimed')
  let delivered = 0
  for (let round = 0; round < 5; round++) delivered += (await b.app.budgetNotifications.deliverDue()).delivered
  t.equal(delivered, 20, 'process b delivers the pager rows')
  t.equal(new Set(pagerSeen).size, 20)
  t.equal(pagerSeen.length, 20, 'each once')
  t.equal(hook.requests.length, 1, 'the slack row once')
})

t.test('past the grace, a process without the channel records the failure once a round; a process with it then delivers it once', async (t) => {
  const url = await createTestDatabase(t)
  const pagerSeen: string[] = []
  const pager = { deliver: async (event: BudgetEvent) => { pagerSeen.push((event as { alertId: string }).alertId) } }
  const a = await startApp(t, url, { channels: { slack: { type: 'log' } }, unconfiguredChannelGraceMs: 100, backoffMs: 1, maxAttempts: 10 })
  const b = await startApp(t, url, { channels: { slack: { type: 'log' }, pager }, unconfiguredChannelGraceMs: 100 })
  for (let i = 0; i < 18; i++) await cross(b.app, `team-${i}`, ['pager'])
  await a.sql`update budget_notification_outbox set next_attempt_at = now()` // all due from now: the grace starts here
  t.same(await a.app.budgetNotifications.deliverDue(30), { delivered: 0, failed: 0 }, 'within the grace: left alone')
  await sleep(150)
  t.same(await a.app.budgetNotifications.deliverDue(30), { delivered: 0, failed: 18 }, 'past it: each of the 18 rows tried once, recorded as not delivered')
  const rows = await a.sql<Array<{ attempts: number, status: string, lastError: string }>>`select attempts, status, last_error as "lastError" from budget_notification_outbox`
  t.same([...new Set(rows.map((row) => `${row.status}/${row.attempts}/${row.lastError}`))], ['pending/1/no channel \'pager\' is configured'])
  let delivered = 0
  for (let round = 0; round < 3; round++) delivered += (await b.app.budgetNotifications.deliverDue(30)).delivered
  t.equal(delivered, 18)
  t.equal(pagerSeen.length, 18)
  t.equal(new Set(pagerSeen).size, 18, 'each once')
})

t.test('a dead claim: re-claimed after its deadline by another process and delivered once; its late outcomes, before and after, write nothing', async (t) => {
  const url = await createTestDatabase(t)
  let hang = false
  let release: () => void = () => {}
  let arrived: () => void = () => {}
  const arrival = new Promise<void>((resolve) => { arrived = resolve })
  const seen: string[] = []
  const pager = {
    deliver: async (event: BudgetEvent) => {
      if (hang) { arrived(); await new Promise<void>((resolve) => { release = resolve }) }
      seen.push((event as { alertId: string }).alertId)
    }
  }
  const { app, sql } = await startApp(t, url, { channels: { pager } })
  t.teardown(() => { release() })
  const budget = await cross(app, 'platform', ['pager'])
  const dead = await createAlertRepository(sql).claimDueNotification(300)
  t.ok(dead)
  t.same(await app.budgetNotifications.deliverDue(), { delivered: 0, failed: 0 }, 'before its deadline the row is the dead claim\'s')
  await sleep(350)
  hang = true
  const delivering = app.budgetNotifications.deliverDue()
  await arrival // the new claim holds the row and is sending
  const alerts = createAlertRepository(sql)
  t.equal(await alerts.markAttemptFailed(dead!, 'late failure', 0), false, 'the dead claim\'s late failure, while the new claim sends, is refused')
  t.equal(await alerts.markDelivered(dead!), false, 'so is its late success')
  const [row] = await sql<Array<{ claimed: boolean, notDue: boolean, attempts: number, lastError: string | null }>>`
    select claim_id is not null and claim_id <> ${dead!.claimId} as claimed, next_attempt_at > now() as "notDue", attempts, last_error as "lastError" from budget_notification_outbox`
  t.same(row, { claimed: true, notDue: true, attempts: 0, lastError: null }, 'the row still the new claim\'s, untouched')
  release()
  t.same(await delivering, { delivered: 1, failed: 0 })
  t.equal(await alerts.markAttemptFailed(dead!, 'later failure', null), false, 'after the delivery too')
  t.match((await app.budgetAlerts.listAlerts(budget.id))[0]!.deliveries, [{ status: 'delivered', attempts: 1, lastError: null }])
  t.same(seen, [(await app.budgetAlerts.listAlerts(budget.id))[0]!.id], 'sent once')
})

t.test('rows held by another session: the due rows behind the first 16 are still claimed', async (t) => {
  const url = await createTestDatabase(t)
  const seen: string[] = []
  const pager = { deliver: async (event: BudgetEvent) => { seen.push((event as { alertId: string }).alertId) } }
  const { app } = await startApp(t, url, { channels: { pager } })
  for (let i = 0; i < 20; i++) { await cross(app, `team-${i}`, ['pager']); await sleep(2) }
  // Another session holds the 16 oldest due rows (as 16 other processes' claim statements do while they run).
  const holder = postgres(url, { max: 1, onnotice: () => {} })
  t.teardown(async () => await holder.end({ timeout: 1 }))
  let release: () => void = () => {}
  const released = new Promise<void>((resolve) => { release = resolve })
  let held: () => void = () => {}
  const isHeld = new Promise<void>((resolve) => { held = resolve })
  const holding = holder.begin(async (tx) => {
    await tx`select id from budget_notification_outbox order by next_attempt_at limit 16 for update`
    held()
    await released
  })
  await isHeld
  const outcome = await app.budgetNotifications.deliverDue().finally(() => { release() })
  await holding
  t.same(outcome, { delivered: 4, failed: 0 }, 'the four rows nobody holds are delivered in this round')
})
