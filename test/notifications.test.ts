// The outbox's deliveries hold nothing while they wait on the network (issue 22, item 4): a row is claimed in
// a statement of its own, sent with no transaction open, and its outcome recorded under the claim (sql/migrations/002_outbox_claims.sql).
// A claim whose process died comes due again at its deadline; two processes deliver each crossing once;
// the loop runs one round at a time. A real PostgreSQL, a real webhook receiver on a local port.
import Fastify from 'fastify'
import postgres from 'postgres'
import t from 'tap'
import budgets, { type BudgetEvent, type BudgetsOptions } from '../lib/index.js'
import { createAlertRepository } from '../lib/alerts/alert-repository.js'
import { ADMIN_TOKEN } from './fixtures/app.js'
import { createTestDatabase } from './fixtures/database.js'
import { buildGateway, spendTo } from './fixtures/gateway.js'

interface Teardown { teardown: (fn: () => unknown) => void }

/** A webhook receiver: answers 200 at once, or, while `hang` is set, once `release()` is called. */
async function startHook (t: Teardown) {
  const received: Array<{ eventId: string, body: { alertId?: string } }> = []
  let arrived: () => void = () => {}
  let release: () => void = () => {}
  const state = { hang: false, arrival: new Promise<void>((resolve) => { arrived = resolve }), release: () => { release() } }
  const hook = Fastify()
  hook.post('/hook', async (request) => {
    if (state.hang) {
      arrived()
      await new Promise<void>((resolve) => { release = resolve })
    }
    received.push({ eventId: request.headers['x-budget-event-id'] as string, body: request.body as { alertId?: string } })
    return { ok: true }
  })
  const url = `${await hook.listen({ port: 0, host: '127.0.0.1' })}/hook`
  t.teardown(async () => { state.release(); hook.server.closeAllConnections(); await hook.close() })
  return { url, received, state }
}

const APP_NAME = 'budgets-outbox-test'

/** An app on `url` whose client has `max` connections, each named APP_NAME in pg_stat_activity. */
async function startApp (t: Teardown, url: string, notifications: BudgetsOptions['notifications'], max = 10) {
  const sql = postgres(url, { max, onnotice: () => {}, connection: { application_name: APP_NAME } })
  const app = Fastify()
  await app.register(budgets, { database: sql, adminToken: ADMIN_TOKEN, notifications: { intervalMs: 0, ...notifications } })
  await app.ready()
  t.teardown(async () => { await app.close(); await sql.end({ timeout: 1 }) })
  return { app, sql }
}

/** A budget of 1 USD per team, spent to 0.6: its 50% alert crosses, one outbox row per channel. */
async function cross (app: Awaited<ReturnType<typeof startApp>>['app'], team: string, channels: string[]) {
  const budget = await app.budgetRegistry.createBudget({
    name: team, scopeType: 'team', scopeId: team, amount: '1', currency: 'USD', period: 'monthly', startDate: '2024-01-01',
    alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: channels }]
  })
  await app.budgetTracker.recordUsage({ budgetId: budget.id, amount: '0.6', currency: 'USD' })
  return budget
}

t.test('a webhook that hangs holds no transaction, no lock and no pooled connection', async (t) => {
  const url = await createTestDatabase(t)
  const hook = await startHook(t)
  // One connection in the app's pool: a delivery that kept it would block every other statement of the app.
  const { app, sql } = await startApp(t, url, { channels: { slack: { type: 'webhook', url: hook.url, timeoutMs: 3000 } } }, 1)
  const monitor = postgres(url, { max: 1, onnotice: () => {} })
  t.teardown(async () => await monitor.end({ timeout: 1 }))
  await cross(app, 'platform', ['slack'])

  hook.state.hang = true
  let deliveryEnded = false
  const delivering = app.budgetNotifications.deliverDue().finally(() => { deliveryEnded = true })
  await hook.state.arrival // the webhook has the event, and does not answer

  const sessions = await monitor<Array<{ state: string, xactStart: Date | null }>>`
    select state, xact_start as "xactStart" from pg_stat_activity where application_name = ${APP_NAME} and datname = current_database()`
  t.ok(sessions.length > 0, 'the app has its connection')
  t.same(sessions.filter((session) => session.state !== 'idle'), [], 'no session of the app is in a transaction (none idle in transaction) while the webhook hangs')
  // the row by its tree and id: a lock taken by root, as on Citus, where a FOR UPDATE must name one shard
  const [queued] = await monitor<Array<{ rootId: string, id: string }>>`select root_id as "rootId", id from budget_notification_outbox`
  const [row] = await monitor<Array<{ locked: boolean }>>`
    select count(*) = 0 as locked from (select id from budget_notification_outbox where root_id = ${queued!.rootId} and id = ${queued!.id} for update skip locked) free`
  t.notOk(row!.locked, 'the outbox row is not locked: another statement could lock it')
  const [claimed] = await monitor<Array<{ status: string, claimed: boolean, notDue: boolean, attempts: number }>>`
    select status, claim_id is not null as claimed, next_attempt_at > now() as "notDue", attempts from budget_notification_outbox`
  t.same(claimed, { status: 'pending', claimed: true, notDue: true, attempts: 0 }, 'it is claimed instead: pending, and due again only at the claim\'s deadline')

  await sql`select 1` // through the app's only connection
  t.notOk(deliveryEnded, 'a statement through the app\'s one pooled connection was answered while the delivery still waited')
  hook.state.release()
  t.same(await delivering, { delivered: 1, failed: 0 })
  const [outbox] = await monitor`select status, attempts, claim_id from budget_notification_outbox`
  t.match(outbox, { status: 'delivered', attempts: 1, claim_id: null }, 'the outcome recorded under the claim, which is then cleared')
  t.equal(hook.received.length, 1)
})

t.test('a claim whose process died is claimed again after its deadline, and delivered once; the dead claim can write nothing', async (t) => {
  const url = await createTestDatabase(t)
  const hook = await startHook(t)
  const { app, sql } = await startApp(t, url, { channels: { slack: { type: 'webhook', url: hook.url } } })
  const budget = await cross(app, 'platform', ['slack'])

  // Another process claimed the row (for 300 ms) and died before sending or recording anything.
  const dead = await createAlertRepository(sql).claimDueNotification(300)
  t.ok(dead, 'the dead process had claimed it')
  t.same(await app.budgetNotifications.deliverDue(), { delivered: 0, failed: 0 }, 'before the deadline the row is another process\'s: not sent')
  t.equal(hook.received.length, 0)
  for (let i = 0; i < 100; i++) {
    const [due] = await sql<Array<{ due: boolean }>>`select next_attempt_at <= now() as due from budget_notification_outbox`
    if (due!.due) break
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  t.same(await app.budgetNotifications.deliverDue(), { delivered: 1, failed: 0 }, 'after it, this process claims it and delivers it')
  t.same(await app.budgetNotifications.deliverDue(), { delivered: 0, failed: 0 }, 'and nothing is left to send')
  t.equal(hook.received.length, 1, 'the webhook received it once')
  const [alert] = await app.budgetAlerts.listAlerts(budget.id)
  t.equal(hook.received[0]!.eventId, alert!.id)
  t.match(alert!.deliveries, [{ channel: 'slack', status: 'delivered', attempts: 1 }], 'one attempt: the dead claim counts none')

  const alerts = createAlertRepository(sql)
  t.equal(await alerts.markAttemptFailed(dead!, 'the dead process woke up', 0), false, 'the dead claim\'s late outcome is refused')
  t.equal(await alerts.markDelivered(dead!), false)
  t.match((await app.budgetAlerts.listAlerts(budget.id))[0]!.deliveries, [{ status: 'delivered', attempts: 1, lastError: null }], 'and changed nothing')
})

t.test('two processes on one database deliver each crossing once to each channel', async (t) => {
  const url = await createTestDatabase(t)
  const hook = await startHook(t)
  const captured: BudgetEvent[] = []
  const channels = { slack: { type: 'webhook' as const, url: hook.url }, pager: { deliver: async (event: BudgetEvent) => { captured.push(event) } } }
  const first = await startApp(t, url, { channels })
  const second = await startApp(t, url, { channels })
  const crossed = await Promise.all(Array.from({ length: 8 }, async (_, i) => await cross(i % 2 === 0 ? first.app : second.app, `team-${i}`, ['slack', 'pager'])))
  const [rows] = await first.sql<Array<{ n: number }>>`select count(*)::int as n from budget_notification_outbox`
  t.equal(rows!.n, 16, 'one row per crossing and channel')

  for (let round = 0; round < 20; round++) {
    // Small rounds on both at once, so their claims interleave.
    await Promise.all([first.app.budgetNotifications.deliverDue(3), second.app.budgetNotifications.deliverDue(3), first.app.budgetNotifications.deliverDue(3)])
    const [left] = await first.sql<Array<{ n: number }>>`select count(*)::int as n from budget_notification_outbox where status <> 'delivered'`
    if (left!.n === 0) break
  }
  const alertIds = (await first.sql<Array<{ id: string }>>`select id from budget_alert_history order by id`).map((row) => row.id)
  t.equal(alertIds.length, crossed.length, 'one crossing per budget')
  t.same(hook.received.map((received) => received.eventId).sort(), alertIds, 'the webhook received each crossing once')
  t.same(captured.map((event) => (event as { alertId: string }).alertId).sort(), alertIds, 'the other channel too')
  const outcomes = await first.sql`select distinct status, attempts from budget_notification_outbox`
  t.same(outcomes, [{ status: 'delivered', attempts: 1 }], 'every row delivered at its first attempt')
})

t.test('the loop runs one round at a time, and stops with the app', async (t) => {
  const url = await createTestDatabase(t)
  let inFlight = 0
  let mostInFlight = 0
  let entered = 0
  let release: () => void = () => {}
  const released = new Promise<void>((resolve) => { release = resolve })
  const delivered: string[] = []
  // A channel that does not answer until the test says so.
  const pager = {
    deliver: async (event: BudgetEvent) => {
      entered++
      inFlight++
      mostInFlight = Math.max(mostInFlight, inFlight)
      await released
      inFlight--
      delivered.push((event as { alertId: string }).alertId)
    }
  }
  const { app, sql } = await startApp(t, url, { channels: { pager }, intervalMs: 10 })
  t.teardown(() => { release() })
  await cross(app, 'team-a', ['pager'])
  await cross(app, 'team-b', ['pager'])
  while (entered === 0) await new Promise((resolve) => setTimeout(resolve, 10))
  // Thirty intervals while the first delivery hangs: a round on a fixed beat would have started the second.
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.equal(entered, 1, 'no other delivery started while the round hung')
  const closing = app.close() // waits for the delivery in flight
  release()
  await closing
  t.equal(mostInFlight, 1, 'never two deliveries at once')
  t.equal(delivered.length, 1, 'the delivery in flight ended before the app closed')
  const rows = await sql<Array<{ status: string, claimed: boolean }>>`select status, claim_id is not null as claimed from budget_notification_outbox order by status`
  t.same(rows, [{ status: 'delivered', claimed: false }, { status: 'pending', claimed: false }],
    'its outcome recorded; the other row was not claimed once the deliverer stopped, so another process may send it at once')
  // Due now: a loop still going would send it within an interval or two.
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.equal(entered, 1, 'no round after close')
})

t.test('a round tries a row at most once, however short its backoff', async (t) => {
  const url = await createTestDatabase(t)
  let calls = 0
  const failing = { deliver: async () => { calls++; throw new Error('the pager is down') } }
  const { app } = await startApp(t, url, { channels: { pager: failing }, backoffMs: 0, maxAttempts: 5 })
  const budget = await cross(app, 'platform', ['pager'])
  t.same(await app.budgetNotifications.deliverDue(), { delivered: 0, failed: 1 }, 'one attempt in the round, though the row is due again at once')
  t.equal(calls, 1)
  t.match((await app.budgetAlerts.listAlerts(budget.id))[0]!.deliveries, [{ status: 'pending', attempts: 1, lastError: 'the pager is down' }])
  for (let round = 0; round < 4; round++) await app.budgetNotifications.deliverDue()
  t.match((await app.budgetAlerts.listAlerts(budget.id))[0]!.deliveries, [{ status: 'failed', attempts: 5 }], 'failed once the attempts run out, a round each')
  t.equal(calls, 5)
})

t.test('a name a budget\'s editor typed cannot mention @channel or link in a Slack text: &, < and > are escaped there, and only there', async (t) => {
  const sent: BudgetEvent[] = []
  const gateway = await buildGateway(t, { notifications: { channels: { feed: { deliver: async (event) => { sent.push(event) } } } } })
  const name = '<!channel> ops & <https://evil.example|pay here>'
  const budget = await gateway.createBudget({ name, amount: '10', alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['feed'] }] })
  await spendTo(gateway.app, budget.id, '6')
  t.same(await gateway.app.budgetNotifications.deliverDue(), { delivered: 1, failed: 0 })
  const [crossing] = sent
  t.equal(crossing!.type, 'budget.threshold_crossed')
  t.match(crossing!.text, /^Budget '&lt;!channel&gt; ops &amp; &lt;https:\/\/evil\.example\|pay here&gt;' crossed 50%/, 'escaped in the text')
  t.equal((crossing as { budget: { name: string } }).budget.name, name, 'the structured name as written')
})
