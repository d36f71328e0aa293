// Hostile queries and bodies on the exchange-rate routes; extreme rates at the batch and the single route.
import t from 'tap'
import { PREFIX, budgetRequest, buildApp, snapshotTables } from './fixtures/app.js'

t.test('exchange-rate routes: junk never 5xx, nothing changed after a 4xx', async (t) => {
  const { admin, sql } = await buildApp(t)
  const put = async (from: string, to: string, body: unknown) => await admin({ method: 'PUT', url: `${PREFIX}/exchange-rates/${from}/${to}`, body: body as object })
  t.equal((await put('USD', 'EUR', { rate: '0.9' })).statusCode, 201)
  t.equal((await put('EUR', 'USD', { rate: '999999999999999999.999999999999999999', effectiveFrom: '2000-01-01T00:00:00Z' })).statusCode, 201)
  const queries = ['cursor=0', 'cursor=-1', 'cursor=9223372036854775807', 'cursor=9223372036854775808', 'cursor=99999999999999999999', 'cursor=1e3', 'cursor=%00', 'cursor=1&cursor=2',
    'limit=0', 'limit=501', 'limit=1.5', 'limit=abc', 'limit=-1', 'limit=1e2', 'from=usd', 'from=%27', 'to=EURO', 'from=USD&to=EUR&limit=1', 'cursor=1&from=ZZZ', 'limit=1&cursor=2']
  for (const q of queries) {
    const r = await admin({ method: 'GET', url: `${PREFIX}/exchange-rates?${q}` })
    t.ok(r.statusCode < 500, `GET ?${q}: ${r.statusCode} ${r.body.slice(0, 120)}`)
  }
  const before = await snapshotTables(sql)
  const bodies: Array<[string, string, unknown]> = [['USD', 'USD', { rate: '1' }], ['usd', 'EUR', { rate: '1' }], ['USD', 'EUR', { rate: '0' }], ['USD', 'EUR', { rate: '-1' }],
    ['USD', 'EUR', { rate: '1e5' }], ['USD', 'EUR', { rate: 1e300 }], ['USD', 'EUR', { rate: '1'.repeat(19) }], ['USD', 'EUR', { rate: '0.' + '0'.repeat(17) + '1' }],
    ['USD', 'EUR', { rate: '1', effectiveFrom: '10000-01-01T00:00:00Z' }], ['USD', 'EUR', { rate: '1', effectiveFrom: '-infinity' }], ['USD', 'EUR', { rate: '1', effectiveFrom: 'infinity' }],
    ['USD', 'EUR', { rate: '1', effectiveFrom: '0001-01-01T00:00:00Z' }], ['USD', 'EUR', { rate: '1', effectiveFrom: '1970-01-01T00:00:00+99:00' }], ['USD', 'EUR', { rate: '\u0661' }], ['USD', 'EUR', { rate: ' 1 ' }]]
  for (const [from, to, body] of bodies) {
    const r = await put(from, to, body)
    t.ok(r.statusCode < 500, `PUT ${from}/${to} ${JSON.stringify(body)}: ${r.statusCode} ${r.body.slice(0, 160)}`)
  }
  t.comment(JSON.stringify((await sql`select id, from_currency, to_currency, rate::text, effective_from from budget_exchange_rates order by id`).slice(0, 20)))
  t.ok(before)

  // usage in EUR at the extreme rate, single and batch
  const budget = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ amount: '999999999999999999', enforcement: 'soft' }) })).json() as { id: string }
  for (const amount of ['1', '0.0000000001', '0.000000000100000001', '2', '1.000000000000000002']) {
    const snap = await snapshotTables(sql)
    const r = await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: { amount, currency: 'EUR' } })
    t.ok(r.statusCode < 500, `single EUR ${amount}: ${r.statusCode} ${r.body.slice(0, 200)}`)
    if (r.statusCode >= 400) t.same(await snapshotTables(sql), snap, 'nothing changed after the 4xx')
    const b = await admin({ method: 'POST', url: `${PREFIX}/usage/batch`, body: { records: [{ budgetId: budget.id, amount, currency: 'EUR' }] } })
    t.ok(b.statusCode < 500, `batch EUR ${amount}: ${b.statusCode} ${b.body.slice(0, 300)}`)
  }
})
