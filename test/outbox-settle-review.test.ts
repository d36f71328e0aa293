// Adversarial review of issue 22 item 4 ("errors that cannot vanish"): the notification outbox claimed,
// delivered with no transaction open and recorded under its claim (lib/alerts/notifications.ts,
// lib/alerts/alert-repository.ts, sql/migrations/002_outbox_claims.sql), the named settle outcomes
// (lib/gate/integration.ts, lib/gate/settlements.ts, lib/http/gate/gate-hooks.ts) and bestEffort.
// Every test here failed on the code as merged (7451369); each names its finding. A real PostgreSQL,
// real HTTP and SMTP peers on local ports.
import { once } from 'node:events'
import { connect, createServer, type AddressInfo, type Socket } from 'node:net'
import Fastify from 'fastify'
import postgres from 'postgres'
import t from 'tap'
import budgets, { type BudgetEvent, type BudgetsOptions } from '../lib/index.js'
import { ADMIN_TOKEN } from './fixtures/app.js'
import { createTestDatabase } from './fixtures/database.js'
import { buildGateway } from './fixtures/gateway.js'
import { findViolations } from './fixtures/invariants.js'

interface Teardown { teardown: (fn: () => unknown) => void }
type Notifications = NonNullable<BudgetsOptions['notifications']>

const APP_NAME = 'budgets-outbox-review'
const pause = async (ms: number) => await new Promise((resolve) => setTimeout(resolve, ms))

/** An app (one "gateway process") on `url`, its warnings and errors kept in `logs`. */
async function startApp (t: Teardown, url: string, notifications: Notifications) {
  const sql = postgres(url, { onnotice: () => {}, connection: { application_name: APP_NAME } })
  const logs: Array<{ level: number, msg?: string, err?: { code?: string, message?: string }, [key: string]: unknown }> = []
  const app = Fastify({ logger: { level: 'warn', stream: { write: (line: string) => { logs.push(JSON.parse(line)) } } } })
  await app.register(budgets, { database: sql, adminToken: ADMIN_TOKEN, notifications: { intervalMs: 0, ...notifications } })
  await app.ready()
  const state = { closed: false }
  t.teardown(async () => { if (!state.closed) await app.close(); await sql.end({ timeout: 1 }) })
  return { app, sql, logs, state }
}

/** A budget of 1 USD for `team`, spent to 0.6: its 50% alert crosses, one outbox row per channel. */
async function cross (app: Awaited<ReturnType<typeof startApp>>['app'], team: string, channels: string[]) {
  const budget = await app.budgetRegistry.createBudget({
    name: team, scopeType: 'team', scopeId: team, amount: '1', currency: 'USD', period: 'monthly', startDate: '2024-01-01',
    alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: channels }]
  })
  await app.budgetTracker.recordUsage({ budgetId: budget.id, amount: '0.6', currency: 'USD' })
  return budget
}

/** Stands in for the claim's deadline (at least 60 s) passing: every claimed row is due again now. */
async function claimsRunOut (sql: postgres.Sql) {
  await sql`update budget_notification_outbox set next_attempt_at = now() where status = 'pending' and claim_id is not null`
}

/** A channel that records what it got, and can be made to wait until the test releases it. */
function pagerChannel () {
  const received: BudgetEvent[] = []
  let arrived: () => void = () => {}
  let release: () => void = () => {}
  const state = {
    hang: false,
    arrival: new Promise<void>((resolve) => { arrived = resolve }),
    release: () => { release() }
  }
  const pager = {
    deliver: async (event: BudgetEvent) => {
      if (state.hang) {
        arrived()
        await new Promise<void>((resolve) => { release = resolve })
      }
      received.push(event)
    }
  }
  return { pager, received, state }
}

/** An SMTP server that greets and accepts the sender, and refuses every recipient with `reply` (a misbehaving mail server). */
async function startSmtpRefusing (t: Teardown, reply: string) {
  let recipients = 0
  const server = createServer((socket) => {
    socket.on('error', () => {})
    socket.write('220 mail.example.com ESMTP\r\n')
    let buffer = ''
    socket.on('data', (chunk) => {
      buffer += chunk.toString('latin1')
      for (let end = buffer.indexOf('\r\n'); end >= 0; end = buffer.indexOf('\r\n')) {
        const line = buffer.slice(0, end)
        buffer = buffer.slice(end + 2)
        if (/^(EHLO|HELO)/i.test(line)) socket.write('250 mail.example.com\r\n')
        else if (/^RCPT/i.test(line)) { recipients++; socket.write(`${reply}\r\n`) } else if (/^QUIT/i.test(line)) { socket.end('221 bye\r\n') } else socket.write('250 ok\r\n')
      }
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(async () => await new Promise<void>((resolve) => { server.close(() => { resolve() }) }))
  const { port } = server.address() as AddressInfo
  return { url: `smtp://127.0.0.1:${port}?from=budgets@example.com&to=ops@example.com`, recipients: () => recipients }
}

/** A TCP proxy in front of PostgreSQL that can stop forwarding while keeping its connections open (a partition, a hung server). */
async function startFreezableProxy (t: Teardown, host: string, port: number) {
  let frozen = false
  const held: Array<() => void> = []
  const sockets = new Set<Socket>()
  const server = createServer((client) => {
    const upstream = connect(port, host)
    const forward = (from: Socket, to: Socket) => from.on('data', (chunk) => { if (frozen) held.push(() => { to.write(chunk) }); else to.write(chunk) })
    forward(client, upstream)
    forward(upstream, client)
    for (const socket of [client, upstream]) {
      sockets.add(socket)
      socket.on('error', () => { client.destroy(); upstream.destroy() })
      socket.on('close', () => { sockets.delete(socket); client.destroy(); upstream.destroy() })
    }
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const proxy = {
    port: (server.address() as AddressInfo).port,
    freeze: () => { frozen = true },
    thaw: () => { frozen = false; for (const write of held.splice(0)) write() }
  }
  t.teardown(async () => {
    proxy.thaw()
    for (const socket of sockets) socket.destroy()
    await new Promise((resolve) => server.close(resolve))
  })
  return proxy
}

// FINDING 1: a webhook channel's timeoutMs is never validated; timeoutMs: Infinity (or NaN, as
// Number(process.env.X) gives when unset) makes the claim's interval 'Infinity milliseconds', so every
// claim statement fails and no notification on ANY channel is ever delivered (the log, a custom pager).
t.test('FINDING 1: a webhook channel with timeoutMs Infinity or NaN stops the delivery of every channel', async (t) => {
  for (const timeoutMs of [Number.POSITIVE_INFINITY, Number.NaN]) {
    const url = await createTestDatabase(t)
    const { pager, received } = pagerChannel()
    const notifications = { channels: { slack: { type: 'webhook' as const, url: 'http://127.0.0.1:9/hook', timeoutMs }, pager } }
    // Of the two acceptable outcomes (refused at registration, or delivered anyway) the plugin refuses it.
    const started = await startApp(t, url, notifications).then((app) => app, (error: Error) => error)
    t.ok(started instanceof Error, `timeoutMs ${timeoutMs} refused at registration`)
    t.match((started as Error).message, /notifications\.channels\.slack\.timeoutMs/, `timeoutMs ${timeoutMs}: the error names the option`)
    t.match(started, { code: 'BUDGET_ERR_OPTIONS' })
    t.equal(received.length, 0)
  }
})

// FINDING 2: the outcome of an attempt is written into a text column as the upstream phrased it; an
// SMTP server whose refusal carries a NUL byte makes markAttemptFailed fail (22021) every time. The row
// stays claimed, comes due at the claim's deadline, is sent again, and `attempts` never grows: it never
// reaches maxAttempts, never fails for good, and is retried (and claimed) forever.
t.test('FINDING 2: a refusal whose text holds a NUL byte is never counted: the row is retried and claimed forever', async (t) => {
  const url = await createTestDatabase(t)
  const smtp = await startSmtpRefusing(t, '550 mailbox\u0000unavailable')
  const { app, sql } = await startApp(t, url, { channels: { email: { type: 'email', url: smtp.url } }, maxAttempts: 2, backoffMs: 0 })
  await cross(app, 'platform', ['email'])
  for (let round = 0; round < 4; round++) {
    await app.budgetNotifications.deliverDue()
    await claimsRunOut(sql)
  }
  const [row] = await sql<Array<{ status: string, attempts: number, claimed: boolean }>>`
    select status, attempts, claim_id is not null as claimed from budget_notification_outbox`
  t.same(row, { status: 'failed', attempts: 2, claimed: false }, 'two attempts recorded, then failed for good (maxAttempts 2)')
  t.equal(smtp.recipients(), 2, 'the mail server was tried maxAttempts times, no more')
})

// FINDING 3: a process that lacks a channel (a rolling deploy adding it; a budget created through the
// other process) claims its rows and records each as a failed attempt. It burns every attempt and the
// row is failed for good, while a process that has the channel is running and never gets to send it.
t.test('FINDING 3: a process without the channel uses up the attempts of a process that has it', async (t) => {
  const url = await createTestDatabase(t)
  const { pager, received } = pagerChannel()
  const withPager = await startApp(t, url, { channels: { ops: { type: 'log' }, pager } })
  const without = await startApp(t, url, { channels: { ops: { type: 'log' } } })
  await cross(withPager.app, 'platform', ['pager'])
  // The process without the channel happens to run its rounds first, each time the row comes due.
  for (let round = 0; round < 10; round++) {
    await without.app.budgetNotifications.deliverDue()
    await without.sql`update budget_notification_outbox set next_attempt_at = now() where status = 'pending'`
  }
  await withPager.app.budgetNotifications.deliverDue()
  t.equal(received.length, 1, 'the crossing reached the pager: a process that has the channel runs')
  const [row] = await withPager.sql<Array<{ status: string }>>`select status from budget_notification_outbox`
  t.equal(row!.status, 'delivered')
})

// FINDING 4: stop() waits for the round in flight with no bound, and the round's statements (the
// digests, the claim, the outcome) have no statement or lock timeout. With the database not answering
// (a partition, a hung server), app.close() never ends, while every other part of close is bounded
// (gate drain 10 s, settlements 10 s, leases 5 s, rate limits 5 s, sql.end 5 s).
t.test('FINDING 4: close does not end while the database does not answer: the notification round in flight is awaited without a bound', async (t) => {
  const url = await createTestDatabase(t)
  const target = new URL(url)
  const proxy = await startFreezableProxy(t, target.hostname, Number(target.port || 5432))
  const proxied = new URL(url)
  proxied.hostname = '127.0.0.1'
  proxied.port = String(proxy.port)
  const { app, state } = await startApp(t, proxied.toString(), { channels: { ops: { type: 'log' } }, intervalMs: 20 })
  await cross(app, 'platform', ['ops'])
  await pause(200)
  proxy.freeze() // the loop's next statement is sent and never answered
  await pause(200)
  const closing = app.close().then(() => 'closed')
  // 30 s: more than every bound of close that could apply here together; nothing else is pending.
  let timer: NodeJS.Timeout | undefined
  const bound = new Promise<string>((resolve) => { timer = setTimeout(() => { resolve('still closing after 30 s') }, 30_000) })
  const outcome = await Promise.race([closing, bound])
  clearTimeout(timer)
  t.equal(outcome, 'closed', 'close ends within its bounds with the database away')
  proxy.thaw()
  await closing
  state.closed = true
})

// FINDING 5: the outcome of a delivery is recorded in one try. A backend terminated while the webhook
// was answering (a database restart, a failover, pg_terminate_backend) fails that one statement with
// CONNECTION_CLOSED, which the rest of the gate retries as an outage; here the 2xx is dropped, the row
// stays claimed and is sent a second time once the claim runs out.
t.test('FINDING 5: a connection terminated during a delivery loses its 2xx: the crossing is sent again', async (t) => {
  const url = await createTestDatabase(t)
  const { pager, received, state } = pagerChannel()
  const { app } = await startApp(t, url, { channels: { pager } })
  // The test reads through a client of its own: the app's connections are the ones terminated.
  const monitor = postgres(url, { max: 1, onnotice: () => {} })
  t.teardown(async () => await monitor.end({ timeout: 1 }))
  await cross(app, 'platform', ['pager'])
  state.hang = true
  const delivering = app.budgetNotifications.deliverDue()
  await state.arrival
  await monitor`select pg_terminate_backend(pid) from pg_stat_activity where application_name = ${APP_NAME} and datname = current_database()`
  state.hang = false
  state.release() // the channel answers: delivered
  // The round's next claim may meet a terminated connection too, and reject the round: not the finding.
  await delivering.catch(() => null)
  t.equal(received.length, 1, 'the channel took the crossing')
  const [row] = await monitor<Array<{ status: string, attempts: number }>>`select status, attempts from budget_notification_outbox`
  t.same(row, { status: 'delivered', attempts: 1 }, 'the delivery is recorded (on a fresh connection)')
  await claimsRunOut(monitor)
  await app.budgetNotifications.deliverDue()
  t.equal(received.length, 1, 'and never sent again')
})

// FINDING 6: the gate warns of an expiry only when the call had a cost (gate-hooks.ts, end():
// `sweptBeforeSettling(ended) && charge.cost !== null`). A call that was not served (upstream 500 after
// its hold's TTL) whose hold the sweeper counted as spent at its estimate is billed silently, where
// releaseHold (integration.ts) warns for the same case.
t.test('FINDING 6: an unserved call whose hold expired is billed its estimate and the gate says nothing', async (t) => {
  const upstream = Fastify()
  upstream.post('/v1/chat/completions', async (_request, reply) => {
    await pause(800) // longer than the reservation's TTL
    return await reply.code(500).send({ error: { message: 'upstream broke', type: 'server_error' } })
  })
  const base = `${await upstream.listen({ port: 0, host: '127.0.0.1' })}/v1`
  t.teardown(async () => await upstream.close())
  const gateway = await buildGateway(t, { captureLogs: true, upstreamServer: base, gate: { reservationTtlMs: 200, sweepIntervalMs: 50 } })
  await gateway.createBudget({ scopeId: 'team-a', amount: '10' })
  const response = await gateway.call({ team: 'team-a' })
  t.equal(response.statusCode, 500, 'the call was not served')
  await gateway.app.close()
  const records = await gateway.sql<Array<{ source: string }>>`select source from budget_usage_records`
  t.same(records.map((record) => record.source), ['expired-reservation'], 'its hold was swept and counted at its estimate')
  t.same(await findViolations(gateway.sql), [])
  t.ok(gateway.logs.some((line) => /expired/.test(line.msg ?? '')), 'the gate warned that the unserved call was counted at its estimate')
})

// FINDING 7: releaseCall (settleCall with null) of a call admitted from a lease resolves 'released'
// whatever became of the lease (leases.ts end(): `if (actualCost === null) return { outcome: 'released' }`).
// After the lease expired and was swept, the call's estimate was counted as spent, yet the caller is
// told it was given back; the downgrade path's expiry warning (gate-hooks.ts) can never fire for it.
t.test('FINDING 7: releasing a leased call after its lease was swept says released, not expired', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  await gateway.createBudget({ scopeId: 'team-a', amount: '100' })
  const integration = gateway.app.budgetIntegration
  const ids: string[] = []
  for (let i = 0; i < 4; i++) ids.push((await integration.reserveCall({ team: 'team-a' }, '0.01')).reservationId!)
  const held = new Set((await gateway.sql<Array<{ id: string }>>`select id from budget_reservations where not lease`).map((row) => row.id))
  const leased = ids.filter((id) => !held.has(id))
  t.ok(leased.length > 0, `calls were admitted from a lease (${leased.length})`)
  // The process was cut off past the TTL: another process's sweeper counted the lease at what it held.
  await gateway.sql`update budget_reservations set expires_at = now() - interval '1 second'`
  t.ok(await integration.sweepExpiredReservations() > 0, 'the lease was swept')
  const outcomes = await Promise.all(leased.map(async (id) => (await integration.releaseCall(id)).outcome))
  t.same(outcomes, leased.map(() => 'expired'), 'each says it had expired (counted at its estimate), as a held call says not-found')
})

// FINDING 8: an unknown reservation id that is not a UUID (a caller's typo, '' from a missing field)
// rejects with PostgreSQL's 22P02, fails the batch it joined (re-run one by one), and is logged at
// error level as "settling a gated call failed", an alarm for nothing held; a well-formed unknown id
// resolves 'not-found'.
t.test('FINDING 8: settling or releasing an id that is not a UUID is a database error logged as a failed settlement', async (t) => {
  const gateway = await buildGateway(t, { captureLogs: true, gate: { sweepIntervalMs: 0 } })
  await gateway.createBudget({ scopeId: 'team-a', amount: '100' })
  const integration = gateway.app.budgetIntegration
  const good = await integration.reserveCall({ team: 'team-a' }, '0.01')
  const [settled, unknown, empty] = await Promise.allSettled([
    integration.settleCall(good.reservationId!, '0.005'), integration.settleCall('not-a-reservation', '0.01'), integration.releaseCall('')
  ])
  t.match(settled, { status: 'fulfilled', value: { outcome: 'recorded' } })
  for (const [name, result] of [['settleCall', unknown], ['releaseCall', empty]] as const) {
    const answer = result!.status === 'fulfilled' ? result!.value : { code: (result!.reason as { code?: string }).code }
    // Of the two acceptable answers (not-found, a validation error) the plugin gives not-found: no hold is under that id.
    t.same(answer, { outcome: 'not-found' }, `${name} of a malformed id: not-found (got ${JSON.stringify(answer)})`)
  }
  t.same(gateway.logs.filter((line) => line.level >= 50).map((line) => line.msg), [], 'no error logged: nothing was held under those ids')
})
