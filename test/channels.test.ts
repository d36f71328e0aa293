// Alert channels that cannot fail silently (issue 21, item 5): a budget may name only a configured channel;
// GET {prefix}/channels lists them without secrets; POST {prefix}/channels/:name/test sends a test through
// one and answers with the outcome; a notification to a channel that is gone is never marked delivered.
// Webhooks go to a local HTTP server, email to a local SMTP receiver (smtp-server), against the real database.
import fc from 'fast-check'
import Fastify, { type LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { ADMIN_TOKEN, PREFIX, snapshotTables } from './fixtures/app.js'
import { buildGateway, spendTo } from './fixtures/gateway.js'
import { startSmtpReceiver } from './fixtures/smtp-receiver.js'

const auth = { authorization: `Bearer ${ADMIN_TOKEN}` }

interface Hook { url: string, received: Array<{ body: Record<string, unknown>, headers: Record<string, unknown> }>, state: { status: number, hang: boolean } }

/** A webhook receiver on a free port: answers `state.status`, or never answers while `state.hang`. */
async function startHook (t: { teardown: (fn: () => unknown) => void }): Promise<Hook> {
  const received: Hook['received'] = []
  const state = { status: 200, hang: false }
  const hook = Fastify()
  hook.post('/services/T000/B000/secret-path-token', async (request, reply) => {
    if (state.hang) return await new Promise(() => {})
    received.push({ body: request.body as Record<string, unknown>, headers: request.headers })
    return await reply.code(state.status).send({ ok: state.status < 300 })
  })
  const address = await hook.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(async () => { hook.server.closeAllConnections(); await hook.close() })
  return { url: `${address}/services/T000/B000/secret-path-token?token=query-secret`, received, state }
}

const budget = (overrides: Record<string, unknown> = {}) =>
  ({ name: 'Platform', scopeType: 'team', scopeId: 'platform', amount: '1', currency: 'USD', period: 'monthly', startDate: '2024-01-01', ...overrides })

t.test('a budget that names an unconfigured channel is refused with 400, naming it, and changes nothing', async (t) => {
  const hook = await startHook(t)
  const { app, sql } = await buildGateway(t, { notifications: { channels: { slack: { type: 'webhook', url: hook.url }, ops: { type: 'log' } } } })
  const post = async (body: Record<string, unknown>) => await app.inject({ method: 'POST', url: PREFIX, headers: auth, body })
  const put = async (id: string, body: Record<string, unknown>) => await app.inject({ method: 'PUT', url: `${PREFIX}/${id}`, headers: auth, body })

  const created = await post(budget({ alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['slack', 'ops'] }], digest: { every: 'daily', channels: ['ops'] } }))
  t.equal(created.statusCode, 201, 'configured channels are accepted (a log channel among them)')
  const id = created.json().id as string

  const before = await snapshotTables(sql)
  const cases: Array<[string, () => Promise<LightMyRequestResponse>, string, string]> = [
    ['create, an alert', async () => await post(budget({ scopeId: 'other', alerts: [{ threshold: 80, actions: ['notify'], notificationChannels: ['slack'] }, { threshold: 50, actions: ['notify'], notificationChannels: ['ops', 'email'] }] })), 'alerts.1.notificationChannels.1', 'email'],
    ['create, the digest', async () => await post(budget({ scopeId: 'other', digest: { every: 'weekly', channels: ['Slack'] } })), 'digest.channels.0', 'Slack'],
    ['update, an alert', async () => await put(id, { alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['slack', 'pagerduty'] }] }), 'alerts.0.notificationChannels.1', 'pagerduty'],
    ['update, the digest', async () => await put(id, { digest: { every: 'daily', channels: ['log'] } }), 'digest.channels.0', 'log'],
    ['a name like an object key', async () => await put(id, { digest: { every: 'daily', channels: ['constructor'] } }), 'digest.channels.0', 'constructor']
  ]
  for (const [what, send, field, channel] of cases) {
    const response = await send()
    t.equal(response.statusCode, 400, what)
    t.match(response.json(), { code: 'BUDGET_ERR_UNKNOWN_CHANNEL', field }, what)
    t.match(response.json().message, `no notification channel '${channel}' is configured (configured: 'slack', 'ops')`, `${what}: the message names it and what there is`)
  }
  t.same(await snapshotTables(sql), before, 'nothing changed: no budget, no audit entry')

  // The library's callers meet the same rule.
  await t.rejects(app.budgetRegistry.createBudget({ ...budget({ scopeId: 'lib' }), alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['email'] }] } as never),
    { code: 'BUDGET_ERR_UNKNOWN_CHANNEL', field: 'alerts.0.notificationChannels.0' })
  t.same(await snapshotTables(sql), before, 'still nothing changed')
  t.equal((await put(id, { amount: '2' })).statusCode, 200, 'an update that names no channel passes')
})

t.test('a stored budget that names a channel no longer configured still reads, updates and is never counted delivered', async (t) => {
  const hook = await startHook(t)
  // A budget stored when 'email' was a channel (or before channels were checked): the row names it. No
  // process has 'email', and this one does not wait for one that has it (unconfiguredChannelGraceMs 0).
  const { app, sql, logs } = await buildGateway(t, { notifications: { channels: { slack: { type: 'webhook', url: hook.url } }, backoffMs: 0, maxAttempts: 2, unconfiguredChannelGraceMs: 0 }, captureLogs: true })
  const created = (await app.inject({ method: 'POST', url: PREFIX, headers: auth, body: budget({ alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['slack'] }] }) })).json()
  await sql`update budget_definitions set alerts = jsonb_set(alerts, '{0,notificationChannels}', '["slack", "email"]') where id = ${created.id as string}`

  const read = await app.inject({ url: `${PREFIX}/${created.id as string}`, headers: auth })
  t.equal(read.statusCode, 200, 'it reads')
  t.same(read.json().alerts[0].notificationChannels, ['slack', 'email'])
  t.equal((await app.inject({ url: PREFIX, headers: auth })).statusCode, 200, 'the list reads')
  t.equal((await app.inject({ method: 'PUT', url: `${PREFIX}/${created.id as string}`, headers: auth, body: { amount: '1' } })).statusCode, 200, 'an update that leaves its channels alone applies')

  await spendTo(app, created.id, '0.6')
  for (let round = 0; round < 4; round++) await app.budgetNotifications.deliverDue()
  t.equal(hook.received.length, 1, 'the configured channel got the crossing')
  const outbox = await sql`select channel, status, attempts, delivered_at, last_error from budget_notification_outbox order by channel`
  t.match(outbox, [
    { channel: 'email', status: 'failed', attempts: 2, delivered_at: null, last_error: "no channel 'email' is configured" },
    { channel: 'slack', status: 'delivered', attempts: 1, last_error: null }
  ], 'the missing channel is failed after its attempts, never delivered')
  const alerts = (await app.inject({ url: `${PREFIX}/${created.id as string}/alerts`, headers: auth })).json()
  t.match(alerts.alerts[0].deliveries, [
    { channel: 'email', status: 'failed', deliveredAt: null, lastError: "no channel 'email' is configured" },
    { channel: 'slack', status: 'delivered' }
  ], 'and the API shows it so')
  t.match(logs.filter((line) => line.channel === 'email'), [
    { level: 40, msg: "a budget notification names channel 'email', which is not configured: not delivered", eventId: alerts.alerts[0].id },
    { level: 40, msg: "a budget notification names channel 'email', which is not configured: not delivered" }
  ], 'each attempt warned in the log, naming the channel and the event')
})

t.test('GET /channels lists each channel, its kind and where it goes, never a secret', async (t) => {
  const hook = await startHook(t)
  const receiver = await startSmtpReceiver(t, { login: 'mailer:smtp-password' })
  const { app } = await buildGateway(t, {
    notifications: {
      channels: {
        slack: { type: 'webhook', url: hook.url.replace('http://', 'http://hookuser:hook-password@'), timeoutMs: 1500 },
        email: { type: 'email', url: receiver.url },
        ops: { type: 'log' },
        pager: { deliver: async () => {} }
      }
    }
  })
  const response = await app.inject({ url: `${PREFIX}/channels`, headers: auth })
  t.equal(response.statusCode, 200)
  const port = new URL(hook.url).port
  t.same(response.json(), {
    channels: [
      { name: 'slack', kind: 'webhook', url: `http://127.0.0.1:${port}`, timeoutMs: 1500 },
      { name: 'email', kind: 'email', smtpHost: `127.0.0.1:${receiver.port}`, tls: false, recipients: 2 },
      { name: 'ops', kind: 'log' },
      { name: 'pager', kind: 'custom' }
    ]
  })
  for (const secret of ['secret-path-token', 'query-secret', 'hook-password', 'hookuser', 'smtp-password', 'mailer', 'T000']) {
    t.notOk(response.body.includes(secret), `no ${secret} in the answer`)
  }
  t.equal((await app.inject({ url: `${PREFIX}/channels` })).statusCode, 401, 'behind the admin token')

  const none = await buildGateway(t, { notifications: { channels: {} } })
  t.same((await none.app.inject({ url: `${PREFIX}/channels`, headers: auth })).json(), { channels: [] }, 'none configured: an empty list')
})

t.test('POST /channels/:name/test sends a budget.test event and answers with the outcome, audited', async (t) => {
  const hook = await startHook(t)
  const receiver = await startSmtpReceiver(t, { login: 'mailer:smtp-password' })
  const custom: unknown[] = []
  const { app, sql } = await buildGateway(t, {
    notifications: {
      channels: {
        slack: { type: 'webhook', url: hook.url, timeoutMs: 300 },
        email: { type: 'email', url: receiver.url },
        pager: { deliver: async (event) => { custom.push(event) } },
        broken: { deliver: async () => { throw new Error('pager service said no') } }
      }
    }
  })
  const test = async (name: string) => await app.inject({ method: 'POST', url: `${PREFIX}/channels/${encodeURIComponent(name)}/test`, headers: auth })

  const delivered = await test('slack')
  t.equal(delivered.statusCode, 200)
  t.same(delivered.json(), { delivered: true })
  t.equal(hook.received.length, 1, 'the webhook got one request')
  t.match(hook.received[0]!.body, { type: 'budget.test', channel: 'slack', text: /Test notification/, testId: /^[0-9a-f-]{36}$/ })
  t.equal(hook.received[0]!.headers['x-budget-event-id'], hook.received[0]!.body.testId, 'the event id header is the test\'s')

  hook.state.status = 500
  t.same((await test('slack')).json(), { delivered: false, error: 'webhook answered 500' }, 'a refusal is the answer, with 200')
  hook.state.hang = true
  const slow = await test('slack')
  t.equal(slow.statusCode, 200)
  t.match(slow.json(), { delivered: false, error: /aborted|timeout|300 ms/i }, 'bounded by the channel\'s own timeout')

  const mailed = await test('email')
  t.same(mailed.json(), { delivered: true })
  t.equal(receiver.received.length, 1)
  t.same(receiver.received[0]!.to, ['ops@example.com', 'cfo@example.com'])
  t.match(receiver.received[0]!.raw, /Subject: \[test\] RelayCore Budgets: channel 'email' works/)

  t.same((await test('pager')).json(), { delivered: true })
  t.match(custom, [{ type: 'budget.test', channel: 'pager' }], 'a host\'s notifier gets the test event')
  t.same((await test('broken')).json(), { delivered: false, error: 'pager service said no' })

  const before = await snapshotTables(sql)
  for (const name of ['email2', 'log', 'constructor', '__proto__', 'SLACK']) {
    const unknown = await test(name)
    t.equal(unknown.statusCode, 404, name)
    t.match(unknown.json(), { code: 'BUDGET_ERR_CHANNEL_NOT_FOUND', message: `No notification channel '${name}' is configured` })
  }
  t.same(await snapshotTables(sql), before, 'an unknown channel changes nothing, not even the audit log')
  t.equal((await app.inject({ method: 'POST', url: `${PREFIX}/channels/slack/test` })).statusCode, 401, 'behind the admin token')
  t.equal(hook.received.length, 2, 'and sends nothing without it')

  const audit = (await app.inject({ url: `${PREFIX}/audit`, headers: auth })).json()
  t.match(audit.entries, [
    { budgetId: null, action: 'test-channel', actor: 'admin', requestId: String, after: { channel: 'broken', delivered: false, error: 'pager service said no' } },
    { action: 'test-channel', after: { channel: 'pager', delivered: true } },
    { action: 'test-channel', after: { channel: 'email', delivered: true } },
    { action: 'test-channel', after: { channel: 'slack', delivered: false } },
    { action: 'test-channel', after: { channel: 'slack', delivered: false, error: 'webhook answered 500' } },
    { action: 'test-channel', after: { channel: 'slack', delivered: true } }
  ], 'each test is audited, newest first')
  t.equal(audit.entries.length, 6)
  const outbox = await sql`select count(*)::int as count from budget_notification_outbox`
  t.equal(outbox[0]!.count, 0, 'a test is no outbox row: nothing retries it')
})

t.test('the two routes under hostile input: no 5xx, and nothing changed after a 4xx', async (t) => {
  const hook = await startHook(t)
  const { app, sql } = await buildGateway(t, { notifications: { channels: { slack: { type: 'webhook', url: hook.url, timeoutMs: 500 }, ops: { type: 'log' } } } })
  const name = fc.oneof(
    fc.constantFrom('slack', 'ops', 'SLACK', 'slack ', '%00', '%2F', '..', '%2e%2e', '__proto__', 'constructor', 'toString', 'hasOwnProperty', '%F0%9F%98%80', '%ED%A0%80', 'a'.repeat(600), '%'),
    fc.string({ maxLength: 30 }).map(encodeURIComponent),
    fc.string({ unit: 'binary', maxLength: 10 }).map(encodeURIComponent)
  )
  const query = fc.oneof(fc.constant(''), fc.constantFrom('?x=1', '?__proto__=1', '?name=ops', '?a=%00'))
  const body = fc.oneof(
    fc.constant(undefined),
    fc.jsonValue({ maxDepth: 2 }).map((value) => JSON.stringify(value)),
    fc.constantFrom('{', '\u0000', '{"__proto__":{"x":1}}')
  )
  let sent = 0
  await fc.assert(fc.asyncProperty(name, query, body, fc.constantFrom('GET', 'POST', 'PUT', 'DELETE'), async (channel, search, payload, method) => {
    const routeUrl = method === 'GET' && sent % 2 === 0 ? `${PREFIX}/channels${search}` : `${PREFIX}/channels/${channel}/test${search}`
    sent++
    const before = await snapshotTables(sql)
    const response = await app.inject({
      method: method as 'GET',
      url: routeUrl,
      headers: { ...auth, ...(payload === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(payload === undefined ? {} : { payload })
    })
    if (response.statusCode >= 500) throw new Error(`${method} ${routeUrl}: ${response.statusCode} ${response.body}`)
    if (response.statusCode >= 400) {
      const error = response.json()
      if (typeof error.code !== 'string') throw new Error(`${method} ${routeUrl}: ${response.statusCode} with no code: ${response.body}`)
      const after = await snapshotTables(sql)
      if (JSON.stringify(after) !== JSON.stringify(before)) throw new Error(`${method} ${routeUrl}: ${response.statusCode} changed the tables`)
    }
  }), { numRuns: 150, seed: 21 })
  t.pass('150 hostile requests: no 5xx, every 4xx coded and changing nothing')

  // A budget's channels under hostile names: refused with a code, never a 5xx, nothing written.
  await fc.assert(fc.asyncProperty(fc.array(fc.oneof(fc.string({ maxLength: 20 }), fc.constantFrom('ops', 'slack', '__proto__', 'constructor', 'a\u0000b', '\ud800')), { maxLength: 4 }), async (channels) => {
    const before = await snapshotTables(sql)
    const response = await app.inject({ method: 'POST', url: PREFIX, headers: auth, body: budget({ scopeId: 'hostile', alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: channels }] }) })
    if (response.statusCode >= 500) throw new Error(`${JSON.stringify(channels)}: ${response.statusCode} ${response.body}`)
    const allKnown = channels.every((channel) => channel === 'ops' || channel === 'slack') && new Set(channels).size === channels.length
    if (allKnown !== (response.statusCode === 201)) throw new Error(`${JSON.stringify(channels)}: ${response.statusCode} ${response.body}`)
    if (response.statusCode === 201) {
      await app.budgetRegistry.deleteBudget(response.json().id as string)
      return
    }
    if (JSON.stringify(await snapshotTables(sql)) !== JSON.stringify(before)) throw new Error(`${JSON.stringify(channels)}: ${response.statusCode} changed the tables`)
  }), { numRuns: 60, seed: 5 })
  t.pass('hostile channel names in a budget: refused with a code, nothing written')
})
