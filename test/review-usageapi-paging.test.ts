// Review: GET {prefix}/:id/usage pages (allocations read first, limit inside the CTE when no filter reads the records) and the
// summary, against the order before: newest first by allocation occurred_at, then usage id.
import t from 'tap'
import { PREFIX, budgetRequest, buildApp } from './fixtures/app.js'

t.test('every page walk gives the old order, with and without filters; the summary sums the same allocations', async (t) => {
  const { admin, sql } = await buildApp(t)
  const root = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ name: 'root', amount: '100000', period: 'annual' }) })).json()
  const child = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ name: 'child', amount: '100000', period: 'annual', parentId: root.id, scopeId: 'c' }) })).json()
  const other = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ name: 'other', amount: '100000', period: 'annual', scopeId: 'o' }) })).json()
  const models = ['gpt-4o', 'claude', 'gpt-4o-mini']
  for (let i = 0; i < 30; i++) {
    // many ties on occurredAt (the id breaks them)
    const occurredAt = new Date(Date.UTC(2024, 0, 2 + (i % 4), 12, 0, i % 3)).toISOString()
    const budgetId = [root.id, child.id, other.id][i % 3]
    const response = await admin({ method: 'POST', url: `${PREFIX}/${budgetId}/usage`, body: { amount: `${i + 1}.5`, currency: 'USD', source: 's', occurredAt, metadata: { modelId: models[i % 3], userId: `u${i % 2}`, tags: { env: i % 4 === 0 ? 'prod' : 'dev' } } } })
    t.equal(response.statusCode, 201)
  }
  const range = 'from=2024-01-01&to=2024-02-01'
  const expected = async (filter: string) => {
    const rows = await sql`select u.id from budget_usage_allocations a join budget_usage_records u on u.id = a.usage_id
                           where a.budget_id = ${root.id} and a.occurred_at >= '2024-01-01' and a.occurred_at < '2024-02-01'
                             and (${filter} = '' or (${filter} = 'modelId=claude' and u.model_id = 'claude') or (${filter} = 'userId=u1' and u.user_id = 'u1')
                                  or (${filter} = 'tag=env%3Dprod' and u.metadata -> 'tags' ->> 'env' = 'prod'))
                           order by a.occurred_at desc, a.usage_id desc`
    return rows.map((row) => row.id as string)
  }
  for (const filter of ['', 'modelId=claude', 'userId=u1', 'tag=env%3Dprod']) {
    const want = await expected(filter)
    t.ok(want.length >= 5, `${filter || 'no filter'}: ${want.length} records expected`)
    for (const limit of [1, 2, 3, 7, 100]) {
      const seen: string[] = []
      let cursor: string | null = null
      let pages = 0
      do {
        const response = await admin({ method: 'GET', url: `${PREFIX}/${root.id}/usage?${range}&limit=${limit}${filter === '' ? '' : `&${filter}`}${cursor === null ? '' : `&cursor=${cursor}`}` })
        const page = response.json() as { records: Array<{ id: string }>, nextCursor: string | null }
        seen.push(...page.records.map((r) => r.id))
        cursor = page.nextCursor
        pages++
      } while (cursor !== null && pages < 200)
      t.same(seen, want, `${filter || 'no filter'}, limit ${limit}: the old order, every record once`)
    }
  }
  const summary = (await admin({ method: 'GET', url: `${PREFIX}/${root.id}/usage/summary?${range}&tagKey=env` })).json()
  const [sums] = await sql`select sum(a.amount)::numeric::text as total, count(*)::int as n from budget_usage_allocations a where a.budget_id = ${root.id}`
  t.equal(summary.count, sums!.n)
  t.equal(Number(summary.total), Number(sums!.total))
  t.equal(summary.count, 20, 'root and child records')
  const claude = (await admin({ method: 'GET', url: `${PREFIX}/${root.id}/usage/summary?${range}&modelId=claude` })).json()
  t.equal(claude.count, (await expected('modelId=claude')).length)
  t.same(summary.byTag.map((g: { value: string, count: number }) => [g.value, g.count]), [['dev', 14], ['prod', 6]])
})
