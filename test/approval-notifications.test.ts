// Each step of a request for approval is notified through the channels its budget's alerts name
// (docs/approvals.md#notifications): the filing, each level's decision, the last approval, a rejection. Sent
// through the outbox as a crossing is: a real webhook receiver gets the JSON with its event id, a custom channel
// the same events; a failed delivery is retried and a step is sent once per channel; a failed step sends nothing.
import t from 'tap'
import Fastify from 'fastify'
import type { ApprovalStepEvent, BudgetEvent } from '../lib/index.js'
import { approvalStepEmail } from '../lib/alerts/notifications.js'
import { snapshotTables } from './fixtures/app.js'
import { spendTo } from './fixtures/gateway.js'
import { approvalsGateway } from './fixtures/approvals-gateway.js'

/** A webhook endpoint in the test: what it received, with the event id header; it answers 500 while `failing`. */
async function webhookReceiver (t: { teardown: (fn: () => unknown) => void }) {
  const received: Array<{ eventId: string, body: ApprovalStepEvent }> = []
  const state = { failing: false }
  const server = Fastify()
  server.post('/hook', async (request, reply) => {
    if (state.failing) return await reply.code(500).send({ error: 'down' })
    received.push({ eventId: String(request.headers['x-budget-event-id']), body: request.body as ApprovalStepEvent })
    return { ok: true }
  })
  const url = `${await server.listen({ port: 0, host: '127.0.0.1' })}/hook`
  t.teardown(async () => await server.close())
  return { url, received, state }
}

const steps = (events: BudgetEvent[]) => events.filter((event): event is ApprovalStepEvent => event.type === 'budget.approval_step')

t.test('a two-level request: its filing, the lead\'s approval and finance\'s go to the budget\'s channels, each once, in the words of each step', async (t) => {
  const hook = await webhookReceiver(t)
  const custom: BudgetEvent[] = []
  const gateway = await approvalsGateway(t, {
    notifications: { channels: { 'team-hook': { type: 'webhook', url: hook.url }, 'finance-feed': { deliver: async (event) => { custom.push(event) } } }, backoffMs: 1 }
  }, ['team-hook', 'finance-feed'])
  const { team, dev, lead, finance, app } = gateway
  await spendTo(app, team.id, '600')
  t.same(await app.budgetNotifications.deliverDue(), { delivered: 2, failed: 0 }, 'the crossing of 50%, through both channels')
  hook.received.length = 0
  custom.length = 0

  const request = (await dev('POST', `/${team.id}/approval-requests`, { amount: '800.25', reason: 'launch week' })).json()
  t.same(await app.budgetNotifications.deliverDue(), { delivered: 2, failed: 0 }, 'the filing, through both channels')
  const decide = `/${team.id}/approval-requests/${request.id}/decisions`
  t.equal((await lead('POST', decide, { level: 1, verdict: 'approve', comment: 'ok for the launch' })).statusCode, 200)
  // the webhook is down for the lead's step: retried, then delivered once
  hook.state.failing = true
  t.same(await app.budgetNotifications.deliverDue(), { delivered: 1, failed: 1 }, 'the custom channel has it; the webhook failed')
  hook.state.failing = false
  await new Promise((resolve) => setTimeout(resolve, 20)) // past the 1 ms backoff
  t.same(await app.budgetNotifications.deliverDue(), { delivered: 1, failed: 0 }, 'the webhook has it on the retry')
  t.equal((await finance('POST', decide, { level: 2, verdict: 'approve', comment: 'budgeted' })).statusCode, 200)
  t.same(await app.budgetNotifications.deliverDue(), { delivered: 2, failed: 0 })
  t.same(await app.budgetNotifications.deliverDue(), { delivered: 0, failed: 0 }, 'nothing left to send')

  const hooked = hook.received.map((one) => one.body)
  t.same(hooked.map((event) => `${event.step} ${event.level} ${event.by}`), ['requested 0 dev-alice', 'level-approved 1 lead-a', 'approved 2 finance'], 'the webhook: each step once, in order')
  t.same(hook.received.map((one) => one.eventId), hooked.map((event) => event.stepId), 'the event id header is the step\'s id')
  t.same(hooked.map((event) => event.stepId), [`${request.id}:0`, `${request.id}:1`, `${request.id}:2`])
  t.same(steps(custom), hooked, 'the custom channel got the same events')

  const [filed, levelOne, last] = hooked
  t.match(filed, {
    type: 'budget.approval_step',
    budget: { id: team.id, name: 'team a', currency: 'USD', scopeType: 'team', scopeId: 'team-a' },
    request: { id: request.id, amount: '800.25', reason: 'launch week', requestedBy: 'dev-alice', levelsRequired: 2, expiresAt: request.expiresAt },
    levelName: null,
    comment: null,
    at: request.createdAt,
    nextLevel: { level: 1, name: 'team lead' }
  })
  t.equal(filed!.text, 'Budget \'team a\': dev-alice asks approval of 800.25 USD more (launch week); level 1 (team lead) decides first, 2 levels in all.')
  t.match(levelOne, { levelName: 'team lead', comment: 'ok for the launch', nextLevel: { level: 2, name: 'finance' } })
  t.equal(levelOne!.text, 'Budget \'team a\': the request for 800.25 USD more was approved at level 1 (team lead) by lead-a; level 2 (finance) decides next.')
  t.match(last, { levelName: 'finance', comment: 'budgeted', nextLevel: null })
  t.equal(last!.text, 'Budget \'team a\': the request for 800.25 USD more was approved at level 2 (finance) by finance, its last level: the approval is in force.')

  const email = approvalStepEmail(last!, 'https://gateway.example/budgets/ui')
  t.equal(email.subject, 'Budget \'team a\': the request for 800.25 USD is approved')
  t.match(email.text, /Comment: budgeted/)
  t.match(email.text, /Dashboard: https:\/\/gateway\.example\/budgets\/ui/)
  t.notMatch(email.text, /Next:/, 'a closed request names no next level')
})

t.test('a rejection is sent with its comment; a budget whose alerts name no channel sends nothing; a refused decision queues nothing', async (t) => {
  const custom: BudgetEvent[] = []
  const gateway = await approvalsGateway(t, { notifications: { channels: { feed: { deliver: async (event) => { custom.push(event) } } } } }, ['feed'])
  const { team, teamB, lead, finance, admin, app, sql } = gateway
  const request = (await finance('POST', `/${team.id}/approval-requests`, { amount: '501' })).json()
  const decide = `/${team.id}/approval-requests/${request.id}/decisions`
  t.equal((await lead('POST', decide, { level: 1, verdict: 'reject', comment: 'not this month' })).statusCode, 200)
  await app.budgetNotifications.deliverDue()
  t.same(steps(custom).map((event) => event.text), [
    'Budget \'team a\': finance asks approval of 501 USD more; level 1 (team lead) decides first, 2 levels in all.',
    'Budget \'team a\': the request for 501 USD more was rejected at level 1 (team lead) by lead-a: not this month.'
  ])
  t.match(steps(custom)[1], { step: 'rejected', nextLevel: null, comment: 'not this month' })

  // Refused decisions (closed request, wrong level, the filer) write nothing: no outbox row either.
  const before = await snapshotTables(sql)
  t.equal((await admin('POST', decide, { level: 2, verdict: 'approve' })).statusCode, 409)
  t.equal((await finance('POST', decide, { level: 1, verdict: 'approve' })).statusCode, 409)
  t.same(await snapshotTables(sql), before, 'nothing changed, nothing queued')

  // Team b's alerts name no channel now: its request is filed and decided, and nothing is queued for it.
  t.equal((await admin('PUT', `/${teamB.id}`, { alerts: [{ threshold: 50, actions: ['require-approval'] }] })).statusCode, 200)
  t.equal((await admin('POST', `/${teamB.id}/approval-requests`, { amount: '5' })).statusCode, 201)
  const [queued] = await sql<Array<{ n: number }>>`select count(*)::int as n from budget_notification_outbox o join budget_approval_requests r on r.root_id = o.root_id and r.id = o.approval_request_id where r.budget_id = ${teamB.id}`
  t.equal(queued!.n, 0, 'no channel, no row')
})
