// Scoped admin access on a distributed schema (`npm run test:citus`): a principal's area is read across
// trees (the budgets a scope names, on every shard; each one's subtree within its tree), and what a team lead
// sees and changes is its area's, with two organizations on the cluster.
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { ADMIN_TOKEN, PREFIX } from '../test/fixtures/app.js'
import { distributedApp } from '../test/fixtures/citus-app.js'

t.test('a team lead on the cluster: its area read across trees, the list, the feeds and the checks cut to it, refusals alike for another team and an unknown budget', async (t) => {
  const principals = new Map<string, unknown>()
  const { app, createBudget, admin } = await distributedApp(t, {
    authorize: (request) => {
      const token = /^Bearer (\S+)$/.exec(request.headers.authorization ?? '')?.[1] ?? ''
      return token === ADMIN_TOKEN ? 'admin' : (principals.get(token) ?? false) as never
    }
  })
  const crossing = [{ threshold: 50, actions: ['notify'], notificationChannels: ['email'] }]
  const acme = await createBudget({ name: 'acme', scopeType: 'organization', scopeId: 'acme', amount: '1000' })
  const globex = await createBudget({ name: 'globex', scopeType: 'organization', scopeId: 'globex', amount: '1000' })
  // the team "platform" in both organizations: a scope names budgets of two trees
  const acmePlatform = await createBudget({ name: 'acme platform', scopeType: 'team', scopeId: 'platform', parentId: acme.id, amount: '100' })
  const globexPlatform = await createBudget({ name: 'globex platform', scopeType: 'team', scopeId: 'platform', parentId: globex.id, amount: '100' })
  const data = await createBudget({ name: 'data', scopeType: 'team', scopeId: 'data', parentId: acme.id, amount: '100', alerts: crossing })
  const alice = await createBudget({ name: 'alice', scopeType: 'user', scopeId: 'alice', parentId: acmePlatform.id, amount: '10', alerts: crossing })
  t.not(acme.rootId, globex.rootId, 'two trees')

  const token = `lead-${randomUUID()}`
  principals.set(token, { actor: 'lead', role: 'editor', scopes: [{ scopeType: 'team', scopeId: 'platform' }] })
  const lead = async (request: Parameters<typeof admin>[0]) => await app.inject({ ...request, headers: { authorization: `Bearer ${token}`, ...request.headers } })

  const listed = (await lead({ method: 'GET', url: PREFIX })).json().budgets.map((budget: { id: string }) => budget.id).sort()
  t.same(listed, [acmePlatform.id, globexPlatform.id, alice.id].sort(), 'the list: both trees\' platform teams and what lies under them')
  const made = await lead({ method: 'POST', url: PREFIX, body: { name: 'bob', scopeType: 'user', scopeId: 'bob', parentId: globexPlatform.id, amount: '5', currency: 'USD', period: 'monthly', startDate: '2024-01-01' } })
  t.equal(made.statusCode, 201, 'a budget made under the other tree\'s platform team')
  t.equal(made.json().rootId, globex.rootId, 'in that tree')
  const sibling = await lead({ method: 'GET', url: `${PREFIX}/${data.id}` })
  const unknown = await lead({ method: 'GET', url: `${PREFIX}/${randomUUID()}` })
  t.same([sibling.statusCode, sibling.json().code], [403, 'BUDGET_ERR_OUT_OF_SCOPE'], 'another team: refused')
  t.same([unknown.statusCode, unknown.json().code], [403, 'BUDGET_ERR_OUT_OF_SCOPE'], 'an unknown budget: refused alike')

  for (const [budget, amount] of [[alice.id, '6'], [data.id, '60']] as const) {
    t.equal((await admin({ method: 'POST', url: `${PREFIX}/${budget}/usage`, body: { amount, currency: 'USD' } })).statusCode, 201)
  }
  const area = new Set([acmePlatform.id, globexPlatform.id, alice.id, made.json().id])
  const alerts = (await lead({ method: 'GET', url: `${PREFIX}/alerts` })).json().alerts as Array<{ budgetId: string }>
  t.ok(alerts.length > 0 && alerts.every((one) => area.has(one.budgetId)), `the alerts feed: its area's crossings only (${alerts.length})`)
  const feed = (await lead({ method: 'GET', url: `${PREFIX}/audit?limit=500` })).json().entries as Array<{ budgetId: string | null }>
  t.ok(feed.length > 0 && feed.every((one) => one.budgetId !== null && area.has(one.budgetId)), `the audit feed: its area's entries only (${feed.length})`)
  // the reads over many budgets, distributed queries over every shard, cut to the area
  const report = (await lead({ method: 'GET', url: `${PREFIX}/reports/spend?groupBy=scope` })).json().groups as Array<{ key: string | null, total: string }>
  t.same(report.map((group) => [group.key, group.total]), [['user:alice', '6']], 'the spend report: its user\'s usage alone, not the data team\'s 60')
  t.same((await lead({ method: 'GET', url: `${PREFIX}/reports/spend?scopeType=team&scopeId=data` })).json().groups, [], 'another team\'s scope reads as one without budgets')
  const metrics = (await lead({ method: 'GET', url: `${PREFIX}/metrics` })).body
  const labelled = new Set([...metrics.matchAll(/budget_id="([^"]+)"/g)].map((match) => match[1]))
  t.ok(labelled.size > 0 && [...labelled].every((id) => area.has(id!)), `the gauges: its area's budgets only (${labelled.size})`)
  const batch = (await lead({ method: 'POST', url: `${PREFIX}/usage/batch`, body: { records: [{ budgetId: made.json().id, amount: '1', currency: 'USD' }, { budgetId: data.id, amount: '1', currency: 'USD' }] } })).json()
  t.same(batch.results.map((result: { status: string, error?: { code: string } }) => result.error?.code ?? result.status), ['created', 'BUDGET_ERR_OUT_OF_SCOPE'], 'a batch: stored in the other tree\'s team, refused on the sibling')
  const check = (await lead({ method: 'POST', url: `${PREFIX}/${alice.id}/check-constraints`, body: { estimatedCost: '1' } })).json()
  t.same(check.budgets.map((budget: { budgetId: string }) => budget.budgetId).sort(), [acmePlatform.id, alice.id].sort(), 'a check lists its area\'s budgets, not the organization above')
  t.equal(code(await lead({ method: 'DELETE', url: `${PREFIX}/${acme.id}?cascade=true` })), 'BUDGET_ERR_OUT_OF_SCOPE', 'the organization is not archived from within')
  t.equal((await admin({ method: 'GET', url: `${PREFIX}/${acme.id}` })).statusCode, 200, 'it stands')
})

function code (response: { json: () => { code?: string } }): string | undefined {
  return response.json().code
}
