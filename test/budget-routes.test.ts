import t from 'tap'
import { ADMIN_TOKEN, PREFIX, budgetRequest, buildApp, seedBudgetRequest, snapshotTables } from './fixtures/app.js'
import { declaredRoutes, fillPath } from './fixtures/routes.js'

t.test('the seed CreateBudgetRequest example creates a budget (201) that reads back as sent', async (t) => {
  const { admin } = await buildApp(t)
  const created = await admin({ method: 'POST', url: PREFIX, body: seedBudgetRequest() })
  t.equal(created.statusCode, 201)
  const budget = created.json()
  t.match(budget, {
    id: /^[0-9a-f-]{36}$/,
    name: 'Engineering Team Q1 Budget',
    description: 'Quarterly budget for engineering team AI usage',
    scopeType: 'team',
    scopeId: 'team-engineering',
    parentId: null,
    amount: '10000',
    currency: 'USD',
    period: 'quarterly',
    startDate: '2024-01-01T00:00:00.000Z',
    endDate: null,
    recurring: true,
    createdBy: 'admin'
  })
  t.same(budget.alerts, seedBudgetRequest().alerts)
  t.equal(created.headers.location, `${PREFIX}/${budget.id}`)
  const read = await admin({ method: 'GET', url: `${PREFIX}/${budget.id}` })
  t.equal(read.statusCode, 200)
  t.same(read.json(), budget)
})

t.test('amounts are stored and returned exactly', async (t) => {
  const { admin } = await buildApp(t)
  for (const [amount, expected] of [['0.0000000001', '0.0000000001'], ['123456789012345678.123456789', '123456789012345678.123456789'], [78.70181415, '78.70181415']]) {
    const response = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ amount }) })
    t.equal(response.json().amount, expected, `${String(amount)} stays ${String(expected)}`)
  }
})

t.test('defaults: recurring, no alerts, no description; alerts come back sorted by threshold', async (t) => {
  const { admin } = await buildApp(t)
  const response = await admin({
    method: 'POST',
    url: PREFIX,
    body: budgetRequest({ alerts: [{ threshold: 90, actions: ['block-all'] }, { threshold: 50, actions: ['notify'] }] })
  })
  t.equal(response.statusCode, 201)
  t.match(response.json(), { recurring: true, description: null, endDate: null })
  t.same(response.json().alerts, [
    { threshold: 50, actions: ['notify'], notificationChannels: [] },
    { threshold: 90, actions: ['block-all'], notificationChannels: [] }
  ])
})

t.test('custom periods take an end date after the start', async (t) => {
  const { admin } = await buildApp(t)
  const response = await admin({
    method: 'POST',
    url: PREFIX,
    body: budgetRequest({ period: 'custom', startDate: '2024-03-10T12:00:00Z', endDate: '2024-04-10T12:00:00+02:00', recurring: false })
  })
  t.equal(response.statusCode, 201)
  t.match(response.json(), { period: 'custom', startDate: '2024-03-10T12:00:00.000Z', endDate: '2024-04-10T10:00:00.000Z', recurring: false })
})

t.test('PUT changes the fields given and keeps the rest', async (t) => {
  const { admin } = await buildApp(t)
  const budget = (await admin({ method: 'POST', url: PREFIX, body: seedBudgetRequest() })).json()
  const response = await admin({ method: 'PUT', url: `${PREFIX}/${budget.id}`, body: { amount: '12500.75', name: 'Renamed', description: null } })
  t.equal(response.statusCode, 200)
  const updated = response.json()
  t.match(updated, { id: budget.id, amount: '12500.75', name: 'Renamed', description: null, period: 'quarterly', currency: 'USD', createdAt: budget.createdAt })
  t.same(updated.alerts, budget.alerts)
  t.ok(updated.updatedAt > budget.updatedAt, 'updatedAt moves')
  t.same((await admin({ method: 'GET', url: `${PREFIX}/${budget.id}` })).json(), updated)
})

t.test('DELETE answers 204, then the budget is gone from every read', async (t) => {
  const { admin, sql } = await buildApp(t)
  const budget = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest() })).json()
  const deleted = await admin({ method: 'DELETE', url: `${PREFIX}/${budget.id}` })
  t.equal(deleted.statusCode, 204)
  t.equal(deleted.body, '')
  t.equal((await admin({ method: 'GET', url: `${PREFIX}/${budget.id}` })).statusCode, 404)
  t.equal((await admin({ method: 'PUT', url: `${PREFIX}/${budget.id}`, body: { name: 'x' } })).statusCode, 404)
  t.equal((await admin({ method: 'DELETE', url: `${PREFIX}/${budget.id}` })).statusCode, 404, 'a second delete is a 404')
  t.same((await admin({ method: 'GET', url: `${PREFIX}/scope/team/team-a` })).json(), { budgets: [] })
  const [row] = await sql`select deleted_at from budget_definitions where id = ${budget.id}`
  t.ok(row?.deleted_at instanceof Date, 'the row stays, archived, for its usage history')
})

t.test('GET /scope/:type/:id lists that scope\'s budgets only', async (t) => {
  const { admin } = await buildApp(t)
  const first = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ name: 'monthly' }) })).json()
  const second = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ name: 'daily', period: 'daily', amount: '50' }) })).json()
  await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeId: 'team-b' }) })
  await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeType: 'user' }) })
  const response = await admin({ method: 'GET', url: `${PREFIX}/scope/team/team-a` })
  t.equal(response.statusCode, 200)
  t.same(response.json().budgets.map((b: { id: string }) => b.id), [first.id, second.id])
  const unknownType = await admin({ method: 'GET', url: `${PREFIX}/scope/tenant/team-a` })
  t.equal(unknownType.statusCode, 400)
  t.match(unknownType.json(), { code: 'BUDGET_ERR_VALIDATION', field: 'type' })
})

t.test('GET /hierarchy/:type/:id gives the tree: ancestors above the scope\'s budgets, descendants below', async (t) => {
  const { admin } = await buildApp(t)
  const create = async (body: Record<string, unknown>) => (await admin({ method: 'POST', url: PREFIX, body: budgetRequest(body) })).json()
  const org = await create({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '10000', period: 'annual' })
  const team = await create({ name: 'team', scopeType: 'team', scopeId: 'platform', amount: '5000', period: 'quarterly', parentId: org.id })
  const sibling = await create({ name: 'other team', scopeType: 'team', scopeId: 'sales', amount: '5000', parentId: org.id })
  const alice = await create({ name: 'alice', scopeType: 'user', scopeId: 'alice', amount: '100', parentId: team.id })
  const aliceDaily = await create({ name: 'alice daily', scopeType: 'user', scopeId: 'alice', amount: '10', period: 'daily', parentId: alice.id })
  const response = await admin({ method: 'GET', url: `${PREFIX}/hierarchy/team/platform` })
  t.equal(response.statusCode, 200)
  const tree = response.json()
  t.match(tree, { scopeType: 'team', scopeId: 'platform' })
  t.equal(tree.roots.length, 1, 'one root: the organization budget')
  const [root] = tree.roots
  t.equal(root.id, org.id)
  t.same(root.children.map((c: { id: string }) => c.id), [team.id], 'the sibling team is not part of this tree')
  t.same(root.children[0].children.map((c: { id: string }) => c.id), [alice.id])
  t.same(root.children[0].children[0].children.map((c: { id: string }) => c.id), [aliceDaily.id])
  t.same(root.children[0].children[0].children[0].children, [])
  t.not(sibling.id, team.id)

  const empty = await admin({ method: 'GET', url: `${PREFIX}/hierarchy/project/none` })
  t.same(empty.json(), { scopeType: 'project', scopeId: 'none', roots: [] })
})

t.test('every admin route answers 401 without valid credentials, and writes nothing', async (t) => {
  const { app, admin, sql, routes } = await buildApp(t)
  // The routes come from the app itself (an onRoute hook before the plugin): a new route is covered unasked.
  // 16 routes today (6 budgets, 6 usage and status, 4 alerts), each GET with Fastify's HEAD beside it.
  t.ok(declaredRoutes(routes).length >= 16, `the route table has every admin route (${declaredRoutes(routes).length})`)
  const budget = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest() })).json()
  const before = await snapshotTables(sql)
  const params = { id: budget.id, alertId: '00000000-0000-4000-8000-000000000000' }
  for (const route of routes) {
    const url = fillPath(route, params)
    const body = route.schema.body === undefined ? {} : { body: {} }
    for (const authorization of [undefined, 'Bearer wrong-token-wrong-token', `Bearer ${ADMIN_TOKEN}x`, `Basic ${Buffer.from(`admin:${ADMIN_TOKEN}`).toString('base64')}`, 'Bearer ', ADMIN_TOKEN]) {
      const response = await app.inject({ method: route.method as 'GET', url, ...body, headers: authorization === undefined ? {} : { authorization } })
      const label = `${route.method} ${route.url} with ${authorization ?? 'no header'}`
      t.equal(response.statusCode, 401, label)
      t.equal(response.headers['www-authenticate'], 'Bearer realm="relaycore-budgets"', `${label}: www-authenticate`)
      if (route.method !== 'HEAD') t.equal(response.json().code, 'BUDGET_ERR_UNAUTHORIZED', `${label}: code`)
    }
  }
  t.same(await snapshotTables(sql), before, 'nothing changed')
})

t.test('an unknown budget is a 404, also for an id that is not a uuid', async (t) => {
  const { admin } = await buildApp(t)
  for (const id of ['00000000-0000-4000-8000-000000000000', 'not-a-uuid', '1', "x' or 1=1 --", '%F0%9F%92%B8']) {
    for (const route of [{ method: 'GET' }, { method: 'PUT', body: { name: 'x' } }, { method: 'DELETE' }] as const) {
      const response = await admin({ ...route, url: `${PREFIX}/${id}` })
      t.equal(response.statusCode, 404, `${route.method} ${id}`)
      t.equal(response.json().code, 'BUDGET_ERR_NOT_FOUND')
    }
  }
})

t.test('bad input is a 400 naming the field, and writes nothing', async (t) => {
  const { admin, sql } = await buildApp(t)
  const existing = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest() })).json()
  const before = await snapshotTables(sql)
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['missing name', { name: undefined }, 'name'],
    ['empty name', { name: '' }, 'name'],
    ['long name', { name: 'x'.repeat(201) }, 'name'],
    ['name of the wrong type', { name: 12 }, 'name'],
    ['unknown scope type', { scopeType: 'tenant' }, 'scopeType'],
    ['missing scope id', { scopeId: undefined }, 'scopeId'],
    ['zero amount', { amount: 0 }, 'amount'],
    ['negative amount', { amount: '-5' }, 'amount'],
    ['amount as words', { amount: 'ten' }, 'amount'],
    ['amount with exponent', { amount: '1e3' }, 'amount'],
    ['amount too precise', { amount: '1.00000000001' }, 'amount'],
    ['amount of the wrong type', { amount: true }, 'amount'],
    ['lower-case currency', { currency: 'usd' }, 'currency'],
    ['currency of four letters', { currency: 'USDT' }, 'currency'],
    ['unknown period', { period: 'hourly' }, 'period'],
    ['custom period without end', { period: 'custom' }, 'endDate'],
    ['end before start', { period: 'custom', endDate: '2023-12-31' }, 'endDate'],
    ['end equal to start', { endDate: '2024-01-01T00:00:00Z' }, 'endDate'],
    ['start that is no date', { startDate: '2024-02-30' }, 'startDate'],
    ['start without zone', { startDate: '2024-01-01T09:00:00' }, 'startDate'],
    ['recurring as a string', { recurring: 'true' }, 'recurring'],
    ['unknown field', { amout: '10' }, 'amout'],
    ['unknown parent', { parentId: '00000000-0000-4000-8000-000000000000' }, 'parentId'],
    ['parent that is not a uuid', { parentId: 'nope' }, 'parentId'],
    ['alerts that are not a list', { alerts: { threshold: 50 } }, 'alerts'],
    ['alert threshold of zero', { alerts: [{ threshold: 0, actions: ['notify'] }] }, 'alerts.0.threshold'],
    ['alert threshold as a string', { alerts: [{ threshold: '50', actions: ['notify'] }] }, 'alerts.0.threshold'],
    ['alert without actions', { alerts: [{ threshold: 50, actions: [] }] }, 'alerts.0.actions'],
    ['unknown alert action', { alerts: [{ threshold: 50, actions: ['email'] }] }, 'alerts.0.actions.0'],
    ['repeated alert action', { alerts: [{ threshold: 50, actions: ['notify', 'notify'] }] }, 'alerts.0.actions'],
    ['unknown alert field', { alerts: [{ threshold: 50, actions: ['notify'], level: 'high' }] }, 'alerts.0.level'],
    ['two alerts at one threshold', { alerts: [{ threshold: 50, actions: ['notify'] }, { threshold: 50, actions: ['block-all'] }] }, 'alerts'],
    ['an empty channel name', { alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: [''] }] }, 'alerts.0.notificationChannels.0']
  ]
  for (const [name, change, field] of cases) {
    const response = await admin({ method: 'POST', url: PREFIX, body: budgetRequest(change) })
    t.equal(response.statusCode, 400, `create: ${name}`)
    t.match(response.json(), { code: /^BUDGET_ERR_/, field, message: new RegExp(`'?${field.split('.')[0]}`) }, `create: ${name} names ${field}`)
    if (Object.values(change).includes(undefined)) continue // PUT leaves absent fields as they are
    const update = await admin({ method: 'PUT', url: `${PREFIX}/${existing.id}`, body: budgetRequest(change) })
    t.equal(update.statusCode, 400, `update: ${name}`)
    t.equal(update.json().field, field, `update: ${name} names ${field}`)
  }

  const emptyUpdate = await admin({ method: 'PUT', url: `${PREFIX}/${existing.id}`, body: {} })
  t.equal(emptyUpdate.statusCode, 400, 'an empty update')
  const notJson = await admin({ method: 'POST', url: PREFIX, payload: '{"name":', headers: { 'content-type': 'application/json' } })
  t.equal(notJson.statusCode, 400, 'a body that is not JSON')
  t.equal(notJson.json().code, 'FST_ERR_CTP_INVALID_JSON_BODY')
  const plainText = await admin({ method: 'POST', url: PREFIX, payload: '<budget/>', headers: { 'content-type': 'application/xml' } })
  t.equal(plainText.statusCode, 415, 'a body of a type the API does not take')
  t.equal(plainText.json().code, 'FST_ERR_CTP_INVALID_MEDIA_TYPE')
  const noBody = await admin({ method: 'POST', url: PREFIX })
  t.equal(noBody.statusCode, 400, 'no body at all')
  const badCascade = await admin({ method: 'DELETE', url: `${PREFIX}/${existing.id}?cascade=perhaps` })
  t.equal(badCascade.statusCode, 400)
  t.equal(badCascade.json().field, 'cascade')

  t.same(await snapshotTables(sql), before, 'no refused request changed anything')
})
