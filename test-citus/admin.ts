// The admin API and the gate's line load on a distributed schema (`npm run test:citus`): what of them runs on
// Citus today. Budgets are created through the registry (its global version bumped from the coordinator, each
// tree's by trigger on its shard, the audit entry routed by the budget's root), and a caller's line is loaded
// across two trees (budget_line); docs/scaling.md lists what does not run yet.
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { createHoldRepository } from '../lib/gate/hold-repository.js'
import { createLeaseRepository } from '../lib/gate/lease-repository.js'
import { createLineRepository } from '../lib/gate/line-repository.js'
import { createStatusRepository } from '../lib/usage/status-repository.js'
import { findViolations } from '../test/fixtures/invariants.js'
import { adminHeaders as headers, distributedApp } from '../test/fixtures/citus-app.js'
import { PREFIX } from '../test/fixtures/app.js'

t.test('a root budget and a child created through the admin API, each audited in its tree, both trees\' versions bumped', async (t) => {
  const { sql, app, create } = await distributedApp(t)
  const global = (await sql`select version::text from budget_definitions_version`)[0]!.version as string

  const org = await create({ name: 'org', scopeType: 'organization', scopeId: 'acme' })
  t.equal(org.statusCode, 201, org.body)
  const team = await create({ name: 'team', scopeType: 'team', scopeId: 'platform', parentId: org.json().id, amount: '50' })
  t.equal(team.statusCode, 201, team.body)
  const other = await create({ name: 'other org', scopeType: 'organization', scopeId: 'globex' })
  t.equal(other.statusCode, 201, other.body)

  t.equal(team.json().rootId, org.json().id, 'the child is in its parent\'s tree')
  const audit = await sql<Array<{ budgetId: string, rootId: string, action: string }>>`
    select budget_id as "budgetId", root_id as "rootId", action from budget_audit_log order by id`
  t.same(audit, [
    { budgetId: org.json().id, rootId: org.json().id, action: 'create' },
    { budgetId: team.json().id, rootId: org.json().id, action: 'create' },
    { budgetId: other.json().id, rootId: other.json().id, action: 'create' }
  ], 'each create audited, under its tree\'s root')
  const trees = await sql<Array<{ rootId: string, version: string }>>`
    select root_id as "rootId", version::text from budget_tree_versions order by version desc, root_id`
  t.same(new Map(trees.map((row) => [row.rootId, row.version])), new Map([[org.json().id, '2'], [other.json().id, '1']]), 'each tree\'s version counts its creates')
  t.equal((await sql`select version::text from budget_definitions_version`)[0]!.version, String(BigInt(global) + 6n), 'the global version: twice a change (in its transaction, and again once every node has committed it)')

  const listed = await app.inject({ url: PREFIX, headers })
  t.equal(listed.statusCode, 200, listed.body)
  t.same(listed.json().budgets.map((budget: { name: string }) => budget.name).sort(), ['org', 'other org', 'team'], 'the list reads every tree')
  const got = await app.inject({ url: `${PREFIX}/${team.json().id}`, headers })
  t.equal(got.json().parentId, org.json().id, 'a budget read by id')
})

t.test('a caller\'s line across two trees, loaded on the coordinator: each budget once, ranked, with its tree\'s version', async (t) => {
  const { sql, create: post } = await distributedApp(t)
  const create = async (body: Record<string, unknown>) => {
    const response = await post(body)
    t.equal(response.statusCode, 201)
    return response.json() as { id: string }
  }
  const org = await create({ name: 'org', scopeType: 'organization', scopeId: 'acme' })
  const team = await create({ name: 'team', scopeType: 'team', scopeId: 'platform', parentId: org.id, amount: '50' })
  const user = await create({ name: 'user', scopeType: 'user', scopeId: 'ada', amount: '5', filters: { models: ['gpt-4o*'] } })
  const lines = createLineRepository(sql)
  const loaded = await lines.loadLine({ scopes: [{ type: 'user', id: 'ada' }, { type: 'team', id: 'platform' }], model: 'gpt-4o-mini' }, 'USD')
  t.same(loaded.line.map((budget) => [budget.name, budget.scopeMatched, budget.scopeRank]), [['user', true, 101], ['team', true, 201], ['org', false, 202]],
    'the user\'s budget, its team\'s, and the team\'s parent reached as an ancestor')
  t.same(new Map(loaded.trees.map((tree) => [tree.rootId, tree.version])), new Map([[org.id, 2], [user.id, 1]]), 'each tree\'s version, as its creates left it')
  const filtered = await lines.loadLine({ scopes: [{ type: 'user', id: 'ada' }, { type: 'team', id: 'platform' }], model: 'claude-3-haiku' }, 'USD')
  t.same(filtered.line.map((budget) => budget.name), ['team', 'org'], 'a model the user\'s filter leaves out: its budget does not apply')
  const windows = await sql`select budget_id from budget_status_cache order by budget_id`
  t.same(windows.map((row) => row.budget_id).sort(), [org.id, team.id, user.id].sort(), 'each budget\'s window row made once')
  const versions = await lines.versions([org.id, user.id, team.id])
  t.same(versions.trees.map((tree) => tree.version), [2, 1, 0], 'the versions read for the trees asked (a budget that is no root: none, 0)')
})

t.test('a budget\'s window read for its status, and its window changed while a hold and a lease are live: carried on its tree\'s shard', async (t) => {
  const { sql, app, create } = await distributedApp(t)
  const created = await create({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '100' })
  t.equal(created.statusCode, 201, created.body)
  const org = created.json() as { id: string }
  const now = new Date()
  const window = await createStatusRepository(sql).findWindow(org.id, now)
  t.equal(window?.state, 'active', 'the status window read (budget_status_windows)')
  t.ok(window!.periodStart <= now && now < window!.periodEnd, 'the month of now')

  const { line } = await createLineRepository(sql).loadLine({ scopes: [{ type: 'organization', id: 'acme' }], model: 'gpt-4o-mini' }, 'USD', { byTree: true })
  const [held] = await createHoldRepository(sql).holdBatch([{ reservationId: randomUUID(), requestId: randomUUID(), amount: '2', line }], 'USD', 60_000)
  t.ok(held!.reserved, 'a hold')
  const lease = await createLeaseRepository(sql).takeLease(randomUUID(), line, 'USD', 60_000, '1', '0.01')
  t.ok(lease !== null && Number(lease.granted) > 0, 'a lease')
  const changed = await app.inject({ method: 'PUT', url: `${PREFIX}/${org.id}`, headers, body: { period: 'daily' } })
  t.equal(changed.statusCode, 200, changed.body)
  const day = await createStatusRepository(sql).findWindow(org.id, new Date())
  const rows = await sql<Array<{ start: Date }>>`select distinct period_start as start from budget_reservations where root_id = ${org.id}`
  t.same(rows.map((row) => row.start.toISOString()), [day!.periodStart.toISOString()], 'the hold and the lease carried to the daily window')
  // the hold and the lease are live on purpose: every other invariant holds
  t.same((await findViolations(sql)).filter((violation) => !violation.startsWith('reservation ')), [],
    'each window holds what its reservations hold, equals its allocations, no hard budget over its limit')
})

t.test('usage through the API on two trees: recorded once, replayed, counted toward another tree, read back by its readers', async (t) => {
  const { sql, app, create } = await distributedApp(t)
  const org = (await create({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '100' })).json() as { id: string }
  const team = (await create({
    name: 'team', scopeType: 'team', scopeId: 'platform', parentId: org.id, amount: '50',
    // the projected alert sends its window's records down budget_record_spend's step-wise path, measured one by one
    alerts: [{ threshold: 50, actions: ['notify'] }, { threshold: 95, basis: 'projected', actions: ['notify'] }]
  })).json() as { id: string }
  const user = (await create({ name: 'user', scopeType: 'user', scopeId: 'ada', amount: '20' })).json() as { id: string }
  const get = async (url: string) => await app.inject({ method: 'GET', url: `${PREFIX}/${url}`, headers })
  const post = async (budgetId: string, body: Record<string, unknown>) =>
    await app.inject({ method: 'POST', url: `${PREFIX}/${budgetId}/usage`, headers, body: { currency: 'USD', source: 'test', ...body } })

  const first = await post(team.id, { amount: '30', metadata: { requestId: 'call-1', modelId: 'gpt-4o' } })
  t.equal(first.statusCode, 201, first.body)
  const again = await post(team.id, { amount: '30', metadata: { requestId: 'call-1', modelId: 'gpt-4o' } })
  t.equal(again.statusCode, 200, 'the retry is replayed')
  t.equal(again.json().id, first.json().id, 'as the first record')
  const conflict = await post(team.id, { amount: '31', metadata: { requestId: 'call-1', modelId: 'gpt-4o' } })
  t.equal(conflict.json().code, 'BUDGET_ERR_IDEMPOTENCY_CONFLICT', 'another amount under its key is refused')
  // a call whose scopes reach both trees: recorded in the team's tree, counted toward the user's too (as the gate's recordModelCall does)
  const both = await app.budgetTracker.record({ budgetId: team.id, amount: '10', currency: 'USD', metadata: { requestId: 'call-2', modelId: 'o3' }, alsoCountsToward: [user.id] })
  t.equal(both.replayed, false)
  // backdated into last month's window, which has no row yet
  const lastMonth = new Date(Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), 0, 12))
  const backdated = await post(team.id, { amount: '4', occurredAt: lastMonth.toISOString(), metadata: { requestId: 'call-3' } })
  t.equal(backdated.statusCode, 201, backdated.body)
  const missingRate = await post(team.id, { amount: '1', currency: 'EUR', metadata: { requestId: 'call-4' } })
  t.equal(missingRate.json().code, 'BUDGET_ERR_EXCHANGE_RATE_MISSING', 'no rate: refused, naming the pair')

  const spent = async (id: string) => (await get(`${id}/status`)).json() as { currentAmount: string, projectedTotal: string, burnRate: string, activeAlerts: unknown[] }
  t.match(await spent(team.id), { currentAmount: '40', projectedTotal: String, burnRate: String }, 'the team: both records of this month, with its forecast')
  t.equal((await spent(org.id)).currentAmount, '40', 'its parent in the same tree')
  t.equal((await spent(user.id)).currentAmount, '10', 'the user in the other tree: the call that reached it')
  const [past] = await sql<Array<{ spent: string }>>`
    select current_amount::text as spent from budget_status_cache where root_id = ${org.id} and budget_id = ${team.id} and period_start < date_trunc('month', now())`
  t.equal(past?.spent, '4.0000000000', 'last month\'s window row made for the backdated record')

  const alerts = (await get(`${team.id}/alerts`)).json() as { alerts: Array<{ threshold: number, spent: string }> }
  t.ok(alerts.alerts.some((alert) => alert.threshold === 50 && alert.spent === '30'), 'the 50% crossing, at the spend that crossed it')
  const page = (await get(`${team.id}/usage?limit=1`)).json() as { records: Array<{ id: string }>, nextCursor: string }
  t.equal(page.records.length, 1)
  const rest = (await get(`${team.id}/usage?cursor=${page.nextCursor}`)).json() as { records: Array<{ id: string }> }
  t.same([...page.records, ...rest.records].map((record) => record.id).sort(), [first.json().id, both.record.id].sort(), 'both records of the month, a page at a time')
  t.same((await get(`${team.id}/usage?modelId=o3`)).json().records.map((record: { id: string }) => record.id), [both.record.id], 'filtered by model')
  const summary = (await get(`${team.id}/usage/summary`)).json() as { total: string, count: number, byModel: Array<{ modelId: string, total: string }> }
  t.match(summary, { total: '40', count: 2 }, 'the summary')
  t.same(summary.byModel.map((group) => [group.modelId, group.total]), [['gpt-4o', '30'], ['o3', '10']])
  t.equal((await get(`${user.id}/usage`)).json().records[0]?.id, both.record.id, 'the user\'s usage: the record of the other tree that counts toward it')

  await sql`update budget_status_cache set current_amount = 1 where root_id = ${org.id} and budget_id = ${team.id} and period_start >= date_trunc('month', now())`
  const refreshed = await app.inject({ method: 'POST', url: `${PREFIX}/${team.id}/refresh-cache`, headers })
  t.equal(refreshed.json().currentAmount, '40', 'refresh-cache recomputes it from its allocations')
  t.same(await findViolations(sql), [], 'no hold left, each window equal to its allocations, no hard budget over its limit')
})

t.test('a caller\'s standings across two trees: checkCaller, the caller\'s summary and check-constraints read every budget in its tree', async (t) => {
  const { sql, app, create } = await distributedApp(t)
  const org = (await create({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '100' })).json() as { id: string }
  const team = (await create({ name: 'team', scopeType: 'team', scopeId: 'platform', parentId: org.id, amount: '50' })).json() as { id: string }
  const user = (await create({ name: 'user', scopeType: 'user', scopeId: 'ada', amount: '40' })).json() as { id: string }
  // a tree of its own whose window has no row yet: its spend is summed from its allocations
  const project = (await create({ name: 'project', scopeType: 'project', scopeId: 'apollo', amount: '30', maxCallCost: '2' })).json() as { id: string }
  t.equal((await sql`select count(distinct root_id)::int as n from budget_definitions`)[0]!.n, 3, 'three trees')
  await app.budgetTracker.record({ budgetId: team.id, amount: '30', currency: 'USD', metadata: { requestId: 'call-1' }, alsoCountsToward: [user.id] })
  await app.budgetTracker.record({ budgetId: project.id, amount: '5', currency: 'USD', metadata: { requestId: 'call-2' } })
  await sql`delete from budget_status_cache where root_id = ${project.id}`
  const integration = app.budgetIntegration
  const caller = { organization: 'acme', team: 'platform', user: 'ada', project: 'apollo' }

  const check = await integration.checkCaller(caller, '1')
  t.equal(check.canProceed, true, check.reason)
  t.same(check.budgets.map((budget) => [budget.name, budget.currentAmount, budget.remaining]).sort(),
    [['org', '30', '70'], ['project', '5', '25'], ['team', '30', '20'], ['user', '30', '10']].sort(), 'each budget of the three trees with its spend')
  t.match(await integration.checkCaller({ user: 'ada' }, '11'), { canProceed: false, bindingBudgetId: user.id, remaining: '10' }, 'the user\'s tree alone: 11 past its 10 left, refused')
  const capped = await integration.checkCaller({ project: 'apollo' }, '3')
  t.match(capped, { canProceed: false, bindingBudgetId: project.id }, 'the project\'s cap on one call, read in its tree')

  const summary = await integration.getCallerSummary({ organization: 'acme', team: 'platform', project: 'apollo' })
  t.same(summary.budgets.map((budget) => [budget.name, budget.currentAmount, budget.scopeMatched]).sort(),
    [['org', '30', true], ['project', '5', true], ['team', '30', true]].sort(), 'the summary: each budget with its status')
  t.equal(summary.bindingBudgetId, team.id, 'the team binds (20 left)')

  const constraints = await app.inject({ method: 'POST', url: `${PREFIX}/${team.id}/check-constraints`, headers, body: { estimatedCost: '25' } })
  t.equal(constraints.statusCode, 200, constraints.body)
  t.match(constraints.json(), { canProceed: false, bindingBudgetId: team.id, remaining: '20' }, 'check-constraints: the team and its parent, read in their tree')
  t.same(constraints.json().budgets.map((budget: { budgetId: string }) => budget.budgetId), [team.id, org.id], 'the budget, then its ancestor')
  t.same(await findViolations(sql), [], 'no hold left, each window equal to its allocations, no hard budget over its limit')
})
