// Review of scoped reads (11485a1): the spend report as a team lead sees it. Usage a team-a caller made on a
// project budget of team b counts toward team a (the caller's team) and toward team b's project: the lead
// sees that usage, but nothing of team b's tree may follow from its report.
import t, { type Test } from 'tap'
import { PREFIX } from './fixtures/app.js'
import { accessApp, create } from './fixtures/access-app.js'

async function setup (t: Test) {
  const app = await accessApp(t)
  const { admin, as } = app
  const org = await create(admin, { name: 'acme', scopeType: 'organization', scopeId: 'acme', amount: '1000' })
  const teamA = await create(admin, { name: 'team a', scopeType: 'team', scopeId: 'team-a', parentId: org.id, amount: '100' })
  const teamB = await create(admin, { name: 'team b', scopeType: 'team', scopeId: 'team-b', parentId: org.id, amount: '100' })
  const alice = await create(admin, { name: 'alice', scopeType: 'user', scopeId: 'alice', parentId: teamA.id, amount: '10' })
  const secret = await create(admin, { name: 'secret project', scopeType: 'project', scopeId: 'secret-b', parentId: teamB.id, amount: '10' })
  // a team-a caller on team b's project: stored on the project (the most specific scope), counted toward team a too
  const batch = await admin({
    method: 'POST',
    url: `${PREFIX}/usage/batch`,
    body: {
      records: [
        { scopes: { organization: 'acme', team: 'team-a', project: 'secret-b' }, amount: '0.25', currency: 'USD' },
        { budgetId: alice.id, amount: '0.5', currency: 'USD' },
        { budgetId: teamB.id, amount: '7', currency: 'USD' }
      ]
    }
  })
  t.same(batch.json().results.map((r: { status: string }) => r.status), ['created', 'created', 'created'], batch.body)
  const lead = as({ actor: 'lead-a', role: 'viewer', scopes: [{ scopeType: 'team', scopeId: 'team-a' }] })
  return { ...app, org, teamA, teamB, alice, secret, lead }
}

const totals = (body: { groups: Array<{ key: string | null, total: string }> }) => Object.fromEntries(body.groups.map((g) => [String(g.key), g.total]))

t.test('held: grouped by budget, the lead sees its area\'s usage, the record stored on team b\'s project under no key', async (t) => {
  const { lead, teamA } = await setup(t)
  const report = await lead({ method: 'GET', url: `${PREFIX}/reports/spend?groupBy=scope` })
  t.equal(report.statusCode, 200)
  t.same(totals(report.json()), { 'user:alice': '0.5', null: '0.25' }, 'no team b key, no team b total')
  t.notOk(report.body.includes('team-b') || report.body.includes('secret'), 'no name of team b\'s tree')
  const csv = await lead({ method: 'GET', url: `${PREFIX}/reports/spend?groupBy=scope&limit=1`, headers: { accept: 'text/csv' } })
  t.equal(csv.statusCode, 200)
  t.notOk(csv.body.includes('team-b') || csv.body.includes('secret'))
  const limited = (await lead({ method: 'GET', url: `${PREFIX}/reports/spend?groupBy=scope&limit=1` })).json()
  t.same(limited.others, [{ currency: 'USD', total: '0.25', calls: 1, inputTokens: '0', outputTokens: '0', groups: 1 }], 'others: the lead\'s own rest, not team b\'s 7')
  t.equal(csv.headers['x-report-truncated'], 'true')
  void teamA
})

t.test('held: scopes [] sees an empty report, gauges, decision log; its batch stores nothing', async (t) => {
  const { as, alice, sql } = await setup(t)
  const nobody = as({ actor: 'nobody', role: 'editor', scopes: [] })
  const report = await nobody({ method: 'GET', url: `${PREFIX}/reports/spend` })
  t.equal(report.statusCode, 200)
  t.same(report.json().groups, [])
  const csv = await nobody({ method: 'GET', url: `${PREFIX}/reports/spend?limit=1`, headers: { accept: 'text/csv' } })
  t.equal(csv.statusCode, 200)
  t.equal(csv.headers['x-report-truncated'], 'false')
  const metrics = await nobody({ method: 'GET', url: `${PREFIX}/metrics` })
  t.equal(metrics.statusCode, 200)
  t.notOk(/budget_id=/.test(metrics.body), 'no series')
  const decisions = await nobody({ method: 'GET', url: `${PREFIX}/decisions` })
  t.equal(decisions.statusCode, 200)
  t.same(decisions.json().decisions, [])
  const before = (await sql`select count(*)::int as n from budget_usage_records`)[0]!.n
  const batch = await nobody({ method: 'POST', url: `${PREFIX}/usage/batch`, body: { records: [{ budgetId: alice.id, amount: '1', currency: 'USD' }] } })
  t.equal(batch.statusCode, 200)
  t.equal(batch.json().results[0].error.code, 'BUDGET_ERR_OUT_OF_SCOPE')
  t.equal((await sql`select count(*)::int as n from budget_usage_records`)[0]!.n, before)
})

// Found by review, fixed: the scopeType/scopeId filter was matched against every tree's budgets (report-repository.ts,
// the `filter.scope` subquery), then intersected with the area. The lead can
// thus ask "did my usage count toward a budget of scope X?" for budgets it may not see: a non-empty answer for
// team b's project (and team b itself) where a scope with no budget answers empty. That tells the lead that
// team b has a budget for project secret-b, and that it lies under a team-b budget: team b's tree, which the
// groupBy=scope report was careful to hide behind a null key. The answer for a scope outside the area should be
// the one a scope with no budget gets (an empty report), as the decision log's budgetId filter of a sibling is.
t.test('the report\'s scope filter names no budget of another tree: it answers as for a scope without budgets', async (t) => {
  const { lead } = await setup(t)
  const nowhere = (await lead({ method: 'GET', url: `${PREFIX}/reports/spend?groupBy=scope&scopeType=project&scopeId=no-such-project` })).json()
  t.same(nowhere.groups, [], 'a scope with no budget: nothing')
  for (const [type, id] of [['project', 'secret-b'], ['team', 'team-b']] as const) {
    const report = await lead({ method: 'GET', url: `${PREFIX}/reports/spend?groupBy=scope&scopeType=${type}&scopeId=${id}` })
    t.equal(report.statusCode, 200)
    t.same(report.json().groups, nowhere.groups, `scope ${type}:${id} (another tree's budget) answers as a scope with no budget`)
  }
})
