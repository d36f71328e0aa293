import t from 'tap'
import { PREFIX, budgetRequest, buildApp, snapshotTables, type TestApp } from './fixtures/app.js'

async function setup (t: Parameters<typeof buildApp>[0]) {
  const app = await buildApp(t)
  const create = async (body: Record<string, unknown>) => await app.admin({ method: 'POST', url: PREFIX, body: budgetRequest(body) })
  const createOk = async (body: Record<string, unknown>) => {
    const response = await create(body)
    if (response.statusCode !== 201) throw new Error(`create failed: ${response.body}`)
    return response.json() as { id: string, parentId: string | null }
  }
  const update = async (id: string, body: Record<string, unknown>) => await app.admin({ method: 'PUT', url: `${PREFIX}/${id}`, body })
  return { ...app, create, createOk, update }
}

t.test('a child lives inside its parent: same currency, no larger amount, no longer period', async (t) => {
  const { create, createOk, sql } = await setup(t)
  const parent = await createOk({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '1000', period: 'monthly' })
  const before = await snapshotTables(sql)
  const refused: Array<[string, Record<string, unknown>, string, string]> = [
    ['another currency', { currency: 'EUR' }, 'BUDGET_ERR_CURRENCY_MISMATCH', 'currency'],
    ['a larger amount', { amount: '1000.0000000001' }, 'BUDGET_ERR_EXCEEDS_PARENT', 'amount'],
    ['a longer period', { period: 'quarterly', amount: '10' }, 'BUDGET_ERR_EXCEEDS_PARENT', 'period'],
    ['a custom period longer than a month', { period: 'custom', startDate: '2024-01-01', endDate: '2024-02-02' }, 'BUDGET_ERR_EXCEEDS_PARENT', 'period']
  ]
  for (const [name, change, code, field] of refused) {
    const response = await create({ parentId: parent.id, ...change })
    t.equal(response.statusCode, 400, name)
    t.match(response.json(), { code, field }, `${name}: ${code} on ${field}`)
  }
  t.same(await snapshotTables(sql), before, 'refused children were not written')

  for (const [name, change] of [
    ['an equal amount and period', { amount: '1000' }],
    ['a shorter period', { period: 'daily', amount: '40' }],
    ['a custom period of twenty days', { period: 'custom', startDate: '2024-01-01', endDate: '2024-01-21' }]
  ] as const) {
    const response = await create({ parentId: parent.id, ...change })
    t.equal(response.statusCode, 201, name)
    t.equal(response.json().parentId, parent.id)
  }
})

t.test('a period under a custom parent compares with the parent\'s length', async (t) => {
  const { create, createOk } = await setup(t)
  const sprint = await createOk({ period: 'custom', startDate: '2024-01-01', endDate: '2024-01-15', recurring: false })
  t.equal((await create({ parentId: sprint.id, period: 'weekly' })).statusCode, 201)
  t.match((await create({ parentId: sprint.id, period: 'monthly' })).json(), { code: 'BUDGET_ERR_EXCEEDS_PARENT', field: 'period' })
})

t.test('a change to a parent must still hold its children', async (t) => {
  const { createOk, update, sql } = await setup(t)
  const parent = await createOk({ amount: '1000', period: 'monthly' })
  await createOk({ parentId: parent.id, amount: '600', period: 'weekly' })
  const before = await snapshotTables(sql)
  t.match((await update(parent.id, { amount: '500' })).json(), { code: 'BUDGET_ERR_EXCEEDS_PARENT', field: 'amount' })
  t.match((await update(parent.id, { period: 'daily' })).json(), { code: 'BUDGET_ERR_EXCEEDS_PARENT', field: 'period' })
  t.match((await update(parent.id, { currency: 'EUR' })).json(), { code: 'BUDGET_ERR_CURRENCY_MISMATCH', field: 'currency' })
  t.same(await snapshotTables(sql), before, 'nothing changed')
  t.equal((await update(parent.id, { amount: '600' })).statusCode, 200, 'down to the child\'s amount is fine')
})

t.test('no cycles: a budget cannot become its own ancestor', async (t) => {
  const { createOk, update, sql } = await setup(t)
  const root = await createOk({ name: 'root', amount: '1000' })
  const middle = await createOk({ name: 'middle', amount: '500', parentId: root.id })
  const leaf = await createOk({ name: 'leaf', amount: '100', parentId: middle.id })
  const before = await snapshotTables(sql)
  for (const [name, id, parentId] of [['itself', root.id, root.id], ['its child', root.id, middle.id], ['its grandchild', root.id, leaf.id]]) {
    const response = await update(id!, { parentId })
    t.equal(response.statusCode, 409, `parent = ${name}`)
    t.equal(response.json().code, 'BUDGET_ERR_HIERARCHY_CYCLE')
  }
  t.same(await snapshotTables(sql), before)
  const moved = await update(leaf.id, { parentId: root.id })
  t.equal(moved.statusCode, 200, 'moving up the tree is fine')
  t.equal(moved.json().rootId, root.id, 'and keeps its root')
  const beforeLeaving = await snapshotTables(sql)
  const left = await update(leaf.id, { parentId: null })
  t.equal(left.statusCode, 409, 'leaving the tree would change its root: refused')
  t.match(left.json(), { code: 'BUDGET_ERR_MOVE_ACROSS_TREES', field: 'parentId' })
  t.same(await snapshotTables(sql), beforeLeaving, 'and changed nothing')
})

t.test('two concurrent moves that together would make a cycle: one wins, one is refused', async (t) => {
  const { createOk, update, sql } = await setup(t)
  for (let round = 0; round < 5; round++) {
    // Siblings under one root: each may move under the other (a move stays in its tree), not both.
    const root = await createOk({ name: `root${round}`, amount: '1000' })
    const a = await createOk({ name: `a${round}`, parentId: root.id, amount: '100' })
    const b = await createOk({ name: `b${round}`, parentId: root.id, amount: '100' })
    const results = await Promise.all([update(a.id, { parentId: b.id }), update(b.id, { parentId: a.id })])
    t.same(results.map((r) => r.statusCode).sort(), [200, 409], `round ${round}`)
    t.equal(results.find((r) => r.statusCode === 409)!.json().code, 'BUDGET_ERR_HIERARCHY_CYCLE')
    const rows = await sql`select id, parent_id from budget_definitions where id in ${sql([a.id, b.id])}`
    t.equal(rows.filter((row) => row.parent_id === root.id).length, 1, 'exactly one of them is still under the root')
  }
})

t.test('deleting a budget with children is refused unless asked to cascade', async (t) => {
  const { admin, createOk, sql } = await setup(t)
  const root = await createOk({ name: 'root', amount: '1000' })
  const child = await createOk({ name: 'child', amount: '500', parentId: root.id })
  const grandchild = await createOk({ name: 'grandchild', amount: '100', parentId: child.id })
  const other = await createOk({ name: 'other', amount: '100' })
  const before = await snapshotTables(sql)
  const refused = await admin({ method: 'DELETE', url: `${PREFIX}/${root.id}` })
  t.equal(refused.statusCode, 409)
  t.match(refused.json(), { code: 'BUDGET_ERR_HAS_CHILDREN', message: /1 child budget/ })
  t.same(await snapshotTables(sql), before, 'nothing archived')

  t.equal((await admin({ method: 'DELETE', url: `${PREFIX}/${root.id}?cascade=true` })).statusCode, 204)
  for (const id of [root.id, child.id, grandchild.id]) {
    t.equal((await admin({ method: 'GET', url: `${PREFIX}/${id}` })).statusCode, 404, 'the subtree is gone')
  }
  t.equal((await admin({ method: 'GET', url: `${PREFIX}/${other.id}` })).statusCode, 200, 'other budgets stay')
  const [{ count }] = await sql`select count(*)::int from budget_definitions where deleted_at is not null` as unknown as [{ count: number }]
  t.equal(count, 3, 'archived, not destroyed')
})

t.test('a deleted budget cannot become a parent', async (t) => {
  const { admin, create, createOk } = await setup(t)
  const gone = await createOk({})
  await admin({ method: 'DELETE', url: `${PREFIX}/${gone.id}` })
  t.match((await create({ parentId: gone.id })).json(), { code: 'BUDGET_ERR_PARENT_NOT_FOUND', field: 'parentId' })
})

t.test('the registry on the instance applies the same rules', async (t) => {
  const { app }: TestApp = await buildApp(t)
  const parent = await app.budgetRegistry.createBudget({ ...budgetRequest(), scopeType: 'team', period: 'monthly' }, 'ops@example.com')
  t.equal(parent.createdBy, 'ops@example.com')
  await t.rejects(app.budgetRegistry.createBudget({ ...budgetRequest({ parentId: parent.id, currency: 'GBP' }), scopeType: 'user', period: 'daily' }), { code: 'BUDGET_ERR_CURRENCY_MISMATCH' })
  await t.rejects(app.budgetRegistry.getBudget('nope'), { code: 'BUDGET_ERR_NOT_FOUND', statusCode: 404 })
  t.same((await app.budgetRegistry.getBudgetsByScope('team', 'team-a')).map((b) => b.id), [parent.id])
})

t.test('one maximum depth (16), enforced on create and on move, and every walk reaches the whole tree', async (t) => {
  const { app, create, createOk, update, sql, admin } = await setup(t)
  const [{ maxDepth }] = (await sql<Array<{ maxDepth: number }>>`select budget_max_depth() as "maxDepth"`) as unknown as [{ maxDepth: number }]
  t.equal(maxDepth, 16, 'the documented maximum')
  // A chain as deep as allowed: a root, then 15 descendants, each under the last.
  const chain: Array<{ id: string }> = [await createOk({ name: 'level-1', scopeType: 'organization', scopeId: 'acme', amount: '1000' })]
  for (let level = 2; level <= maxDepth; level++) {
    chain.push(await createOk({ name: `level-${level}`, scopeId: `team-${level}`, parentId: chain[chain.length - 1]!.id, amount: '1000' }))
  }
  const root = chain[0]!
  const leaf = chain[chain.length - 1]!

  const before = await snapshotTables(sql)
  const tooDeep = await create({ name: 'level-17', scopeId: 'team-17', parentId: leaf.id })
  t.equal(tooDeep.statusCode, 400, 'a 17th level is refused')
  t.match(tooDeep.json(), { code: 'BUDGET_ERR_HIERARCHY_TOO_DEEP', field: 'parentId', message: /17 budgets deep, more than the maximum of 16/ })

  const cycle = await update(root.id, { parentId: leaf.id })
  t.equal(cycle.statusCode, 409, 'the root under its deepest descendant is a cycle, found however deep the leaf is')
  t.equal(cycle.json().code, 'BUDGET_ERR_HIERARCHY_CYCLE')
  t.same(await snapshotTables(sql), before, 'neither refusal changed anything')

  // A two-level subtree in the same tree (a move stays in its tree), under the root.
  const pair = await createOk({ name: 'pair', scopeId: 'pair', parentId: root.id, amount: '10' })
  await createOk({ name: 'pair-child', scopeId: 'pair-child', parentId: pair.id, amount: '10' })
  const movedTooDeep = await update(pair.id, { parentId: chain[maxDepth - 2]!.id })
  t.equal(movedTooDeep.statusCode, 400, 'moving a two-level subtree under level 15 would make 17 levels')
  t.equal(movedTooDeep.json().code, 'BUDGET_ERR_HIERARCHY_TOO_DEEP')
  t.equal((await update(pair.id, { parentId: chain[maxDepth - 3]!.id })).statusCode, 200, 'under level 14 it fits: 16 levels')
  t.equal((await update(pair.id, { parentId: root.id })).statusCode, 200)

  // Usage on the leaf counts toward all 16 budgets of its line.
  const record = await admin({ method: 'POST', url: `${PREFIX}/${leaf.id}/usage`, body: { amount: '1.5', currency: 'USD' } })
  t.equal(record.statusCode, 201)
  const [{ counted }] = (await sql<Array<{ counted: number }>>`select count(*)::int as counted from budget_usage_allocations where usage_id = ${record.json().id}`) as unknown as [{ counted: number }]
  t.equal(counted, maxDepth, 'allocated to the leaf and every ancestor')
  t.equal((await app.budgetTracker.getBudgetStatus(root.id)).currentAmount, '1.5', 'the root counts it')

  const hierarchy = await admin({ method: 'GET', url: `${PREFIX}/hierarchy/team/team-${maxDepth}` })
  let depth = 0
  for (let node = hierarchy.json().roots[0]; node !== undefined; node = node.children[0]) depth++
  t.equal(depth, maxDepth, 'the hierarchy view shows the whole line')

  const deleted = await admin({ method: 'DELETE', url: `${PREFIX}/${root.id}?cascade=true` })
  t.equal(deleted.statusCode, 204)
  const [{ archived }] = (await sql<Array<{ archived: number }>>`select count(*)::int as archived from budget_definitions where deleted_at is not null`) as unknown as [{ archived: number }]
  t.equal(archived, maxDepth + 2, 'a cascading delete archives every level, and the pair under the root')
})

t.test('the currency lock counts spend that came through allocations and live holds, not only a budget\'s own records', async (t) => {
  const { app, createOk, update, sql } = await setup(t)
  const team = await createOk({ name: 'team', scopeType: 'team', scopeId: 'platform', amount: '100' })
  const alice = await createOk({ name: 'alice', scopeType: 'user', scopeId: 'alice', amount: '10' })
  // A gated call by alice in the platform team: recorded on alice's budget, counted toward the team's.
  const reservation = await app.budgetIntegration.reserveCall({ user: 'alice', team: 'platform' }, '0.5')
  t.not(reservation.reservationId, null)
  const held = await update(team.id, { currency: 'EUR' })
  t.equal(held.statusCode, 409, 'a live hold in USD locks the currency')
  await app.budgetIntegration.settleCall(reservation.reservationId!, '0.25')
  const [{ own }] = (await sql<Array<{ own: number }>>`select count(*)::int as own from budget_usage_records where budget_id = ${team.id}`) as unknown as [{ own: number }]
  t.equal(own, 0, 'the team has no usage record of its own')
  const response = await update(team.id, { currency: 'EUR' })
  t.equal(response.statusCode, 409)
  t.match(response.json(), { code: 'BUDGET_ERR_CURRENCY_LOCKED', field: 'currency' })
  t.equal((await app.budgetRegistry.getBudget(team.id)).currency, 'USD')
  t.equal((await update(alice.id, { currency: 'EUR' })).statusCode, 409, 'and the user budget the record is on')
})
