// Review rc: a batch of 10,000 records naming 10,000 distinct budgets (or model filters) asks the shared pool
// 10,000 questions before its bounded transaction: unbounded, and ahead of the gate's statements.
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'

t.test('10,000 distinct unknown budget ids: time of the batch, gated calls meanwhile', async (t) => {
  const gw = await buildGateway(t, { gate: {} })
  await gw.createBudget({ name: 'b', scopeId: 'team-b', amount: '100000' })
  const headers = { authorization: `Bearer ${ADMIN_TOKEN}` }
  const records = Array.from({ length: 10_000 }, () => ({ budgetId: randomUUID(), amount: '1', currency: 'USD' }))
  const started = Date.now()
  let done: { at: number, status: number } | null = null
  void gw.app.inject({ method: 'POST', url: `${PREFIX}/usage/batch`, headers, body: { records } }).then((r) => { done = { at: Date.now() - started, status: r.statusCode } })
  const latencies: number[] = []
  const bodies: string[] = []
  const codes = new Map<number, number>()
  while (done === null && Date.now() - started < 60_000) {
    const s = Date.now()
    const rs = await Promise.all(Array.from({ length: 4 }, async () => await gw.call({ team: 'team-b' })))
    latencies.push(Date.now() - s)
    for (const r of rs) {
      codes.set(r.statusCode, (codes.get(r.statusCode) ?? 0) + 1)
      if (r.statusCode !== 200 && bodies.length < 2) bodies.push(`${Date.now() - started} ms: ${r.body.slice(0, 300)}`)
    }
  }
  latencies.sort((a, b) => a - b)
  t.comment(JSON.stringify({ batch: done, gated: Object.fromEntries(codes), p50: latencies[Math.floor(latencies.length / 2)], max: latencies[latencies.length - 1] }))
  t.comment(bodies.join(' | '))
  t.equal(codes.get(503) ?? 0, 0, 'no gated call on another team refused')
  t.ok(done !== null && (done as { at: number }).at < 10_000, 'the batch answers within the 10 s admin bound')
})
