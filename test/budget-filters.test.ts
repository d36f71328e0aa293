// Model and tag budgets: a budget with filters counts, and gates, only the calls that match them all,
// on the model actually called (after auto-downgrade and snapshot resolution) and the x-relay-tags
// the caller sends. Several budgets on one scope all apply; a refusal names the one that binds.
import t from 'tap'
import { PREFIX, ADMIN_TOKEN, budgetRequest, buildApp, snapshotTables } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }

t.test('filters are stored, read back, and refused with a 400 naming the field when malformed', async (t) => {
  const { app, admin, sql } = await buildApp(t)
  const created = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ filters: { models: ['gpt-4o*', 'o3'], tags: { feature: 'summarize', env: 'prod' } } }) })
  t.equal(created.statusCode, 201)
  t.same(created.json().filters, { models: ['gpt-4o*', 'o3'], tags: { feature: 'summarize', env: 'prod' } })
  const plain = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeId: 'plain' }) })
  t.same(plain.json().filters, {}, 'no filters: every call counts')
  const before = await snapshotTables(sql)
  const cases: Array<[string, unknown, string]> = [
    ['no models at all', { models: [] }, 'filters.models'],
    ['a star inside a pattern', { models: ['gpt-*4o'] }, 'filters.models.0'],
    ['a star alone', { models: ['*'] }, 'filters.models.0'],
    ['a tag key with a space', { tags: { 'my feature': 'x' } }, 'filters.tags'],
    ['a tag value with a comma', { tags: { feature: 'a,b' } }, 'filters.tags'],
    ['a tag value that is a number', { tags: { feature: 1 } }, 'filters.tags'],
    ['eleven tags', { tags: Object.fromEntries(Array.from({ length: 11 }, (_, i) => [`k${i}`, 'v'])) }, 'filters.tags'],
    ['no tags at all', { tags: {} }, 'filters.tags'],
    ['an unknown filter', { providers: ['openai'] }, 'filters']
  ]
  for (const [name, filters, field] of cases) {
    const response = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeId: 'x', filters }) })
    t.equal(response.statusCode, 400, name)
    t.match(response.json(), { code: 'BUDGET_ERR_VALIDATION', field: new RegExp(`^${field.replaceAll('.', '\\.')}`) }, `${name}: names ${field}`)
    t.equal((await admin({ method: 'PUT', url: `${PREFIX}/${created.json().id}`, body: { filters } })).statusCode, 400, `${name}, as an update`)
  }
  const dated = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeId: 'x', filters: { models: ['gpt-4o-2024-08-06'] } }) })
  t.match(dated.json(), { code: 'BUDGET_ERR_VALIDATION', field: 'filters.models', message: /'gpt-4o'/ }, 'a dated snapshot could never match: refused, naming the name calls are counted as')
  t.same(await snapshotTables(sql), before, 'nothing changed')
  // The library path (no route in front of it) has the same checks, naming the same field as the route (the schema's, lib/kernel/validator.ts).
  const library = budgetRequest({ scopeId: 'lib' }) as Parameters<typeof app.budgetRegistry.createBudget>[0]
  const refusal = async (filters: object) => await app.budgetRegistry.createBudget({ ...library, filters }).then(() => null, (error: { field?: string }) => error.field)
  const routeField = async (filters: object) => (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeId: 'x', filters }) })).json().field
  for (const filters of [{ models: ['gpt-*4o'] }, { tags: { feature: 'a,b' } }, { models: ['gpt-4o', 'gpt-4o'] }, { models: [`${'x'.repeat(200)}*`] }]) {
    t.equal(await refusal(filters), await routeField(filters), `${JSON.stringify(filters).slice(0, 60)}: ${String(await routeField(filters))}`)
  }
  t.same(await snapshotTables(sql), before, 'nothing changed')
})

t.test('the gate counts a call only toward the budgets whose filters it matches, and a refusal names the one that binds', async (t) => {
  const { app, sql, createBudget, settled } = await buildGateway(t)
  const all = await createBudget({ name: 'everything', scopeId: 'team-a', amount: '100' })
  const gpt4o = await createBudget({ name: 'gpt-4o daily', scopeId: 'team-a', amount: '0.05', period: 'daily', filters: { models: ['gpt-4o'] } })
  const summarize = await createBudget({ name: 'summaries', scopeId: 'team-a', amount: '100', filters: { tags: { feature: 'summarize' } } })
  const chat = async (model: string, tags?: string, maxTokens = 20) => await app.inject({
    method: 'POST',
    url: '/v1/chat/completions',
    headers: { 'x-relay-team-id': 'team-a', ...(tags === undefined ? {} : { 'x-relay-tags': tags }) },
    body: { model, messages: [{ role: 'user', content: 'Say hello' }], max_tokens: maxTokens }
  })
  t.equal((await chat('gpt-4o-mini')).statusCode, 200, 'gpt-4o-mini: not a gpt-4o call')
  t.equal((await chat('gpt-4o-2024-08-06', 'feature=summarize,env=prod')).statusCode, 200, 'a dated gpt-4o snapshot is a gpt-4o call, tagged summarize')
  t.equal((await chat('gpt-4o-mini', 'env=prod')).statusCode, 200)
  await settled()
  const counted = await sql<Array<{ budget: string, model: string, tags: unknown }>>`
    select b.name as budget, u.metadata ->> 'modelId' as model, u.metadata -> 'tags' as tags
    from budget_usage_allocations a join budget_usage_records u on u.id = a.usage_id join budget_definitions b on b.id = a.budget_id
    order by b.name, u.occurred_at`
  t.same(counted.map((row) => [row.budget, row.model]), [
    ['everything', 'gpt-4o-mini'], ['everything', 'gpt-4o'], ['everything', 'gpt-4o-mini'],
    ['gpt-4o daily', 'gpt-4o'],
    ['summaries', 'gpt-4o']
  ], 'each call counted toward exactly the budgets it matches')
  t.same(counted.find((row) => row.budget === 'summaries')?.tags, { feature: 'summarize', env: 'prod' }, 'the usage record keeps the tags')

  // 10000 output tokens of gpt-4o (10 per million) cost more than what is left of its 0.05 daily budget.
  const refused = await chat('gpt-4o', undefined, 10000)
  t.equal(refused.statusCode, 402)
  t.match(refused.json().error, { code: 'budget_exceeded', budget: { id: gpt4o.id } }, 'the filtered budget binds, and is named')
  t.equal((await chat('gpt-4o-mini', undefined, 10000)).statusCode, 200, 'the same call to another model is not held by it')
  await settled()
  await checkInvariants(t, sql)
  t.ok(all.id !== summarize.id)
})

t.test('auto-downgrade: the call counts as the model actually called', async (t) => {
  const { app, sql, createBudget, settled } = await buildGateway(t)
  const team = await createBudget({ name: 'team', scopeId: 'team-a', amount: '1', alerts: [{ threshold: 0.0001, actions: ['auto-downgrade'] }] })
  await createBudget({ name: 'gpt-4o only', scopeId: 'team-a', amount: '100', filters: { models: ['gpt-4o'] } })
  await createBudget({ name: 'gpt-4o-mini only', scopeId: 'team-a', amount: '100', filters: { models: ['gpt-4o-mini'] } })
  await app.budgetTracker.recordUsage({ budgetId: team.id, amount: '0.01', currency: 'USD', source: 'test' })
  const response = await app.inject({
    method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'team-a' },
    body: { model: 'gpt-4o', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 20 }
  })
  t.equal(response.statusCode, 200)
  t.equal(response.headers['x-budget-downgraded-from'], 'gpt-4o')
  await settled()
  const counted = await sql<Array<{ name: string }>>`
    select b.name from budget_usage_allocations a join budget_usage_records u on u.id = a.usage_id join budget_definitions b on b.id = a.budget_id
    where u.source = 'gateway' order by b.name`
  t.same(counted.map((row) => row.name), ['gpt-4o-mini only', 'team'], 'counted toward the gpt-4o-mini budget, not the gpt-4o one')
  await checkInvariants(t, sql)
})

t.test('a malformed x-relay-tags header is a 400 naming it, and holds nothing', async (t) => {
  const { app, sql, createBudget } = await buildGateway(t)
  await createBudget({ scopeId: 'team-a', amount: '1' })
  for (const header of ['feature', 'feature=', '=x', 'a=b=c', 'a=1,a=2', 'a b=c', 'k=v,', Array.from({ length: 11 }, (_, i) => `k${i}=v`).join(',')]) {
    const response = await app.inject({
      method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'team-a', 'x-relay-tags': header },
      body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 }
    })
    t.equal(response.statusCode, 400, header)
    t.match(response.json().error, { code: 'invalid_tags', param: 'x-relay-tags' }, `${header}: invalid_tags`)
  }
  t.equal((await sql`select count(*)::int as n from budget_usage_records`)[0]!.n, 0)
  await checkInvariants(t, sql)
})

t.test('usage recorded through the API counts toward the ancestors it matches; a record its own budget does not match is refused', async (t) => {
  const { app, admin, sql } = await buildApp(t)
  const org = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeType: 'organization', scopeId: 'acme', amount: '1000' }) })).json()
  const claude = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeType: 'organization', scopeId: 'acme', name: 'claude', parentId: null, amount: '1000', filters: { models: ['claude-*'] } }) })).json()
  const team = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ parentId: claude.id, amount: '100' }) })).json()
  const record = async (budgetId: string, metadata: Record<string, unknown>) =>
    await admin({ method: 'POST', url: `${PREFIX}/${budgetId}/usage`, body: { amount: '2', currency: 'USD', source: 'test', metadata } })
  t.equal((await record(team.id, { modelId: 'gpt-4o', tags: { feature: 'chat' } })).statusCode, 201, 'the team budget has no filter')
  t.equal((await record(team.id, { modelId: 'claude-sonnet-4', tags: { feature: 'summarize' } })).statusCode, 201)
  const rows = await sql<Array<{ name: string, total: string }>>`
    select b.name, sum(a.amount)::text as total from budget_usage_allocations a join budget_definitions b on b.id = a.budget_id group by b.name order by b.name`
  t.same(rows.map((row) => [row.name, Number(row.total)]), [['Team budget', 4], ['claude', 2]], 'the claude parent counts only the claude record')
  const gpt4o = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeId: 'team-g', filters: { models: ['gpt-4o'] } }) })).json()
  const recorded = await app.budgetIntegration.recordModelCall({ team: 'team-g' }, '0.125', { requestId: 'r1', metadata: { modelId: 'gpt-4o-2024-08-06' } })
  t.match(recorded, { budgetId: gpt4o.id, metadata: { modelId: 'gpt-4o', upstreamModel: 'gpt-4o-2024-08-06' } }, 'the library\'s recordModelCall matches a snapshot as the gate does')
  t.ok(org.id)
  const before = await snapshotTables(sql)
  for (const metadata of [{ modelId: 'gpt-4o' }, {}, { modelId: 'claude-x', tags: { 'bad key': 'v' } }]) {
    const refused = await record(claude.id, metadata)
    t.equal(refused.statusCode, 400, JSON.stringify(metadata))
    t.match(refused.json().message, /metadata/, 'names the metadata')
  }
  t.same(await snapshotTables(sql), before, 'nothing changed')

  const history = await admin({ method: 'GET', url: `${PREFIX}/${team.id}/usage?tag=feature%3Dsummarize` })
  t.same(history.json().records.map((r: { metadata: { modelId: string } }) => r.metadata.modelId), ['claude-sonnet-4-0'], 'history filtered by tag; kept under the catalog\'s name for claude-sonnet-4')
  const summary = await admin({ method: 'GET', url: `${PREFIX}/${team.id}/usage/summary?tagKey=feature` })
  t.same(summary.json().byTag, [{ value: 'chat', total: '2', count: 1 }, { value: 'summarize', total: '2', count: 1 }], 'summary grouped by a tag')
  const byModel = await admin({ method: 'GET', url: `${PREFIX}/${team.id}/usage/summary?modelId=gpt-4o` })
  t.match(byModel.json(), { total: '2', count: 1 }, 'summary filtered by model')
  t.equal((await admin({ method: 'GET', url: `${PREFIX}/${team.id}/usage?tag=feature` })).statusCode, 400, 'a tag without a value')
  t.match((await admin({ method: 'GET', url: `${PREFIX}/${team.id}/usage?tag=feature`, headers: AUTH })).json(), { code: 'BUDGET_ERR_VALIDATION', field: 'tag' })
})

t.test('a budget created or changed takes effect from the next held call: the hold sees the newer definitions and is taken again', async (t) => {
  const { app, sql, createBudget, settled } = await buildGateway(t)
  const filtered = await createBudget({ name: 'gpt-4.1 family', scopeId: 'team-a', amount: '100', filters: { models: ['gpt-4.1*'] } })
  const chat = async () => await app.inject({
    method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'team-a' },
    body: { model: 'gpt-4.1-nano', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 20 }
  })
  t.equal((await chat()).headers['x-budget-id'], filtered.id, 'counted toward the gpt-4.1 budget')
  await settled()
  await new Promise((resolve) => setTimeout(resolve, 300)) // a cold line: the next call is held, not leased
  const changed = await app.inject({ method: 'PUT', url: `${PREFIX}/${filtered.id}`, headers: AUTH, body: { filters: { models: ['gpt-4o*'] } } })
  t.equal(changed.statusCode, 200)
  const after = await chat()
  t.equal(after.statusCode, 200)
  t.not(after.headers['x-budget-id'], filtered.id, 'the very next call no longer counts toward it')
  await settled()
  const [allocated] = await sql<Array<{ n: number }>>`select count(*)::int as n from budget_usage_allocations where budget_id = ${filtered.id}`
  t.equal(allocated!.n, 1, 'only the call before the change')
  // A new hard budget with no room refuses the very next call.
  await new Promise((resolve) => setTimeout(resolve, 300))
  const tiny = await createBudget({ name: 'tiny', scopeId: 'team-a', amount: '0.0000001' })
  const refused = await chat()
  t.equal(refused.statusCode, 402)
  t.match(refused.json().error, { budget: { id: tiny.id } })
  await settled()
  await checkInvariants(t, sql)
})
