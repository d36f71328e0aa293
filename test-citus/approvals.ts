// Requests for approval on a distributed schema (`npm run test:citus`): the request and decision tables are
// distributed by tree with the budgets, and a two-level request is filed, decided under a lock on its tree's
// shard, and made an approval, for budgets of two organizations; each step is notified from its tree's shard.
import t from 'tap'
import { ADMIN_TOKEN, PREFIX } from '../test/fixtures/app.js'
import { distributedApp } from '../test/fixtures/citus-app.js'
import type { BudgetEvent } from '../lib/index.js'

const PRINCIPALS: Record<string, unknown> = {
  lead: { actor: 'lead', role: 'editor', scopes: [{ scopeType: 'team', scopeId: 'platform' }] },
  finance: { actor: 'finance', role: 'approver', scopes: null }
}

t.test('two levels on the cluster, in two trees: filed, decided, approved; the tables distributed with the budgets', async (t) => {
  const sent: BudgetEvent[] = []
  const { app, sql, createBudget } = await distributedApp(t, {
    notifications: { channels: { feed: { deliver: async (event) => { sent.push(event) } } }, intervalMs: 0 },
    authorize: (request) => {
      const token = /^Bearer (\S+)$/.exec(request.headers.authorization ?? '')?.[1] ?? ''
      return token === ADMIN_TOKEN ? 'admin' : (PRINCIPALS[token] ?? false) as never
    }
  })
  const as = (token: string) => async (method: 'GET' | 'POST', url: string, body?: Record<string, unknown>) =>
    await app.inject({ method, url: `${PREFIX}${url}`, headers: { authorization: `Bearer ${token}` }, ...(body === undefined ? {} : { body }) })
  const [admin, lead, finance] = [as(ADMIN_TOKEN), as('lead'), as('finance')]
  const policy = { levels: [{ name: 'team lead', roles: ['editor'], upTo: '5' }, { name: 'finance', roles: ['approver'] }] }
  const alerts = [{ threshold: 50, actions: ['require-approval'], approvalPolicy: policy, notificationChannels: ['feed'] }]
  const teams = []
  for (const org of ['acme', 'globex']) {
    const root = await createBudget({ name: org, scopeType: 'organization', scopeId: org, amount: '1000' })
    teams.push(await createBudget({ name: `${org} platform`, scopeType: 'team', scopeId: 'platform', parentId: root.id, amount: '10', alerts }))
  }
  t.not(teams[0]!.rootId, teams[1]!.rootId, 'two trees')
  const distributed = await sql<Array<{ name: string }>>`
    select logicalrelid::text as name from pg_dist_partition where logicalrelid::text in ('budget_approval_requests', 'budget_approval_decisions') and colocationid = (
      select colocationid from pg_dist_partition where logicalrelid = 'budget_definitions'::regclass) order by 1`
  t.same(distributed.map((row) => row.name), ['budget_approval_decisions', 'budget_approval_requests'], 'both tables distributed with the budgets')

  for (const team of teams) {
    const request = (await admin('POST', `/${team.id}/approval-requests`, { amount: '8', reason: 'launch' })).json()
    t.equal(request.levels.length, 2)
    const decide = `/${team.id}/approval-requests/${request.id}/decisions`
    const first = await lead('POST', decide, { level: 1, verdict: 'approve' })
    t.equal(first.json().nextLevel, 2, `the lead decides level 1 (${first.body})`)
    const done = (await finance('POST', decide, { level: 2, verdict: 'approve' })).json()
    t.equal(done.state, 'approved', 'finance level 2: approved')
    const [approval] = await sql<Array<{ amount: string, rootId: string }>>`select amount::text, root_id as "rootId" from budget_approvals where id = ${done.approvalId}`
    t.same(approval, { amount: '8.0000000000', rootId: team.rootId }, 'the approval, for 8, in the budget\'s tree')
  }
  t.same((await lead('GET', '/approval-requests?state=approved')).json().requests.length, 2, 'the lead\'s list reads both trees')

  // Each step was queued in its tree's shard, and is claimed and delivered from there.
  const [queued] = await sql<Array<{ n: number }>>`
    select count(*)::int as n from budget_notification_outbox o
    join budget_approval_requests r on r.root_id = o.root_id and r.id = o.approval_request_id`
  t.equal(queued!.n, 6, 'three steps a request, in the request\'s tree')
  t.same(await app.budgetNotifications.deliverDue(), { delivered: 6, failed: 0 })
  const steps = sent.filter((event) => event.type === 'budget.approval_step')
  t.same(steps.map((event) => `${event.budget.id} ${event.step}`).sort(),
    teams.flatMap((team) => ['approved', 'level-approved', 'requested'].map((step) => `${team.id} ${step}`)).sort(), 'each tree\'s three steps, once each')
})
