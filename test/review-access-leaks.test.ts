// Review of scoped admin access (be14af1): answers to a scoped principal that carry budgets of another subtree.
// Each test is a defect reproduced against the contract of docs/access.md ("nothing of another subtree leaks:
// no budget, no count, no id ..."); each passes once the answer is cut to the caller's area.
import t from 'tap'
import { PREFIX, buildApp, snapshotTables } from './fixtures/app.js'

import { accessApp, create } from './fixtures/access-app.js'

/** acme (organization) > platform (team) > alice (user); acme > data (team) > bob (user), secret (project). */
async function world (t: Parameters<typeof buildApp>[0]) {
  const app = await accessApp(t)
  const org = await create(app.admin, { name: 'acme-org-confidential', scopeType: 'organization', scopeId: 'acme', amount: '100' })
  const platform = await create(app.admin, { name: 'platform', scopeType: 'team', scopeId: 'platform', parentId: org.id, amount: '100' })
  const data = await create(app.admin, { name: 'data-team-confidential', scopeType: 'team', scopeId: 'data', parentId: org.id, amount: '100' })
  const alice = await create(app.admin, { name: 'alice', scopeType: 'user', scopeId: 'alice', parentId: platform.id, amount: '50' })
  const bob = await create(app.admin, { name: 'bob', scopeType: 'user', scopeId: 'bob', parentId: data.id, amount: '100' })
  const secret = await create(app.admin, { name: 'secret-project', scopeType: 'project', scopeId: 'secret', parentId: data.id, amount: '50' })
  const lead = app.as({ actor: 'lead-platform', role: 'editor', scopes: [{ scopeType: 'team', scopeId: 'platform' }] })
  const area = new Set([platform.id, alice.id])
  return { ...app, org, platform, data, alice, bob, secret, lead, area }
}

t.test('check-constraints on a budget of the area answers for every ancestor: the organization above the team (its id, name, limit and a spend that is the sibling team\'s) reaches the lead', async (t) => {
  const { admin, lead, org, alice, bob, area } = await world(t)
  // the sibling team spends 95 of the organization's 100
  t.equal((await admin({ method: 'POST', url: `${PREFIX}/${bob.id}/usage`, body: { amount: '95', currency: 'USD' } })).statusCode, 201)

  const response = await lead({ method: 'POST', url: `${PREFIX}/${alice.id}/check-constraints`, body: { estimatedCost: '10' } })
  t.equal(response.statusCode, 200, 'the lead may check a cost on its own user')
  const body = response.json() as { bindingBudgetId: string | null, budgets: Array<{ budgetId: string, name: string, currentAmount: string }> }
  const outside = body.budgets.filter((budget) => !area.has(budget.budgetId))
  t.same(outside, [], 'no budget outside the area is answered (found: ' + outside.map((budget) => `${budget.name} ${budget.budgetId} spent ${budget.currentAmount}`).join('; ') + ')')
  t.ok(body.bindingBudgetId === null || area.has(body.bindingBudgetId), `the binding budget named is in the area (got ${body.bindingBudgetId})`)
  t.notMatch(response.body, 'acme-org-confidential', 'the organization\'s name is not in the answer')
  t.notMatch(response.body, org.id, 'nor its id')
})

t.test('recording usage under a request id another team used: the 409 names the other team\'s budget and its amount', async (t) => {
  const { admin, lead, sql, alice, bob } = await world(t)
  t.equal((await admin({ method: 'POST', url: `${PREFIX}/${bob.id}/usage`, body: { amount: '42.17', currency: 'USD', metadata: { requestId: 'req-data-1' } } })).statusCode, 201)

  const before = await snapshotTables(sql)
  const response = await lead({ method: 'POST', url: `${PREFIX}/${alice.id}/usage`, body: { amount: '1', currency: 'USD', metadata: { requestId: 'req-data-1' } } })
  t.same(await snapshotTables(sql), before, 'nothing recorded')
  t.comment(`${response.statusCode} ${response.body}`)
  t.notMatch(response.body, bob.id, 'the answer does not name the sibling team\'s budget')
  t.notMatch(response.body, '42.17', 'nor the amount recorded on it')
  // the same through the Idempotency-Key header
  const byHeader = await lead({ method: 'POST', url: `${PREFIX}/${alice.id}/usage`, headers: { 'idempotency-key': 'req-data-1' }, body: { amount: '1', currency: 'USD' } })
  t.notMatch(byHeader.body, bob.id, 'nor by the Idempotency-Key header')
  // keys are one namespace for every tree (outside Citus): another organization's budget is named too
  const globex = await create(admin, { name: 'globex', scopeType: 'organization', scopeId: 'globex', amount: '100' })
  t.equal((await admin({ method: 'POST', url: `${PREFIX}/${globex.id}/usage`, body: { amount: '7.31', currency: 'USD', metadata: { requestId: 'req-globex-1' } } })).statusCode, 201)
  const acrossOrgs = await lead({ method: 'POST', url: `${PREFIX}/${alice.id}/usage`, body: { amount: '1', currency: 'USD', metadata: { requestId: 'req-globex-1' } } })
  t.notMatch(acrossOrgs.body, globex.id, 'nor another organization\'s budget')
})

t.test('a usage record counted on the lead\'s team and on another team\'s project: the team\'s usage history shows it under the other team\'s budget id', async (t) => {
  const { admin, lead, platform, secret, area } = await world(t)
  // a call made by a caller whose scopes reach both the platform team and the data team's project (as the gate counts it)
  const batch = await admin({ method: 'POST', url: `${PREFIX}/usage/batch`, body: { records: [{ scopes: { team: 'platform', project: 'secret' }, amount: '3', currency: 'USD', metadata: { requestId: 'mixed-1' } }] } })
  t.equal(batch.json().created, 1)
  t.equal(batch.json().results[0].record.budgetId, secret.id, 'the record is stored on the data team\'s project, and counts toward the platform team too')

  const history = await lead({ method: 'GET', url: `${PREFIX}/${platform.id}/usage` })
  t.equal(history.statusCode, 200)
  const records = history.json().records as Array<{ budgetId: string | null }>
  t.equal(records.length, 1, 'the record counts toward the lead\'s team')
  t.same(records.filter((record) => record.budgetId !== null && !area.has(record.budgetId)).map((record) => record.budgetId), [], 'no record names a budget outside the area (null: not named)')
  t.notMatch(history.body, secret.id, 'the data team\'s project id is not in the answer')
})

t.test('overlapping scopes: a budget named by a scope inside another scope\'s subtree is no root of the area, so its deletion, direct or by cascade, is alike; the area\'s root is kept from both', async (t) => {
  const { admin, as, platform, alice } = await world(t)
  const carol = await create(admin, { name: 'carol', scopeType: 'user', scopeId: 'carol', parentId: alice.id, amount: '10' })
  const dave = await create(admin, { name: 'dave', scopeType: 'user', scopeId: 'dave', parentId: alice.id, amount: '10' })
  const lead = as({ actor: 'lead-two', role: 'editor', scopes: [{ budgetId: platform.id }, { budgetId: carol.id }] })
  t.equal((await lead({ method: 'DELETE', url: `${PREFIX}/${platform.id}?cascade=true` })).json().code, 'BUDGET_ERR_OUT_OF_SCOPE', 'the area\'s root is not archived, by cascade either')
  t.equal((await lead({ method: 'PUT', url: `${PREFIX}/${carol.id}`, body: { amount: '9' } })).statusCode, 200, 'carol, named inside platform\'s subtree, is changed as any budget below the root')
  t.equal((await lead({ method: 'DELETE', url: `${PREFIX}/${carol.id}` })).statusCode, 204, 'and archived directly')
  t.equal((await lead({ method: 'DELETE', url: `${PREFIX}/${alice.id}?cascade=true` })).statusCode, 204, 'as by a cascade from above it')
  t.equal((await admin({ method: 'GET', url: `${PREFIX}/${dave.id}` })).statusCode, 404, 'the cascade archived what lay below')
  t.equal((await admin({ method: 'GET', url: `${PREFIX}/${platform.id}` })).statusCode, 200, 'the root stands')
})
