// Email alerts over SMTP (nodemailer), delivered to a real SMTP receiver running in the test (smtp-server,
// from the nodemailer project): a subject and a plain-text body that say which budget crossed what, a
// link to the dashboard when its URL is known, through the same outbox, retries and exactly-once.
import t from 'tap'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { createTestDatabase } from './fixtures/database.js'
import { buildGateway, spendTo } from './fixtures/gateway.js'
import { startGatewayProcess } from './fixtures/gateway-process.js'
import { startSmtpReceiver } from './fixtures/smtp-receiver.js'

/** The body of a plain-text message, its soft line breaks undone. */
const body = (raw: string) => raw.slice(raw.indexOf('\r\n\r\n') + 4).replace(/=\r\n/g, '').replace(/=3D/g, '=')

t.test('a crossing sends one email with what crossed and a link to the dashboard, once, to every recipient', async (t) => {
  const receiver = await startSmtpReceiver(t)
  const { app, createBudget } = await buildGateway(t, { notifications: { channels: { email: { type: 'email', url: receiver.url } }, dashboardUrl: 'https://gateway.example.com/api/v1/budgets/ui' } })
  const team = await createBudget({ name: 'Platform', amount: '1', alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['email'] }] })
  await spendTo(app, team.id, '0.6')
  for (let round = 0; round < 3; round++) await app.budgetNotifications.deliverDue()
  t.equal(receiver.received.length, 1, 'one message')
  const [message] = receiver.received
  t.equal(message!.from, 'budgets@example.com')
  t.same(message!.to, ['ops@example.com', 'cfo@example.com'])
  t.match(message!.raw, /Subject: Budget 'Platform' crossed 50%: 0\.6 of 1 USD/)
  t.match(message!.raw, /X-Budget-Event-Id: [0-9a-f-]{36}/i)
  const text = body(message!.raw)
  t.match(text, /Budget 'Platform' \(team team-a\) crossed its 50% alert threshold\./)
  t.match(text, /Spent: 0\.6 of 1 USD/)
  t.match(text, /Actions now in force: notify\./)
  t.match(text, /Dashboard: https:\/\/gateway\.example\.com\/api\/v1\/budgets\/ui/)
})

t.test('a refused delivery is retried through the outbox and arrives once', async (t) => {
  const receiver = await startSmtpReceiver(t)
  receiver.state.refuse = true
  const { app, createBudget, sql } = await buildGateway(t, { notifications: { channels: { email: { type: 'email', url: receiver.url } }, backoffMs: 10 } })
  const team = await createBudget({ name: 'Platform', amount: '1', alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['email'] }] })
  await spendTo(app, team.id, '0.6')
  await app.budgetNotifications.deliverDue()
  t.equal(receiver.received.length, 0, 'refused at first')
  receiver.state.refuse = false
  for (let round = 0; round < 20 && receiver.received.length === 0; round++) {
    await new Promise((resolve) => setTimeout(resolve, 20))
    await app.budgetNotifications.deliverDue()
  }
  for (let round = 0; round < 3; round++) await app.budgetNotifications.deliverDue()
  t.equal(receiver.received.length, 1, 'delivered once after the retry')
  const [outbox] = await sql<Array<{ status: string, attempts: number, lastError: string | null }>>`select status, attempts, last_error as "lastError" from budget_notification_outbox`
  t.match(outbox, { status: 'delivered', attempts: 2 })
})

t.test('a bad email channel fails at start, naming it', async (t) => {
  const { default: Fastify } = await import('fastify')
  const { default: budgets } = await import('../lib/index.js')
  const url = await createTestDatabase(t)
  for (const bad of ['smtp://127.0.0.1:25', 'smtp://127.0.0.1:25?from=budgets@example.com', 'smtp://127.0.0.1:25?from=nobody&to=ops@example.com', 'http://127.0.0.1?from=a@b.c&to=d@e.f']) {
    const app = Fastify()
    const failure = await (async () => { await app.register(budgets, { database: url, adminToken: ADMIN_TOKEN, notifications: { channels: { email: { type: 'email', url: bad } } } }).ready() })()
      .then(() => null, (error: Error) => error.message)
    t.match(failure, /notifications\.channels\.email/, bad)
    await app.close()
  }
})

t.test('the example gateway takes an email channel from NOTIFY_CHANNELS', async (t) => {
  const receiver = await startSmtpReceiver(t)
  const gateway = await startGatewayProcess({
    DATABASE_URL: await createTestDatabase(t), ADMIN_TOKEN, GATEWAY_KEYS: undefined, NOTIFY_INTERVAL_MS: '100',
    NOTIFY_CHANNELS: `email=${receiver.url}`
  })
  t.teardown(async () => await gateway.stop())
  const admin = async (path: string, body: unknown) => await fetch(`${gateway.url}${PREFIX}${path}`, {
    method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(body)
  })
  const budget = await (await admin('', { name: 'Ops', scopeType: 'team', scopeId: 'ops', amount: '10', currency: 'USD', period: 'monthly', startDate: '2024-01-01', alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['email'] }] })).json() as { id: string }
  t.equal((await admin(`/${budget.id}/usage`, { amount: '6', currency: 'USD', source: 'test' })).status, 201)
  for (let waited = 0; waited < 5000 && receiver.received.length === 0; waited += 50) await new Promise((resolve) => setTimeout(resolve, 50))
  t.equal(receiver.received.length, 1, 'the email arrived')
  t.match(receiver.received[0]!.raw, /Subject: Budget 'Ops' crossed 50%/)
})
