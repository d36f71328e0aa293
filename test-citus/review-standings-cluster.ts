// Review of budget_standings on the cluster (`npm run test:citus -- test-citus/review-standings-cluster.ts`):
// a caller's standings across three trees (one three levels deep, one whose window has no cache row, one in
// another currency), approvals and projected crossings in force, an estimate past the money range; the
// lineage of a leaf; and the public readers with hostile input. Expected numbers are written out by hand.
import t, { type Test } from 'tap'
import { createStandingRepository } from '../lib/gate/standing-repository.js'
import { findViolations } from '../test/fixtures/invariants.js'
import { adminHeaders as headers, distributedApp as distributedAppOnCluster } from '../test/fixtures/citus-app.js'
import { PREFIX, snapshotTables } from '../test/fixtures/app.js'

/** The distributed app, its budgets created or thrown. */
async function distributedApp (t: Test) {
  const { sql, app, createBudget } = await distributedAppOnCluster(t)
  return { sql, app, create: createBudget }
}

t.test('standings across three trees on the cluster: each budget\'s numbers as written out', async (t) => {
  const { sql, app, create } = await distributedApp(t)
  const org = await create({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '100' })
  const team = await create({ name: 'team', scopeType: 'team', scopeId: 'platform', parentId: org.id, amount: '50' })
  const user = await create({ name: 'user', scopeType: 'user', scopeId: 'ada', parentId: team.id, amount: '40' })
  const project = await create({ name: 'project', scopeType: 'project', scopeId: 'apollo', amount: '30', maxCallCost: '2', enforcement: 'soft' })
  const euro = await create({ name: 'euro user', scopeType: 'user', scopeId: 'ada', amount: '40', currency: 'EUR' })
  const rate = await app.inject({ method: 'PUT', url: `${PREFIX}/exchange-rates/USD/EUR`, headers, body: { rate: '0.5', effectiveFrom: '2024-01-01T00:00:00Z' } })
  t.equal(rate.statusCode < 300, true, rate.body)
  t.equal((await sql`select count(distinct root_id)::int as n from budget_definitions`)[0]!.n, 3, 'three trees')

  await app.budgetTracker.record({ budgetId: user.id, amount: '10', currency: 'USD', metadata: { requestId: 'call-1' } })
  await app.budgetTracker.record({ budgetId: project.id, amount: '5', currency: 'USD', metadata: { requestId: 'call-2' } })
  await app.budgetTracker.record({ budgetId: euro.id, amount: '4', currency: 'EUR', metadata: { requestId: 'call-3' } })
  // the project's window loses its row: its spend is summed from its allocations
  await sql`delete from budget_status_cache where root_id = ${project.id}`
  const [window] = await sql`select period_start from budget_status_cache where root_id = ${org.id} and budget_id = ${team.id}`
  // an approval in force on the team (to 15), one expired on the org; a projected crossing on the org, a resolved one on the user
  await sql`insert into budget_approvals (root_id, budget_id, period_start, amount, spent_at_approval, approved_by, expires_at)
            values (${org.id}, ${team.id}, ${window!.period_start}, 5, 10, 'reviewer', now() + interval '1 hour'),
                   (${org.id}, ${org.id}, ${window!.period_start}, 5, 10, 'reviewer', now() - interval '1 hour')`
  await sql`insert into budget_alert_history (root_id, budget_id, period_start, threshold, basis, actions, spent, limit_amount, resolved_at)
            values (${org.id}, ${org.id}, ${window!.period_start}, 90, 'projected', ${['notify']}::text[], 95, 100, null),
                   (${org.id}, ${user.id}, ${window!.period_start}, 90, 'projected', ${['block-all']}::text[], 39, 40, now())`

  const standings = createStandingRepository(sql)
  const scopes = [{ type: 'organization', id: 'acme' }, { type: 'team', id: 'platform' }, { type: 'user', id: 'ada' }, { type: 'project', id: 'apollo' }] as any
  const read = await standings.listApplicable({ scopes, model: null }, 'USD', '3')
  const [first, second] = [user.id, euro.id].sort()
  t.same(read.terms.map((b) => [b.budgetId, b.rootId, b.scopeMatched, b.scopeRank]), [
    [org.id, org.id, true, 101], [team.id, org.id, true, 201],
    [first, first === user.id ? org.id : euro.id, true, 301], [second, second === user.id ? org.id : euro.id, true, 301],
    [project.id, project.id, true, 401]
  ], 'every budget of the three trees, matched first, by rank and id')
  const byId = new Map(read.numbers.map((n) => [n.budgetId, n]))
  const numbers = (id: string) => { const n = byId.get(id)!; return [n.currentAmount, n.reservedAmount, n.approvedThrough, n.projectedActions, n.estimate, n.fits, n.overCap, n.outOfRange] }
  t.same(numbers(org.id), ['10', '0', null, ['notify'], '3', true, false, false], 'org: 10 spent, its expired approval not in force, its projected crossing')
  t.same(numbers(team.id), ['10', '0', '15', [], '3', true, false, false], 'team: approved to 15')
  t.same(numbers(user.id), ['10', '0', null, [], '3', true, false, false], 'user: its resolved crossing not read')
  t.same(numbers(euro.id), ['4', '0', null, [], '1.5', true, false, false], 'the euro budget: 3 USD read as 1.5 EUR')
  t.same(numbers(project.id), ['5', '0', null, [], '3', false, true, false], 'project: summed without a row, over its cap of 2')

  const huge = await standings.listApplicable({ scopes, model: null }, 'USD', '999999999999999994')
  t.same(huge.numbers.map((n) => [n.budgetId, n.estimate, n.outOfRange, n.fits]).sort(), [
    [org.id, null, true, false], [team.id, null, true, false], [user.id, null, true, false],
    [euro.id, '499999999999999997', false, false], [project.id, '999999999999999994', false, false]
  ].sort(), 'past the money range with 10 spent: out of range; the euro budget (half of it) and the project (5 spent: 999999999999999999) hold it, the project\'s cap refuses')
  const gbp = await standings.listApplicable({ scopes, model: null }, 'GBP', '1')
  t.same(gbp.numbers.map((n) => [n.estimate, n.outOfRange, n.fits]), Array(5).fill([null, false, false]), 'no GBP rate: no estimate, not out of range, no fit')

  const lineage = await standings.listLineage(user.id, 'USD', '45')
  t.same(lineage.terms.map((b) => [b.budgetId, b.scopeMatched, b.scopeRank]), [[user.id, true, 1], [team.id, false, 2], [org.id, false, 3]], 'the lineage: the user, then its ancestors')
  t.same(lineage.numbers.map((n) => [n.currentAmount, n.fits, n.approvedThrough]), [['10', false, null], ['10', false, '15'], ['10', true, null]], '45 fits only the org')
  t.same((await standings.listLineage(project.id, 'USD', '1')).numbers.map((n) => n.currentAmount), ['5'], 'the project alone, without a row')
  t.same((await standings.listApplicable({ scopes: [{ type: 'team', id: 'nobody' }] as any, model: null }, 'USD', '1')), { terms: [], numbers: [] }, 'no budget: none')
  t.same((await standings.listLineage('00000000-0000-0000-0000-0000000000ff', 'USD', '1')), { terms: [], numbers: [] }, 'no such budget: none')

  // the public readers
  const integration = app.budgetIntegration
  const check = await integration.checkCaller({ organization: 'acme', team: 'platform', user: 'ada', project: 'apollo' }, '3')
  t.match(check, { canProceed: false, bindingBudgetId: project.id }, 'checkCaller: the project\'s cap refuses')
  const summary = await integration.getCallerSummary({ organization: 'acme', team: 'platform', user: 'ada' })
  t.same(summary.budgets.map((b) => [b.name, b.currentAmount]).sort(), [['euro user', '4'], ['org', '10'], ['team', '10'], ['user', '10']], 'the summary across two trees')
  const constraints = await app.inject({ method: 'POST', url: `${PREFIX}/${euro.id}/check-constraints`, headers, body: { estimatedCost: '36' } })
  t.equal(constraints.statusCode, 200, constraints.body)
  t.match(constraints.json(), { canProceed: true, bindingBudgetId: euro.id, remaining: '36' }, 'check-constraints in the budget\'s own currency: 36 EUR fits its 36 left')
  const over = await app.inject({ method: 'POST', url: `${PREFIX}/${user.id}/check-constraints`, headers, body: { estimatedCost: '31' } })
  t.match(over.json(), { canProceed: false, bindingBudgetId: user.id }, 'the user\'s 30 left refuses 31')
  t.same(await findViolations(sql), [], 'nothing left behind')
})

t.test('hostile input to the standings readers on the cluster: no 5xx, nothing written', async (t) => {
  const { sql, app, create } = await distributedApp(t)
  const org = await create({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '100' })
  await create({ name: 'team', scopeType: 'team', scopeId: 'platform', parentId: org.id, amount: '50' })
  await app.budgetTracker.record({ budgetId: org.id, amount: '1', currency: 'USD', metadata: { requestId: 'call-1' } })
  // the status read (getCallerSummary) caches a forecast profile by design: every other table is compared
  const tables = async () => { const all = await snapshotTables(sql) as Record<string, unknown>; delete all.budget_forecast_profiles; return all }
  const before = await tables()
  const bodies: unknown[] = [
    { estimatedCost: '0' }, { estimatedCost: '-1' }, { estimatedCost: '1e400' }, { estimatedCost: 'NaN' }, { estimatedCost: '99999999999999999999999999999' },
    { estimatedCost: '0.00000000001' }, { estimatedCost: 1e308 }, { estimatedCost: '999999999999999999' }, { estimatedCost: '\u0000' }, {}, { estimatedCost: null }
  ]
  const ids = [org.id, '00000000-0000-0000-0000-000000000000', 'not-a-uuid', org.id.toUpperCase(), '%00', encodeURIComponent("'; drop table x; --")]
  for (const id of ids) {
    for (const body of bodies) {
      const response = await app.inject({ method: 'POST', url: `${PREFIX}/${id}/check-constraints`, headers, body: body as any })
      t.ok(response.statusCode < 500, `check-constraints ${id} ${JSON.stringify(body)}: ${response.statusCode} ${response.statusCode >= 500 ? response.body : ''}`)
    }
  }
  const callers: any[] = [{ organization: 'acme', team: "platform'; --" }, { organization: '\u00e9'.repeat(200) }, { user: 'ada', tags: { env: 'x'.repeat(100) } }, { organization: 'acme', project: 'x' }]
  for (const caller of callers) {
    for (const estimate of ['1', '999999999999999999', '0.0000000001']) {
      const check = await app.budgetIntegration.checkCaller(caller, estimate).then((value) => value.canProceed, (error: Error) => error.name)
      t.not(check, 'PostgresError', `checkCaller ${JSON.stringify(caller).slice(0, 60)} ${estimate}: ${String(check)}`)
    }
    const summary = await app.budgetIntegration.getCallerSummary(caller).then((value) => value.budgets.length, (error: Error) => `${error.name}: ${error.message}`)
    t.equal(typeof summary, 'number', `getCallerSummary ${JSON.stringify(caller).slice(0, 60)}: ${String(summary)}`)
  }
  t.same(await tables(), before, 'nothing written (but the forecast profile the status read caches)')
})
