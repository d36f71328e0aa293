// Review of the approval steps' notifications (commit 24d5daa): the loop's order. A flood of approval steps
// does not hold a crossing back (crossings are claimed first), nor a digest past the flood.
import t from 'tap'
import type { BudgetEvent } from '../lib/index.js'
import { spendTo } from './fixtures/gateway.js'
import { approvalsGateway } from './fixtures/approvals-gateway.js'

t.test('a flood of steps: the crossing queued after them goes first; the digest goes once the flood is through', async (t) => {
  const order: string[] = []
  const feed = { deliver: async (event: BudgetEvent) => { order.push(event.type) } }
  const g = await approvalsGateway(t, { notifications: { channels: { feed }, backoffMs: 1 } }, ['feed'])
  const digested = await g.createBudget({ name: 'digested', scopeId: 'team-d', amount: '100', digest: { every: 'daily', channels: ['feed'] } })
  t.ok(digested.id)
  t.equal(await g.app.budgetNotifications.produceDigests(), 1, 'yesterday\'s digest, queued first')
  for (let i = 0; i < 30; i++) t.equal((await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: '10' })).statusCode, 201)
  await spendTo(g.app, g.team.id, '600') // the 50% crossing, queued last
  const first = await g.app.budgetNotifications.deliverDue()
  t.same(first, { delivered: 20, failed: 0 })
  t.equal(order[0], 'budget.threshold_crossed', 'the crossing first')
  t.equal(order.filter((type) => type === 'budget.approval_step').length, 19)
  const second = await g.app.budgetNotifications.deliverDue()
  t.same(second, { delivered: 12, failed: 0 }, 'the 11 steps left and the digest')
  t.equal(order.at(-1), 'budget.digest', 'the digest after the steps')
  t.same(await g.app.budgetNotifications.deliverDue(), { delivered: 0, failed: 0 })
})

t.test('failing steps retried every round do not hold a digest back for longer than their attempts', async (t) => {
  const order: string[] = []
  const g = await approvalsGateway(t, {
    notifications: {
      channels: {
        down: { deliver: async (event: BudgetEvent) => { if (event.type === 'budget.approval_step') throw new Error('down') } },
        feed: { deliver: async (event: BudgetEvent) => { order.push(event.type) } }
      },
      backoffMs: 1,
      maxAttempts: 3
    }
  }, ['down'])
  await g.createBudget({ name: 'digested', scopeId: 'team-d', amount: '100', digest: { every: 'daily', channels: ['feed'] } })
  for (let i = 0; i < 25; i++) await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: '10' })
  t.equal(await g.app.budgetNotifications.produceDigests(), 1)
  let rounds = 0
  while (!order.includes('budget.digest') && rounds < 10) {
    await g.app.budgetNotifications.deliverDue()
    await new Promise((resolve) => setTimeout(resolve, 20))
    rounds++
  }
  t.ok(order.includes('budget.digest'), `the digest went, after ${rounds} rounds`)
  t.ok(rounds <= 5, 'within the steps\' attempts')
  for (let round = 0; round < 6; round++) { await g.app.budgetNotifications.deliverDue(); await new Promise((resolve) => setTimeout(resolve, 20)) }
  const rows = await g.sql<Array<{ status: string, attempts: number, n: number }>>`
    select status, attempts, count(*)::int as n from budget_notification_outbox where approval_request_id is not null group by 1, 2`
  t.same(rows, [{ status: 'failed', attempts: 3, n: 25 }], 'each step failed after its three attempts, none left claimed')
})
