// Review of the approval steps' notifications (commit 24d5daa): exactly once per step and channel. Concurrent
// deciders of one level, two processes delivering at once, refused decisions, a database fault mid-decision.
import t from 'tap'
import Fastify from 'fastify'
import postgres from 'postgres'
import budgets, { type ApprovalStepEvent, type BudgetEvent } from '../lib/index.js'
import { snapshotTables } from './fixtures/app.js'
import { ADMIN_TOKEN } from './fixtures/app.js'
import { approvalsAuthorize, approvalsGateway } from './fixtures/approvals-gateway.js'

/** The tables' rows but the caches a read fills (the status cache, the forecast profiles): what a refusal must not write. */
async function snapshot (sql: Parameters<typeof snapshotTables>[0]) {
  const all = await snapshotTables(sql) as Record<string, string[]>
  delete all.budget_status_cache
  delete all.budget_forecast_profiles
  return all
}

const steps = (events: BudgetEvent[]) => events.filter((event): event is ApprovalStepEvent => event.type === 'budget.approval_step')

async function counts (sql: Awaited<ReturnType<typeof approvalsGateway>>['sql'], requestId: string) {
  return await sql<Array<{ level: number, channel: string, n: number }>>`
    select approval_level as level, channel, count(*)::int as n from budget_notification_outbox
    where approval_request_id = ${requestId} group by 1, 2 order by 1, 2`
}

t.test('concurrent deciders of one level: one wins, the loser queues nothing', async (t) => {
  const feed: BudgetEvent[] = []
  const g = await approvalsGateway(t, { notifications: { channels: { a: { deliver: async (event) => { feed.push(event) } }, b: { type: 'log' } } } }, ['a', 'b'])
  const ids: string[] = []
  for (let i = 0; i < 4; i++) ids.push((await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: '800' })).json().id)
  for (const id of ids) {
    const decide = `/${g.team.id}/approval-requests/${id}/decisions`
    const one = await Promise.all([g.lead('POST', decide, { level: 1, verdict: 'approve' }), g.lead2('POST', decide, { level: 1, verdict: 'reject' })])
    t.same(one.map((r) => r.statusCode).sort(), [200, 409], 'level 1: one decision, one 409')
    if (one.some((r) => r.statusCode === 200 && r.json().state === 'pending')) {
      const two = await Promise.all([g.finance('POST', decide, { level: 2, verdict: 'approve' }), g.finance2('POST', decide, { level: 2, verdict: 'approve' }), g.admin('POST', decide, { level: 2, verdict: 'reject' })])
      t.same(two.map((r) => r.statusCode).sort(), [200, 409, 409], 'level 2: one decision, two 409s')
    }
  }
  for (const id of ids) {
    const rows = await counts(g.sql, id)
    t.ok(rows.every((row) => row.n === 1), 'one row per step and channel')
    const [decisions] = await g.sql<Array<{ n: number }>>`select count(*)::int as n from budget_approval_decisions where request_id = ${id}`
    t.equal(rows.length, (decisions!.n + 1) * 2, 'a row per channel for the filing and for each decision made')
  }
  for (let round = 0; round < 5; round++) await g.app.budgetNotifications.deliverDue()
  const events = steps(feed)
  t.equal(new Set(events.map((e) => e.stepId)).size, events.length, 'each step delivered once to the custom channel')
  // each delivered decision step names its real decider
  for (const event of events.filter((e) => e.level > 0)) {
    const [decision] = await g.sql<Array<{ by: string, verdict: string }>>`select decided_by as by, verdict from budget_approval_decisions where request_id = ${event.request.id} and level = ${event.level}`
    t.equal(event.by, decision!.by)
    t.equal(event.step === 'rejected', decision!.verdict === 'reject')
  }
})

t.test('refused decisions queue nothing: wrong level, closed, expired, not an approver, out of scope, the filer, two levels by one', async (t) => {
  const g = await approvalsGateway(t, { notifications: { channels: { a: { type: 'log' } } } }, ['a'])
  const decideOf = (id: string, budget = g.team.id) => `/${budget}/approval-requests/${id}/decisions`
  const open = (await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: '800' })).json()
  const byLead = (await g.lead('POST', `/${g.team.id}/approval-requests`, { amount: '800' })).json()
  const closed = (await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: '10' })).json()
  t.equal((await g.lead('POST', decideOf(closed.id), { level: 1, verdict: 'reject' })).statusCode, 200)
  const soon = new Date(Date.now() + 2500).toISOString()
  const expiring = (await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: '10', expiresAt: soon })).json()
  t.equal((await g.lead('POST', decideOf(open.id), { level: 1, verdict: 'approve' })).statusCode, 200)
  await new Promise((resolve) => setTimeout(resolve, 3000))

  const before = await snapshot(g.sql)
  const refusals: Array<[string, Promise<{ statusCode: number }>]> = [
    ['wrong level', g.finance('POST', decideOf(open.id), { level: 3, verdict: 'approve' })],
    ['decided level', g.lead2('POST', decideOf(open.id), { level: 1, verdict: 'approve' })],
    ['two levels by one', g.lead('POST', decideOf(open.id), { level: 2, verdict: 'approve' })],
    ['not an approver', g.dev('POST', decideOf(open.id), { level: 2, verdict: 'approve' })],
    ['not an approver (lead at level 2)', g.lead2('POST', decideOf(open.id), { level: 2, verdict: 'approve' })],
    ['out of scope', g.otherLead('POST', decideOf(byLead.id), { level: 1, verdict: 'approve' })],
    ['filer', g.lead('POST', decideOf(byLead.id), { level: 1, verdict: 'approve' })],
    ['closed', g.finance('POST', decideOf(closed.id), { level: 2, verdict: 'approve' })],
    ['closed, level 1', g.lead2('POST', decideOf(closed.id), { level: 1, verdict: 'approve' })],
    ['expired', g.lead('POST', decideOf(expiring.id), { level: 1, verdict: 'approve' })],
    ['wrong budget', g.lead('POST', decideOf(open.id, g.teamB.id), { level: 2, verdict: 'approve' })]
  ]
  for (const [name, answer] of refusals) {
    const { statusCode } = await answer
    t.ok(statusCode >= 400 && statusCode < 500, `${name}: ${statusCode}`)
  }
  t.same(await snapshot(g.sql), before, 'nothing changed, nothing queued')
})

t.test('a database fault mid-decision rolls the step\'s outbox rows back with the decision', async (t) => {
  const g = await approvalsGateway(t, { notifications: { channels: { a: { type: 'log' }, b: { type: 'log' } } } }, ['a', 'b'])
  const request = (await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: '800' })).json()
  const decide = `/${g.team.id}/approval-requests/${request.id}/decisions`
  t.equal((await g.lead('POST', decide, { level: 1, verdict: 'approve' })).statusCode, 200)
  // the approval the last level makes fails: the decision, its audit and its outbox rows roll back
  await g.sql.unsafe(`create function review_fail() returns trigger language plpgsql as $$ begin raise exception 'review fault'; end $$`)
  await g.sql.unsafe('create trigger review_fail before insert on budget_approvals for each row execute function review_fail()')
  const before = await snapshot(g.sql)
  const failed = await g.finance('POST', decide, { level: 2, verdict: 'approve' })
  t.equal(failed.statusCode, 500, 'the fault')
  t.same(await snapshot(g.sql), before, 'nothing written: no decision, no outbox row')
  await g.sql.unsafe('drop trigger review_fail on budget_approvals')
  // the outbox row itself fails for one channel: the decision rolls back
  await g.sql.unsafe(`create trigger review_fail before insert on budget_notification_outbox for each row when (new.channel = 'b' and new.approval_level = 2) execute function review_fail()`)
  t.equal((await g.finance('POST', decide, { level: 2, verdict: 'approve' })).statusCode, 500)
  t.same(await snapshot(g.sql), before, 'nothing written either')
  await g.sql.unsafe('drop trigger review_fail on budget_notification_outbox')
  t.equal((await g.finance('POST', decide, { level: 2, verdict: 'approve' })).statusCode, 200)
  t.same((await counts(g.sql, request.id)).map((row) => `${row.level} ${row.channel} ${row.n}`), ['0 a 1', '0 b 1', '1 a 1', '1 b 1', '2 a 1', '2 b 1'])
})

t.test('two processes delivering at once send each step to each channel once', async (t) => {
  const hookReceived: string[] = []
  const hook = Fastify()
  hook.post('/hook', async (request) => {
    await new Promise((resolve) => setTimeout(resolve, 5))
    hookReceived.push(String(request.headers['x-budget-event-id']))
    return { ok: true }
  })
  const hookUrl = `${await hook.listen({ port: 0, host: '127.0.0.1' })}/hook`
  t.teardown(async () => await hook.close())
  const feed: BudgetEvent[] = []
  const channels = { hook: { type: 'webhook' as const, url: hookUrl }, feed: { deliver: async (event: BudgetEvent) => { feed.push(event) } } }
  const g = await approvalsGateway(t, { notifications: { channels } }, ['hook', 'feed'])
  const sql2 = postgres(g.url, { max: 5, onnotice: () => {} })
  const second = Fastify()
  await second.register(budgets, { database: sql2, adminToken: ADMIN_TOKEN, authorize: approvalsAuthorize, notifications: { intervalMs: 0, channels } })
  await second.ready()
  t.teardown(async () => { await second.close(); await sql2.end({ timeout: 1 }) })

  const ids: string[] = []
  for (let i = 0; i < 6; i++) {
    const id = (await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: String(600 + i) })).json().id
    ids.push(id)
    await g.lead('POST', `/${g.team.id}/approval-requests/${id}/decisions`, { level: 1, verdict: 'approve' })
    await g.finance('POST', `/${g.team.id}/approval-requests/${id}/decisions`, { level: 2, verdict: i % 2 === 0 ? 'approve' : 'reject' })
  }
  const [queued] = await g.sql<Array<{ n: number }>>`select count(*)::int as n from budget_notification_outbox where approval_request_id is not null`
  t.equal(queued!.n, 6 * 3 * 2)
  for (let round = 0; round < 20; round++) {
    await Promise.all([g.app.budgetNotifications.deliverDue(4), second.budgetNotifications.deliverDue(4), g.app.budgetNotifications.deliverDue(3)])
    const [left] = await g.sql<Array<{ n: number }>>`select count(*)::int as n from budget_notification_outbox where status <> 'delivered'`
    if (left!.n === 0) break
  }
  t.equal(hookReceived.length, 18, 'the webhook: 18 steps')
  t.equal(new Set(hookReceived).size, 18, 'each once')
  t.equal(steps(feed).length, 18)
  t.equal(new Set(steps(feed).map((e) => e.stepId)).size, 18)
  const rows = await g.sql<Array<{ status: string, attempts: number, claim: string | null }>>`select status, attempts, claim_id as claim from budget_notification_outbox`
  t.ok(rows.every((row) => row.status === 'delivered' && row.attempts === 1 && row.claim === null), 'every row delivered at its first attempt, unclaimed')
})
