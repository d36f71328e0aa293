// Review (approvals): amounts at the edges, upTo boundaries, the approval made, and a request outliving its period.
import t from 'tap'
import type { LightMyRequestResponse } from 'fastify'
import { snapshotTables } from './fixtures/app.js'
import { spendTo } from './fixtures/gateway.js'
import { approvalsGateway } from './fixtures/approvals-gateway.js'

const setup = approvalsGateway

const code = (response: LightMyRequestResponse) => `${response.statusCode} ${response.statusCode < 300 ? '' : response.json().code as string}`

t.test('held: upTo boundaries, 10 decimals, and amounts refused with a 400 that changes nothing', async (t) => {
  const { team, dev, sql } = await setup(t)
  const levels = async (amount: unknown) => {
    const response = await dev('POST', `/${team.id}/approval-requests`, { amount })
    return response.statusCode === 201 ? response.json().levels.length : code(response)
  }
  t.equal(await levels('500'), 1, 'exactly upTo: one level')
  t.equal(await levels('500.0000000000'), 1)
  t.equal(await levels(500), 1, 'a JSON number')
  t.equal(await levels('500.0000000001'), 2, 'upTo + 10^-10: two levels')
  t.equal(await levels('0.0000000001'), 1)
  t.equal(await levels('999999999999999999.9999999999'), 2, 'the largest numeric(28,10)')
  const filed = (await dev('POST', `/${team.id}/approval-requests`, { amount: '123.4567890123' })).json()
  t.equal(filed.amount, '123.4567890123', 'exact')
  const before = await snapshotTables(sql)
  for (const amount of ['1000000000000000000', '1e3', '-1', '0', '0.00000000001', '500.00000000001', '', 'NaN', 'Infinity', 1e300, -0, 0, '0x10', '1_000', true, null, [], {}]) {
    const response = await dev('POST', `/${team.id}/approval-requests`, { amount })
    t.equal(response.statusCode, 400, `${JSON.stringify(amount)}: ${response.body.slice(0, 120)}`)
  }
  t.same(await snapshotTables(sql), before, 'nothing filed')
})

t.test('held: the approval made is the request\'s amount from the spend then, and lets that much through', async (t) => {
  const { app, team, dev, lead, finance, call, sql, settled } = await setup(t)
  await spendTo(app, team.id, '600')
  t.equal((await call({ team: 'team-a' })).statusCode, 402)
  const request = (await dev('POST', `/${team.id}/approval-requests`, { amount: '0.0000000001', reason: 'a sliver' })).json()
  const decided = await lead('POST', `/${team.id}/approval-requests/${request.id}/decisions`, { level: 1, verdict: 'approve' })
  t.equal(decided.json().state, 'approved')
  const [approval] = await sql<Array<{ amount: string, spent: string, expiresAt: Date, approvedBy: string }>>`
    select amount::text as amount, spent_at_approval::text as spent, expires_at as "expiresAt", approved_by as "approvedBy" from budget_approvals`
  t.match(approval, { amount: '0.0000000001', approvedBy: 'lead-a' })
  t.equal(Number(approval!.amount), 1e-10)
  t.equal(Number(approval!.spent), 600)
  t.ok(approval!.expiresAt.getTime() - Date.now() <= 3_600_000 && approval!.expiresAt.getTime() > Date.now(), 'an hour at most')
  // a sliver of approval lets no call through that costs more than it
  t.equal((await call({ team: 'team-a' })).statusCode, 402, 'a call costs more than 10^-10')
  await settled()
  t.ok(finance !== undefined)
})

t.test('a request never waits past its period: the approval it asks for ends with it', async (t) => {
  const { createBudget, dev, lead, status, sql } = await setup(t)
  // daily windows stepping from startDate's time: the current one ends in 4 s
  const start = new Date(Date.now() - 86_400_000 + 4000)
  const budget = await createBudget({ name: 'short', scopeId: 'team-a', amount: '100', period: 'daily', periodAlignment: 'start', startDate: start.toISOString(),
    alerts: [{ threshold: 50, actions: ['require-approval'], approvalPolicy: { levels: [{ name: 'lead', roles: ['editor'] }] } }] })
  const periodEnd = new Date((await status(budget.id)).periodEnd)
  t.ok(periodEnd.getTime() - Date.now() < 5000, `the window ends soon: ${periodEnd.toISOString()}`)
  const request = (await dev('POST', `/${budget.id}/approval-requests`, { amount: '10', reason: 'for today' })).json()
  t.ok(new Date(request.expiresAt) <= periodEnd, `the request waits no longer than its approval could last (the period's end ${periodEnd.toISOString()}); it expires ${request.expiresAt as string}`)
  await new Promise((resolve) => setTimeout(resolve, periodEnd.getTime() - Date.now() + 500))
  const before = await snapshotTables(sql)
  const late = await lead('POST', `/${budget.id}/approval-requests/${request.id}/decisions`, { level: 1, verdict: 'approve' })
  t.equal(code(late), '409 BUDGET_ERR_APPROVAL_REQUEST_CLOSED', `decided in the next period: ${late.body.slice(0, 200)}`)
  const approvals = await sql<Array<{ periodStart: Date }>>`select period_start as "periodStart" from budget_approvals where budget_id = ${budget.id}`
  t.same(approvals.map((one) => one.periodStart.toISOString()), [], 'no approval made for a period the request was not filed in')
  if (late.statusCode !== 200) t.same(await snapshotTables(sql), before)
})
