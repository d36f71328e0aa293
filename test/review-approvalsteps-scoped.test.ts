// Review of the approval steps' notifications (commit 24d5daa): a scoped principal's reads. With steps of both
// teams queued and delivered (some failed), team b's lead reads alerts, audit, requests and metrics: nothing of
// team a's request, its steps or its deliveries shows.
import t from 'tap'
import { spendTo } from './fixtures/gateway.js'
import { approvalsGateway } from './fixtures/approvals-gateway.js'

t.test('team b\'s lead reads nothing of team a\'s approval steps', async (t) => {
  const g = await approvalsGateway(t, {
    notifications: { channels: { ok: { type: 'log' }, bad: { deliver: async (event) => { throw new Error(`failure of ${'budget' in event ? event.budget.name : '?'}`) } } }, backoffMs: 1, maxAttempts: 1 }
  }, ['ok', 'bad'])
  await spendTo(g.app, g.team.id, '600')
  await spendTo(g.app, g.teamB.id, '600')
  const secretReason = 'team-a-secret-reason'
  const mine = (await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: '800', reason: secretReason })).json()
  t.equal((await g.lead('POST', `/${g.team.id}/approval-requests/${mine.id}/decisions`, { level: 1, verdict: 'approve', comment: 'team-a-secret-comment' })).statusCode, 200)
  const theirs = (await g.otherLead('POST', `/${g.teamB.id}/approval-requests`, { amount: '10', reason: 'team b' })).json()
  for (let round = 0; round < 3; round++) await g.app.budgetNotifications.deliverDue()

  const reads = ['/alerts', '/alerts?limit=200', '/audit', '/audit?limit=200', '/approval-requests', '/approval-requests?state=approved',
    '/approval-requests?decidable=true', `/approval-requests?budgetId=${g.team.id}`, '/', '/metrics', '/decisions', `/${g.teamB.id}/alerts`, `/${g.teamB.id}/audit`]
  for (const url of reads) {
    const response = await g.otherLead('GET', url)
    t.ok(response.statusCode < 500, `${url}: ${response.statusCode}`)
    if (response.statusCode !== 200) continue
    for (const secret of [g.team.id, mine.id, secretReason, 'team-a-secret-comment', 'failure of team a']) {
      t.notOk(response.body.includes(secret), `${url} does not show ${secret === g.team.id ? 'team a\'s id' : secret}`)
    }
  }
  for (const url of [`/${g.team.id}/alerts`, `/${g.team.id}/audit`, `/${g.team.id}/approvals`]) {
    const response = await g.otherLead('GET', url)
    t.ok([403, 404].includes(response.statusCode), `${url} is refused: ${response.statusCode}`)
  }
  // team b's own: its request shows; its crossing's deliveries are the crossing's alone (no step row among them)
  const own = (await g.otherLead('GET', '/approval-requests')).json()
  t.same(own.requests.map((r: { id: string }) => r.id), [theirs.id])
  const alerts = (await g.otherLead('GET', `/${g.teamB.id}/alerts`)).json().alerts
  t.equal(alerts.length, 1)
  t.same(alerts[0].deliveries.map((d: { channel: string }) => d.channel), ['bad', 'ok'], 'the crossing\'s two deliveries, no step\'s')
})
