// Review of the approval steps' notifications (commit 24d5daa): what each step's event says. One level, two
// levels, the last level, rejections at level 1 and 2, a policy changed after filing, a budget renamed or
// archived before delivery, a channel removed after queueing, extreme amounts, hostile texts.
import t from 'tap'
import Fastify from 'fastify'
import type { ApprovalStepEvent, BudgetEvent } from '../lib/index.js'
import { approvalStepEmail, slackEscaped } from '../lib/alerts/notifications.js'
import { approvalsGateway, POLICY } from './fixtures/approvals-gateway.js'

async function webhookReceiver (t: { teardown: (fn: () => unknown) => void }) {
  const received: Array<{ eventId: string, body: ApprovalStepEvent, raw: string }> = []
  const server = Fastify({ bodyLimit: 10 * 1024 * 1024 })
  server.addContentTypeParser('application/json', { parseAs: 'string' }, (_request, body, done) => {
    try { done(null, { raw: body as string, parsed: JSON.parse(body as string) }) } catch (error) { done(error as Error) }
  })
  server.post('/hook', async (request) => {
    const { raw, parsed } = request.body as { raw: string, parsed: ApprovalStepEvent }
    received.push({ eventId: String(request.headers['x-budget-event-id']), body: parsed, raw })
    return { ok: true }
  })
  const url = `${await server.listen({ port: 0, host: '127.0.0.1' })}/hook`
  t.teardown(async () => await server.close())
  return { url, received }
}

const steps = (events: BudgetEvent[]) => events.filter((event): event is ApprovalStepEvent => event.type === 'budget.approval_step')

async function setup (t: Parameters<typeof approvalsGateway>[0]) {
  const hook = await webhookReceiver(t)
  const custom: BudgetEvent[] = []
  const gateway = await approvalsGateway(t, {
    notifications: { channels: { hook: { type: 'webhook', url: hook.url }, feed: { deliver: async (event) => { custom.push(event) } } }, backoffMs: 1 }
  }, ['hook', 'feed'])
  /** Delivers until nothing is due; throws when a delivery failed. */
  const drain = async () => {
    for (let round = 0; round < 10; round++) {
      const outcome = await gateway.app.budgetNotifications.deliverDue()
      if (outcome.failed !== 0) throw new Error(`${outcome.failed} deliveries failed`)
      if (outcome.delivered === 0) return
    }
  }
  const outbox = async () => await gateway.sql<Array<{ level: number, channel: string, status: string, attempts: number }>>`
    select approval_level as level, channel, status, attempts from budget_notification_outbox where approval_request_id is not null order by approval_level, channel`
  return { ...gateway, hook, custom, drain, outbox }
}

t.test('one level: the filing and its only (last) approval', async (t) => {
  const g = await setup(t)
  const request = (await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: '100' })).json()
  t.equal(request.levels.length, 1)
  t.equal((await g.lead('POST', `/${g.team.id}/approval-requests/${request.id}/decisions`, { level: 1, verdict: 'approve' })).statusCode, 200)
  await g.drain()
  const events = steps(g.custom)
  t.same(events.map((e) => [e.step, e.level, e.by, e.levelName, e.nextLevel]), [
    ['requested', 0, 'dev-alice', null, { level: 1, name: 'team lead' }],
    ['approved', 1, 'lead-a', 'team lead', null]
  ])
  t.equal(events[0]!.text, 'Budget \'team a\': dev-alice asks approval of 100 USD more; level 1 (team lead) decides first, 1 level in all.')
  t.equal(events[1]!.text, 'Budget \'team a\': the request for 100 USD more was approved at level 1 (team lead) by lead-a, its last level: the approval is in force.')
  t.same(events.map((e) => e.request.levelsRequired), [1, 1])
  t.same(g.hook.received.map((one) => one.body), events, 'the webhook got the same events')
  t.same(await g.outbox(), [
    { level: 0, channel: 'feed', status: 'delivered', attempts: 1 }, { level: 0, channel: 'hook', status: 'delivered', attempts: 1 },
    { level: 1, channel: 'feed', status: 'delivered', attempts: 1 }, { level: 1, channel: 'hook', status: 'delivered', attempts: 1 }
  ])
})

t.test('rejections at level 1 and at level 2 name their level, their decider and comment, and no next level', async (t) => {
  const g = await setup(t)
  const first = (await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: '900' })).json()
  t.equal((await g.lead('POST', `/${g.team.id}/approval-requests/${first.id}/decisions`, { level: 1, verdict: 'reject', comment: 'no' })).statusCode, 200)
  const second = (await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: '901' })).json()
  t.equal((await g.lead('POST', `/${g.team.id}/approval-requests/${second.id}/decisions`, { level: 1, verdict: 'approve' })).statusCode, 200)
  t.equal((await g.finance('POST', `/${g.team.id}/approval-requests/${second.id}/decisions`, { level: 2, verdict: 'reject' })).statusCode, 200)
  await g.drain()
  const byStep = new Map(steps(g.custom).map((e) => [e.stepId, e]))
  t.match(byStep.get(`${first.id}:1`), { step: 'rejected', level: 1, levelName: 'team lead', by: 'lead-a', comment: 'no', nextLevel: null })
  t.equal(byStep.get(`${first.id}:1`)!.text, 'Budget \'team a\': the request for 900 USD more was rejected at level 1 (team lead) by lead-a: no.')
  t.match(byStep.get(`${second.id}:1`), { step: 'level-approved', level: 1, nextLevel: { level: 2, name: 'finance' } })
  t.match(byStep.get(`${second.id}:2`), { step: 'rejected', level: 2, levelName: 'finance', by: 'finance', comment: null, nextLevel: null })
  t.equal(byStep.get(`${second.id}:2`)!.text, 'Budget \'team a\': the request for 901 USD more was rejected at level 2 (finance) by finance.')
  t.equal(byStep.size, 5, 'five steps, each once')
  t.equal(steps(g.custom).length, 5)
  const email = approvalStepEmail(byStep.get(`${second.id}:2`)!)
  t.equal(email.subject, 'Budget \'team a\': the request for 901 USD is rejected')
})

t.test('a policy changed after filing: the steps use the request\'s own policy; a rename and a removed channel do not stop delivery', async (t) => {
  const g = await setup(t)
  const request = (await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: '800' })).json()
  // the alert now names a three-level policy with other names, and only the hook
  const changed = { levels: [{ name: 'A', roles: ['editor'], upTo: '1' }, { name: 'B', roles: ['approver'], upTo: '2' }, { name: 'C', roles: ['admin'] }] }
  t.equal((await g.admin('PUT', `/${g.team.id}`, { alerts: [{ threshold: 50, actions: ['require-approval'], approvalPolicy: changed, notificationChannels: ['hook'] }] })).statusCode, 200)
  t.equal((await g.lead('POST', `/${g.team.id}/approval-requests/${request.id}/decisions`, { level: 1, verdict: 'approve', comment: 'fine' })).statusCode, 200)
  t.equal((await g.admin('PUT', `/${g.team.id}`, { name: 'team a renamed' })).statusCode, 200)
  await g.drain()
  t.same(steps(g.custom).map((e) => e.stepId), [`${request.id}:0`], 'the feed, removed from the alerts, got the filing queued before, not the decision queued after')
  const decided = g.hook.received.map((one) => one.body).find((e) => e.level === 1)!
  t.match(decided, { step: 'level-approved', levelName: 'team lead', nextLevel: { level: 2, name: 'finance' }, request: { levelsRequired: 2 } })
  t.equal(g.hook.received.length, 2)
  t.same(POLICY.levels.map((l) => l.name), ['team lead', 'finance'])
  t.equal(decided.budget.id, g.team.id)
  for (const row of await g.outbox()) t.equal(row.status, 'delivered')
})

t.test('a budget archived before delivery: its queued steps are delivered or settled, never wedge the loop', async (t) => {
  const g = await setup(t)
  const request = (await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: '10' })).json()
  t.equal((await g.admin('DELETE', `/${g.team.id}`)).statusCode < 300, true, 'archived')
  await g.drain()
  const rows = await g.outbox()
  t.same(rows.map((row) => row.status), ['delivered', 'delivered'])
  t.same(steps(g.custom).map((e) => e.stepId), [`${request.id}:0`])
})

t.test('amounts at money\'s edges are exact in the event, its text and its email', async (t) => {
  const g = await setup(t)
  for (const amount of ['0.0000000001', '123456789012345678.0000000001', '999999999999999999.9999999999']) {
    const response = await g.dev('POST', `/${g.team.id}/approval-requests`, { amount, reason: amount })
    t.equal(response.statusCode, 201, `filed ${amount}`)
    t.equal(response.json().amount, amount)
  }
  await g.drain()
  const events = steps(g.custom)
  t.same(events.map((e) => e.request.amount).sort(), ['0.0000000001', '123456789012345678.0000000001', '999999999999999999.9999999999'].sort())
  for (const event of events) {
    t.ok(event.text.includes(`${event.request.amount} USD more`), 'the text has the exact amount')
    t.ok(approvalStepEmail(event).subject.includes(`${event.request.amount} USD`), 'so does the email subject')
  }
  // the webhook's JSON carries the amount as a string, never a number
  for (const one of g.hook.received) t.match(one.raw, /"amount":"[0-9.]+"/)
})

t.test('hostile reasons and comments: unicode, newlines, 2000 characters, HTML and mrkdwn: delivered as written, the text Slack-escaped', async (t) => {
  const g = await setup(t)
  const texts = [
    'naïve café 🚀 𝕏 \u200b RTL \u202e txet',
    'line one\nline two\r\n.\r\nQUIT\r\n',
    'x'.repeat(2000),
    '<script>alert(1)</script> *bold* _it_ `code` &amp; "quotes" \'single\' \\ back',
    '\u0001\u0007\u001b[31m red \u007f \ud7ff \ue000 \ufffd'
  ]
  for (const reason of texts) {
    const filed = await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: '600', reason })
    t.equal(filed.statusCode, 201)
    const decided = await g.lead('POST', `/${g.team.id}/approval-requests/${filed.json().id}/decisions`, { level: 1, verdict: 'reject', comment: reason })
    t.equal(decided.statusCode, 200)
  }
  await g.drain()
  const events = steps(g.custom)
  t.equal(events.length, texts.length * 2)
  for (const reason of texts) {
    const filed = events.find((e) => e.step === 'requested' && e.request.reason === reason)
    t.ok(filed, 'the filing carries the reason as written')
    const rejected = events.find((e) => e.step === 'rejected' && e.comment === reason)
    t.ok(rejected, 'the rejection carries the comment as written')
    t.ok(rejected!.text.endsWith(`: ${slackEscaped(reason)}.`), 'the text shows it, Slack-escaped')
  }
  t.same(g.hook.received.map((one) => one.body), events, 'the webhook got exactly the same JSON')
  t.same(g.hook.received.map((one) => one.eventId), events.map((e) => e.stepId))
})

t.test('a reason or comment with a NUL: refused or stored, never a 5xx; nothing queued for a refusal; the loop goes on', async (t) => {
  const g = await setup(t)
  const filed = await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: '600', reason: 'before\u0000after' })
  t.ok(filed.statusCode < 500, `filing answered ${filed.statusCode}`)
  const plain = (await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: '600' })).json()
  const decided = await g.lead('POST', `/${g.team.id}/approval-requests/${plain.id}/decisions`, { level: 1, verdict: 'approve', comment: 'a\u0000b' })
  t.ok(decided.statusCode < 500, `deciding answered ${decided.statusCode}`)
  await g.drain()
  const levels = (await g.outbox()).filter((row) => row.status !== 'delivered')
  t.same(levels, [], 'everything queued was delivered')
})
