// Requests for approval, decided level by level (docs/approvals.md): a caller refused by require-approval files
// a request; a team lead decides up to 500, finance above that; the last level needed makes the approval, and
// the refused call goes through. No level is skipped, nobody decides their own request or two levels of one, a
// closed or expired request takes no decision, and every step is audited.
import t from 'tap'
import type { LightMyRequestResponse } from 'fastify'
import { PREFIX, snapshotTables } from './fixtures/app.js'
import { spendTo } from './fixtures/gateway.js'
import { approvalsGateway, POLICY } from './fixtures/approvals-gateway.js'

const setup = approvalsGateway

const code = (response: LightMyRequestResponse) => `${response.statusCode} ${response.json().code as string}`

t.test('two levels: a request of 800 needs the team lead and finance; then the call refused by require-approval goes through', async (t) => {
  const { team, dev, lead, finance, otherLead, admin, app, call, sql } = await setup(t)
  await spendTo(app, team.id, '600')
  const refused = await call({ team: 'team-a' })
  t.equal(refused.statusCode, 402)
  t.equal(refused.json().error.code, 'approval_required')
  t.same(refused.json().error.approval, { method: 'POST', path: `${PREFIX}/${team.id}/approval-requests` }, 'the refusal says where to ask')

  const filed = await dev('POST', `/${team.id}/approval-requests`, { amount: '800', reason: 'launch week' })
  t.equal(filed.statusCode, 201)
  const request = filed.json()
  t.match(request, { budgetId: team.id, amount: '800', reason: 'launch week', requestedBy: 'dev-alice', state: 'pending', nextLevel: 1, mayDecide: false, approvalId: null })
  t.same(request.levels.map((level: { name: string }) => level.name), ['team lead', 'finance'], 'above the lead\'s 500: both levels')
  const decide = `/${team.id}/approval-requests/${request.id}/decisions`

  t.same((await lead('GET', '/approval-requests?decidable=true')).json().requests.map((r: { id: string }) => r.id), [request.id], 'the lead\'s queue holds it')
  t.same((await finance('GET', '/approval-requests?decidable=true')).json().requests, [], 'not finance\'s yet: level 1 first')
  t.equal(code(await finance('POST', decide, { level: 2, verdict: 'approve' })), '409 BUDGET_ERR_APPROVAL_LEVEL', 'finance cannot skip the lead')
  t.equal(code(await finance('POST', decide, { level: 1, verdict: 'approve' })), '403 BUDGET_ERR_NOT_AN_APPROVER', 'nor decide the lead\'s level')
  t.equal(code(await otherLead('POST', decide, { level: 1, verdict: 'approve' })), '403 BUDGET_ERR_OUT_OF_SCOPE', 'another team\'s lead: outside its area')
  t.equal(code(await dev('POST', decide, { level: 1, verdict: 'approve' })), '403 BUDGET_ERR_NOT_AN_APPROVER', 'the requester decides nothing')

  const first = await lead('POST', decide, { level: 1, verdict: 'approve', comment: 'ok for the launch' })
  t.equal(first.statusCode, 200)
  t.match(first.json(), { state: 'pending', nextLevel: 2, mayDecide: false, levels: [{ level: 1, decidedBy: 'lead-a', verdict: 'approve', comment: 'ok for the launch' }, { level: 2, decidedBy: null }] })
  t.equal(code(await lead('POST', decide, { level: 1, verdict: 'approve' })), '409 BUDGET_ERR_APPROVAL_LEVEL', 'level 1 is not decided twice')
  t.equal((await call({ team: 'team-a' })).statusCode, 402, 'one level of two: still refused')
  t.same((await finance('GET', '/approval-requests?decidable=true')).json().requests.map((r: { id: string }) => r.id), [request.id], 'now finance\'s queue holds it')

  const second = await finance('POST', decide, { level: 2, verdict: 'approve', comment: 'budgeted' })
  t.equal(second.statusCode, 200)
  t.match(second.json(), { state: 'approved', nextLevel: null, approvalId: String })
  const approvals = (await admin('GET', `/${team.id}/approvals`)).json().approvals
  t.equal(approvals.length, 1)
  t.match(approvals[0], { id: second.json().approvalId, amount: '800', approvedBy: 'lead-a, finance', reason: 'launch week' })
  t.equal(code(await admin('POST', decide, { level: 2, verdict: 'reject' })), '409 BUDGET_ERR_APPROVAL_REQUEST_CLOSED', 'an approved request takes no more decisions')

  t.equal((await call({ team: 'team-a' })).statusCode, 200, 'the call goes through now')
  const audit = await sql<Array<{ action: string, actor: string }>>`select action, actor from budget_audit_log where budget_id = ${team.id} and action in ('request-approval', 'decide-approval', 'approve') order by id`
  t.same(audit.map((entry) => `${entry.action} ${entry.actor}`), ['request-approval dev-alice', 'decide-approval lead-a', 'decide-approval finance', 'approve lead-a, finance'], 'each step audited')
})

t.test('one level for a request within the lead\'s upTo; a rejection closes a request; nobody decides their own or two levels of one', async (t) => {
  const { team, lead, finance, admin, sql } = await setup(t)
  const small = (await lead('POST', `/${team.id}/approval-requests`, { amount: '500' })).json()
  t.same(small.levels.map((level: { name: string }) => level.name), ['team lead'], '500 is within the lead\'s upTo: one level')
  t.equal(code(await lead('POST', `/${team.id}/approval-requests/${small.id}/decisions`, { level: 1, verdict: 'approve' })), '403 BUDGET_ERR_NOT_AN_APPROVER', 'the lead filed it: another decides')

  const big = (await finance('POST', `/${team.id}/approval-requests`, { amount: '501' })).json()
  t.equal(big.levels.length, 2, '501: both levels')
  const rejected = await lead('POST', `/${team.id}/approval-requests/${big.id}/decisions`, { level: 1, verdict: 'reject', comment: 'not this month' })
  t.match(rejected.json(), { state: 'rejected', nextLevel: null, approvalId: null })
  t.equal(code(await admin('POST', `/${team.id}/approval-requests/${big.id}/decisions`, { level: 2, verdict: 'approve' })), '409 BUDGET_ERR_APPROVAL_REQUEST_CLOSED')

  // The admin is named by both levels' roles when the policy says so; it still decides only one of a request.
  const both = (await lead('POST', `/${team.id}/approval-requests`, { amount: '900' })).json()
  const editorAdmin = { level: 1, verdict: 'approve' }
  t.equal(code(await admin('POST', `/${team.id}/approval-requests/${both.id}/decisions`, editorAdmin)), '403 BUDGET_ERR_NOT_AN_APPROVER', 'the admin is not named by level 1 (editors)')
  t.same((await sql`select count(*)::int as n from budget_approvals`)[0]!.n, 0, 'no approval made')
})

t.test('a request expires with its approval\'s end: past it, no decision; and the policy is checked when the budget is written', async (t) => {
  const { team, dev, lead, admin, sql } = await setup(t)
  const soon = new Date(Date.now() + 1500).toISOString()
  const request = (await dev('POST', `/${team.id}/approval-requests`, { amount: '10', expiresAt: soon })).json()
  t.equal(request.expiresAt, soon, 'it waits no longer than the approval it asks for would last')
  await new Promise((resolve) => setTimeout(resolve, 1600))
  t.equal(code(await lead('POST', `/${team.id}/approval-requests/${request.id}/decisions`, { level: 1, verdict: 'approve' })), '409 BUDGET_ERR_APPROVAL_REQUEST_CLOSED')
  t.same((await lead('GET', '/approval-requests?state=expired')).json().requests.map((r: { id: string, state: string }) => `${r.id} ${r.state}`), [`${request.id} expired`])

  const before = await snapshotTables(sql)
  const bad: Array<[unknown, string]> = [
    [{ threshold: 80, actions: ['notify'], approvalPolicy: POLICY }, 'alerts.0.approvalPolicy'],
    [{ threshold: 80, actions: ['require-approval'], approvalPolicy: { levels: [{ name: 'a', roles: ['editor'], upTo: '5' }] } }, 'alerts.0.approvalPolicy.levels.0.upTo'],
    [{ threshold: 80, actions: ['require-approval'], approvalPolicy: { levels: [{ name: 'a', roles: ['editor'] }, { name: 'b', roles: ['admin'] }] } }, 'alerts.0.approvalPolicy.levels.0.upTo'],
    [{ threshold: 80, actions: ['require-approval'], approvalPolicy: { levels: [{ name: 'a', roles: ['editor'], upTo: '5' }, { name: 'b', roles: ['admin'], upTo: '5' }, { name: 'c', actors: ['x'] }] } }, 'alerts.0.approvalPolicy.levels.1.upTo'],
    [{ threshold: 80, actions: ['require-approval'], approvalPolicy: { levels: [{ name: 'a' }] } }, 'alerts.0.approvalPolicy.levels.0'],
    [{ threshold: 80, actions: ['require-approval'], approvalPolicy: { levels: [{ name: 'a', roles: ['root'] }] } }, 'alerts.0.approvalPolicy.levels.0.roles.0']
  ]
  for (const [alert, field] of bad) {
    const response = await admin('POST', '', { name: 'x', scopeType: 'team', scopeId: 'x', amount: '10', currency: 'USD', period: 'monthly', startDate: '2024-01-01', alerts: [alert] })
    t.equal(response.statusCode, 400, JSON.stringify(alert))
    t.equal(response.json().field, field, response.json().message)
  }
  const twice = await admin('POST', '', { name: 'x', scopeType: 'team', scopeId: 'x', amount: '10', currency: 'USD', period: 'monthly', startDate: '2024-01-01',
    alerts: [{ threshold: 80, actions: ['require-approval'], approvalPolicy: POLICY }, { threshold: 90, actions: ['require-approval'], approvalPolicy: POLICY }] })
  t.equal(twice.json().field, 'alerts', 'one policy a budget')
  t.same(await snapshotTables(sql), before, 'the refusals changed nothing')
})
