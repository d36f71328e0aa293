// Review of the definitions' versions: with calls streaming on another process's lease, no call
// asked later than VERSION_FRESH_MS (plus slack for a shared machine) after a crossing committed is admitted.
import t from 'tap'
import { VERSION_FRESH_MS } from '../lib/gate/budget-lines.js'
import { buildGateway } from './fixtures/gateway.js'
import { secondProcess } from './fixtures/second-process.js'

const SLACK_MS = 60

for (const door of ['crossing', 'by-hand'] as const) {
  t.test(`calls streaming on another process: none admitted past the bound after a ${door} change`, async (t) => {
    const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
    const other = await secondProcess(t, gateway.url)
    const team = await gateway.createBudget({ name: 'team', scopeId: 'platform', amount: '100', alerts: [{ threshold: 50, actions: ['block-all'] }] })
    const call = async () => await other.call({ team: 'platform' })
    let committedAt = Infinity
    let stop = false
    const late: Array<{ asked: number, status: number }> = []
    let calls = 0
    const stream = (async () => {
      while (!stop) {
        const asked = Date.now()
        const response = await call()
        calls++
        if (asked > committedAt + VERSION_FRESH_MS + SLACK_MS && response.statusCode === 200) late.push({ asked: asked - committedAt, status: response.statusCode })
      }
    })()
    await new Promise((resolve) => setTimeout(resolve, 400))
    if (door === 'crossing') await gateway.app.budgetTracker.recordUsage({ budgetId: team.id, amount: '60', currency: 'USD', source: 'test' })
    else await gateway.sql`update budget_definitions set amount = 0.0001 where id = ${team.id}`
    committedAt = Date.now()
    await new Promise((resolve) => setTimeout(resolve, 600))
    stop = true
    await stream
    t.ok(calls > 10, `${calls} calls`)
    t.same(late, [], 'no call asked past the bound was admitted (ms after the commit)')
  })
}
