// Review (0d7319f): on the cluster, a hard budget created through one plugin instance for a caller in a new tree,
// while another instance serves that caller's calls: once the POST has returned (and the lines' freshness bound,
// VERSION_FRESH_MS, has passed), the other instance refuses every call it starts.
import t from 'tap'
import { buildGateway } from '../test/fixtures/gateway.js'
import { VERSION_FRESH_MS } from '../lib/gate/budget-lines.js'

t.test('a hard budget in a new tree made on instance A: calls B starts after the POST returned are refused', async (t) => {
  const a = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const b = await buildGateway(t, { gatewayDatabase: async () => a.url, gate: { sweepIntervalMs: 0 } })
  const admitted: string[] = []
  for (let round = 0; round < 12; round++) {
    const team = `team-new-${round}`
    let returnedAt = Infinity
    let stop = false
    const callers = [1, 2, 3].map(async () => {
      while (!stop) {
        const started = Date.now()
        const answer = await b.call({ team })
        if (started > returnedAt + VERSION_FRESH_MS + 40 && answer.statusCode === 200) admitted.push(`round ${round}: started ${started - returnedAt} ms after the POST returned`)
        if (answer.statusCode !== 200 && answer.statusCode !== 402) admitted.push(`round ${round}: ${answer.statusCode} ${answer.body.slice(0, 200)}`)
      }
    })
    await new Promise((resolve) => setTimeout(resolve, 150 + (round % 4) * 20))
    await a.createBudget({ name: `hard ${round}`, scopeType: 'team', scopeId: team, amount: '0.0000001', enforcement: 'hard' })
    returnedAt = Date.now()
    await new Promise((resolve) => setTimeout(resolve, 400))
    stop = true
    await Promise.all(callers)
  }
  t.same(admitted, [], 'no call started after the POST returned (and the freshness bound) was admitted')
})
