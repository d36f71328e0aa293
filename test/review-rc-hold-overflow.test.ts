// Review rc: a converted hold past 10^18 at the gate: a 402 for that call, others in the same hold batch served, nothing held after.
import t from 'tap'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'

t.test('hold past 10^18 after conversion', async (t) => {
  const gw = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const headers = { authorization: `Bearer ${ADMIN_TOKEN}` }
  t.equal((await gw.app.inject({ method: 'PUT', url: `${PREFIX}/exchange-rates/USD/EUR`, headers, body: { rate: '999999999999999999', effectiveFrom: '2020-01-01T00:00:00Z' } })).statusCode, 201)
  const eur = await gw.createBudget({ name: 'eur', scopeId: 'team-eur', currency: 'EUR', amount: '999999999999999999', enforcement: 'soft' })
  await gw.createBudget({ name: 'usd', scopeId: 'team-usd', amount: '100' })
  const r = await gw.app.inject({ method: 'POST', url: `${PREFIX}/${eur.id}/usage`, headers, body: { amount: '999999999999000000', currency: 'EUR' } })
  t.equal(r.statusCode, 201, r.body)
  const answers = await Promise.all(Array.from({ length: 10 }, async (_, i) => await gw.call({ team: i % 2 === 0 ? 'team-eur' : 'team-usd' })))
  const summary = answers.map((a) => `${a.statusCode}${a.statusCode === 200 ? '' : ':' + String((a.json() as { error?: { code?: string } }).error?.code)}`)
  t.comment(summary.join(' '))
  t.ok(answers.every((a) => a.statusCode < 500), 'no 5xx')
  t.ok(answers.filter((_, i) => i % 2 === 1).every((a) => a.statusCode === 200), 'the USD team is served')
  await gw.settled(5000).catch((e: unknown) => { t.fail(String(e)) })
  const cache = await gw.sql`select current_amount::text, reserved_amount::text from budget_status_cache order by budget_id`
  t.comment(JSON.stringify(cache))
})
