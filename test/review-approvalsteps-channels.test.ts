// Review of the approval steps' notifications (commit 24d5daa): the channels. An unconfigured channel, a
// webhook that answers 500 or times out (retried, then failed after maxAttempts), an email to a real SMTP
// receiver, a custom notifier that throws.
import t from 'tap'
import Fastify from 'fastify'
import type { ApprovalStepEvent, BudgetEvent } from '../lib/index.js'
import { approvalsGateway } from './fixtures/approvals-gateway.js'
import { startSmtpReceiver } from './fixtures/smtp-receiver.js'

type Gateway = Awaited<ReturnType<typeof approvalsGateway>>

async function outbox (g: Gateway) {
  return await g.sql<Array<{ level: number, channel: string, status: string, attempts: number, lastError: string | null, claimed: boolean }>>`
    select approval_level as level, channel, status, attempts, last_error as "lastError", claim_id is not null as claimed
    from budget_notification_outbox where approval_request_id is not null order by approval_level, channel`
}

/** Rounds until nothing is due now (waiting out short backoffs), at most `rounds`. */
async function rounds (g: Gateway, count: number, waitMs = 15) {
  const outcomes: Array<{ delivered: number, failed: number }> = []
  for (let round = 0; round < count; round++) {
    outcomes.push(await g.app.budgetNotifications.deliverDue())
    await new Promise((resolve) => setTimeout(resolve, waitMs))
  }
  return outcomes
}

t.test('a webhook answering 500 or never answering: retried, failed after maxAttempts, the other channel delivered once; the loop goes on', async (t) => {
  const state = { calls: 0, hangs: 0 }
  const server = Fastify()
  server.post('/500', async (_request, reply) => { state.calls++; return await reply.code(500).send('down') })
  server.post('/hang', async () => { state.hangs++; await new Promise((resolve) => setTimeout(resolve, 2000)); return { ok: true } })
  const base = await server.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(async () => { server.server.closeAllConnections(); await server.close() })
  const feed: BudgetEvent[] = []
  const g = await approvalsGateway(t, {
    notifications: {
      channels: { down: { type: 'webhook', url: `${base}/500` }, slow: { type: 'webhook', url: `${base}/hang`, timeoutMs: 200 }, feed: { deliver: async (event) => { feed.push(event) } } },
      maxAttempts: 3,
      backoffMs: 1
    }
  }, ['down', 'slow', 'feed'])
  const request = (await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: '10' })).json()
  await rounds(g, 5)
  const rows = await outbox(g)
  t.match(rows, [
    { level: 0, channel: 'down', status: 'failed', attempts: 3, lastError: 'webhook answered 500', claimed: false },
    { level: 0, channel: 'feed', status: 'delivered', attempts: 1, lastError: null, claimed: false },
    { level: 0, channel: 'slow', status: 'failed', attempts: 3, lastError: /no answer within 200 ms|aborted|timeout/i, claimed: false }
  ])
  t.equal(state.calls, 3, 'three attempts at the 500')
  t.equal(feed.filter((e) => e.type === 'budget.approval_step').length, 1)
  // a decision after that is still queued and delivered
  t.equal((await g.lead('POST', `/${g.team.id}/approval-requests/${request.id}/decisions`, { level: 1, verdict: 'approve' })).statusCode, 200)
  await rounds(g, 1)
  t.equal(feed.filter((e) => e.type === 'budget.approval_step').length, 2)
})

t.test('an unconfigured channel: left for the grace, then failed with the reason after maxAttempts; configured ones delivered', async (t) => {
  const feed: BudgetEvent[] = []
  const g = await approvalsGateway(t, { captureLogs: true, notifications: { channels: { feed: { deliver: async (event) => { feed.push(event) } } }, maxAttempts: 2, backoffMs: 1, unconfiguredChannelGraceMs: 0 } }, ['feed'])
  // a budget stored before channels were checked names one no process has
  await g.sql`update budget_definitions set alerts = jsonb_set(alerts, '{0,notificationChannels}', '["feed", "ghost"]') where id = ${g.team.id}`
  const request = (await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: '10' })).json()
  t.equal(request.levels.length, 1)
  await rounds(g, 4)
  t.match(await outbox(g), [
    { level: 0, channel: 'feed', status: 'delivered', attempts: 1 },
    { level: 0, channel: 'ghost', status: 'failed', attempts: 2, lastError: 'no channel \'ghost\' is configured', claimed: false }
  ])
  t.ok(g.logs.some((line) => line.eventType === 'budget.approval_step' && line.eventId === `${request.id}:0`), 'the warning names the step')
})

t.test('a custom notifier that throws (an Error, a string, undefined) is a failed attempt, never a crash', async (t) => {
  const thrown: unknown[] = [new Error('boom'), 'a string', undefined]
  let call = 0
  const g = await approvalsGateway(t, {
    notifications: { channels: { bad: { deliver: async () => { throw thrown[call++ % thrown.length] } }, sync: { deliver: (() => { throw new Error('sync') }) as never } }, maxAttempts: 3, backoffMs: 1 }
  }, ['bad', 'sync'])
  await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: '10' })
  const outcomes = await rounds(g, 5)
  t.same(outcomes.reduce((sum, o) => sum + o.failed, 0), 6, 'six failed attempts in all')
  t.match(await outbox(g), [
    { channel: 'bad', status: 'failed', attempts: 3, claimed: false },
    { channel: 'sync', status: 'failed', attempts: 3, lastError: 'sync', claimed: false }
  ])
})

/** A header's value, its folded lines unfolded. */
const header = (raw: string, name: string) => {
  const head = raw.slice(0, raw.indexOf('\r\n\r\n')).replace(/\r\n[ \t]+/g, ' ')
  return new RegExp(`^${name}: (.*)$`, 'mi').exec(head)?.[1]
}

t.test('email through a real SMTP receiver: each step\'s subject, its body and the X-Budget-Event-Id; a hostile reason breaks no header', async (t) => {
  const smtp = await startSmtpReceiver(t, { to: 'ops@example.com' })
  const captured: BudgetEvent[] = []
  const g = await approvalsGateway(t, {
    notifications: { channels: { mail: { type: 'email', url: smtp.url }, feed: { deliver: async (event) => { captured.push(event) } } }, dashboardUrl: 'https://gw.example/ui' }
  }, ['mail', 'feed'])
  const reason = 'launch\r\n.\r\nBcc: evil@example.com\r\n\r\nX-Injected: yes'
  const request = (await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: '800.5', reason })).json()
  const decide = `/${g.team.id}/approval-requests/${request.id}/decisions`
  t.equal((await g.lead('POST', decide, { level: 1, verdict: 'approve', comment: 'ok\r\nSubject: forged' })).statusCode, 200)
  t.equal((await g.finance('POST', decide, { level: 2, verdict: 'approve' })).statusCode, 200)
  await rounds(g, 3)
  t.equal(smtp.received.length, 3, 'three messages')
  const ids = smtp.received.map((m) => header(m.raw, 'X-Budget-Event-Id'))
  t.same(ids, [`${request.id}:0`, `${request.id}:1`, `${request.id}:2`])
  t.same(smtp.received.map((m) => m.to), [['ops@example.com'], ['ops@example.com'], ['ops@example.com']])
  t.same(smtp.received.map((m) => header(m.raw, 'Subject')), [
    'Budget \'team a\': approval of 800.5 USD requested by dev-alice',
    'Budget \'team a\': level 1 approved the request for 800.5 USD',
    'Budget \'team a\': the request for 800.5 USD is approved'
  ])
  for (const message of smtp.received) {
    t.notOk(/^X-Injected:/mi.test(message.raw.slice(0, message.raw.indexOf('\r\n\r\n'))), 'no injected header')
    t.notOk(/^Bcc:/mi.test(message.raw.slice(0, message.raw.indexOf('\r\n\r\n'))), 'no Bcc header')
    t.equal((message.raw.slice(0, message.raw.indexOf('\r\n\r\n')).match(/^Subject:/gmi) ?? []).length, 1, 'one Subject header')
  }
  const body = smtp.received[1]!.raw.slice(smtp.received[1]!.raw.indexOf('\r\n\r\n') + 4).replace(/=\r\n/g, '')
  t.match(body, /Comment: ok/)
  t.match(body, /Next: level 2 \(finance\) of 2\./)
  t.match(body, /Dashboard: https:\/\/gw\.example\/ui/)
  t.match(body, new RegExp(`step ${request.id}:1\\.`))
  const events = captured.filter((e): e is ApprovalStepEvent => e.type === 'budget.approval_step')
  t.equal(events.length, 3)
  t.equal(events[0]!.request.reason, reason)
})
