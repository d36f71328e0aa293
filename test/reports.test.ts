// Spend reports: totals, calls and tokens per scope, model, day or tag and currency, as JSON or as CSV
// streamed row by row; bad queries are a 400 naming the field.
import t from 'tap'
import { ADMIN_TOKEN, PREFIX, budgetRequest, buildApp } from './fixtures/app.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }

async function world (t: Parameters<typeof buildApp>[0]) {
  const app = await buildApp(t)
  const { admin } = app
  const org = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeType: 'organization', scopeId: 'acme', amount: '1000' }) })).json()
  const team = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeId: 'platform', parentId: org.id, amount: '500' }) })).json()
  const euro = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeId: 'paris', amount: '500', currency: 'EUR' }) })).json()
  const record = async (budgetId: string, amount: string, currency: string, occurredAt: string, metadata: Record<string, unknown>) => {
    const response = await admin({ method: 'POST', url: `${PREFIX}/${budgetId}/usage`, body: { amount, currency, source: 'test', occurredAt, metadata } })
    if (response.statusCode !== 201) throw new Error(response.body)
  }
  await record(team.id, '0.1', 'USD', '2024-03-01T10:00:00Z', { modelId: 'gpt-4o', inputTokens: 100, outputTokens: 10, tags: { feature: 'summarize' } })
  await record(team.id, '0.2', 'USD', '2024-03-01T23:59:59Z', { modelId: 'gpt-4o-mini', inputTokens: 200, outputTokens: 20, tags: { feature: 'chat' } })
  await record(org.id, '0.3', 'USD', '2024-03-02T00:00:00Z', { modelId: 'gpt-4o', inputTokens: 300, outputTokens: 30 })
  await record(euro.id, '0.4', 'EUR', '2024-03-02T12:00:00Z', { modelId: 'gpt-4o', tags: { feature: 'summarize' } })
  return app
}

const range = 'from=2024-03-01&to=2024-04-01'

t.test('JSON: per scope, model, day and tag, each currency apart, exact (sort=key: the order before sort existed)', async (t) => {
  const { admin } = await world(t)
  const report = async (query: string) => (await admin({ method: 'GET', url: `${PREFIX}/reports/spend?${range}&sort=key&${query}` })).json()
  t.same((await report('groupBy=scope')).groups, [
    { key: 'organization:acme', currency: 'USD', total: '0.3', calls: 1, inputTokens: '300', outputTokens: '30' },
    { key: 'team:paris', currency: 'EUR', total: '0.4', calls: 1, inputTokens: '0', outputTokens: '0' },
    { key: 'team:platform', currency: 'USD', total: '0.3', calls: 2, inputTokens: '300', outputTokens: '30' }
  ])
  t.same((await report('groupBy=model')).groups.map((g: { key: string, currency: string, total: string }) => [g.key, g.currency, g.total]),
    [['gpt-4o', 'EUR', '0.4'], ['gpt-4o', 'USD', '0.4'], ['gpt-4o-mini', 'USD', '0.2']])
  t.same((await report('groupBy=day')).groups.map((g: { key: string, currency: string, calls: number }) => [g.key, g.currency, g.calls]),
    [['2024-03-01', 'USD', 2], ['2024-03-02', 'EUR', 1], ['2024-03-02', 'USD', 1]], 'UTC days')
  t.same((await report('groupBy=tag&tagKey=feature&currency=USD')).groups.map((g: { key: string | null, total: string }) => [g.key, g.total]),
    [['chat', '0.2'], ['summarize', '0.1'], [null, '0.3']], 'a tag\'s values, usage without it last')
  t.same((await report('groupBy=model&scopeType=organization&scopeId=acme')).groups.map((g: { key: string, total: string }) => [g.key, g.total]),
    [['gpt-4o', '0.4'], ['gpt-4o-mini', '0.2']], 'only the usage that counted toward acme\'s budgets (its team\'s included)')
})

t.test('CSV: streamed with a header, quoted where it must be, never a formula', async (t) => {
  const { admin, app } = await world(t)
  await app.budgetTracker.recordUsage({ budgetId: (await admin({ method: 'GET', url: `${PREFIX}/scope/team/platform` })).json().budgets[0].id, amount: '1', currency: 'USD', source: 'test', occurredAt: '2024-03-03T00:00:00Z', metadata: { modelId: '=HYPERLINK("x"),1' } })
  const response = await admin({ method: 'GET', url: `${PREFIX}/reports/spend?${range}&groupBy=model&currency=USD`, headers: { accept: 'text/csv' } })
  t.equal(response.statusCode, 200)
  t.match(response.headers['content-type'], /^text\/csv/)
  t.match(response.headers['content-disposition'], /attachment; filename="spend-by-model.csv"/)
  t.same(response.body.split('\r\n'), [
    'model,currency,total,calls,inputTokens,outputTokens',
    '"\'=HYPERLINK(""x""),1",USD,1,1,0,0',
    'gpt-4o,USD,0.4,2,400,40',
    'gpt-4o-mini,USD,0.2,1,200,20',
    ''
  ])
})

t.test('bad queries are a 400 naming the field, as JSON even when CSV was asked for', async (t) => {
  const { admin } = await world(t)
  for (const [query, field] of [
    ['groupBy=tag', 'tagKey'], ['groupBy=week', 'groupBy'], ['scopeType=team', 'scopeId'], ['scopeId=x', 'scopeType'],
    ['from=2024-04-01&to=2024-03-01', 'to'], ['from=yesterday', 'from'], ['currency=usd', 'currency'], ['tagKey=a%20b&groupBy=tag', 'tagKey']
  ] as const) {
    for (const accept of ['application/json', 'text/csv']) {
      const response = await admin({ method: 'GET', url: `${PREFIX}/reports/spend?${query}`, headers: { ...AUTH, accept } })
      t.equal(response.statusCode, 400, `${query} (${accept})`)
      t.match(response.json(), { code: 'BUDGET_ERR_VALIDATION', field: new RegExp(field) }, `${query}: names ${field}`)
    }
  }
  t.equal((await admin({ method: 'GET', url: `${PREFIX}/reports/spend`, headers: { authorization: 'Bearer nope-nope-nope-nope' } })).statusCode, 401)
})
