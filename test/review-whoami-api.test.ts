// Review of GET {prefix}/access (lib/http/admin/principal.ts): every principal the authorize option may hand
// out is answered (no 5xx), its roots are its area's and nothing outside it shows.
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { PREFIX } from './fixtures/app.js'
import { accessApp, create } from './fixtures/access-app.js'

const ACCESS = { method: 'GET' as const, url: `${PREFIX}/access` }

t.test('odd printable scopeIds (quotes, backslashes, braces, commas, NULL) are answered, and their budgets are the roots', async (t) => {
  const { admin, as } = await accessApp(t)
  const odd = ['a"b', 'a\\b', '{x}', 'a,b', 'NULL', "o'k", '<script>', '}{', '\\"', 'x'.repeat(200)]
  const made: string[] = []
  for (const scopeId of odd) made.push((await create(admin, { name: `t ${made.length}`, scopeType: 'team', scopeId, amount: '10' })).id)
  const scopes = odd.map((scopeId) => ({ scopeType: 'team', scopeId }))
  const response = await as({ actor: 'lead', role: 'viewer', scopes })(ACCESS)
  t.equal(response.statusCode, 200, response.body.slice(0, 300))
  t.same(response.json(), { actor: 'lead', role: 'viewer', permissions: ['read'], scopes, roots: [...made].sort() })
  const listed = (await as({ actor: 'lead', role: 'viewer', scopes })({ method: 'GET', url: `${PREFIX}?limit=500` })).json().budgets.map((budget: { id: string }) => budget.id).sort()
  t.same(listed, [...made].sort(), 'the list holds the same budgets')
})

t.test('a deleted or nonexistent budget named by a scope is in no root, and the answer is the same for both', async (t) => {
  const { admin, as } = await accessApp(t)
  const org = await create(admin, { name: 'acme', scopeType: 'organization', scopeId: 'acme', amount: '1000' })
  const team = await create(admin, { name: 'platform', scopeType: 'team', scopeId: 'platform', parentId: org.id, amount: '100' })
  const gone = await create(admin, { name: 'gone', scopeType: 'team', scopeId: 'gone', amount: '100' })
  t.equal((await admin({ method: 'DELETE', url: `${PREFIX}/${gone.id}` })).statusCode, 204)
  const missing = randomUUID()
  const read = async (budgetId: string) => (await as({ actor: 'x', role: 'viewer', scopes: [{ budgetId: team.id }, { budgetId }] })(ACCESS)).json()
  t.same((await read(gone.id)).roots, [team.id], 'a deleted budget is no root')
  t.same((await read(missing)).roots, [team.id], 'nor a budget that never was')
  // the organization above the team, named by another principal, does not show in this one's answer
  const body = JSON.stringify(await read(missing))
  t.notOk(body.includes(org.id), 'nothing of the organization above')
})

t.test('an empty scopes list, a scoped admin, an editor of every tree and a platform admin by name: all answered', async (t) => {
  const { as } = await accessApp(t)
  const cases: Array<[unknown, unknown]> = [
    [{ actor: 'nobody', role: 'viewer', scopes: [] }, { actor: 'nobody', role: 'viewer', permissions: ['read'], scopes: [], roots: [] }],
    [{ actor: 'x', role: 'admin', scopes: [] }, { actor: 'x', role: 'admin', permissions: ['read', 'write', 'approve'], scopes: [], roots: [] }],
    [{ actor: 'ops', role: 'editor', scopes: null }, { actor: 'ops', role: 'editor', permissions: ['read', 'write'], scopes: null, roots: null }],
    ['<b>root</b> "\u2028😀', { actor: '<b>root</b> "\u2028😀', role: 'admin', permissions: ['read', 'write', 'approve', 'platform'], scopes: null, roots: null }],
    [true, { actor: 'admin', role: 'admin', permissions: ['read', 'write', 'approve', 'platform'], scopes: null, roots: null }]
  ]
  for (const [principal, expected] of cases) {
    const response = await as(principal)(ACCESS)
    t.equal(response.statusCode, 200, JSON.stringify(principal).replace(/[^\x20-\x7e]/g, '?'))
    t.same(response.json(), expected)
  }
  const upper = randomUUID().toUpperCase()
  t.same((await as({ actor: 'x', role: 'viewer', scopes: [{ budgetId: upper }] })(ACCESS)).json().scopes, [{ budgetId: upper.toLowerCase() }], 'an uppercase id as the area knows it')
})

t.test('a scopes array with a hole (a host\'s `scopes.length = n`, `delete scopes[i]`) is refused as a missing scope is, never a 500', async (t) => {
  const { admin, as } = await accessApp(t)
  const team = await create(admin, { name: 'platform', scopeType: 'team', scopeId: 'platform', amount: '100' })
  const holey: unknown[] = [{ budgetId: team.id }]
  holey.length = 2 // index 1 is a hole: [{ budgetId }, <empty>]
  const principal = { actor: 'lead', role: 'viewer', scopes: holey }
  // [undefined] and [null] are refused with 401 (test/admin-access.test.ts): a hole is no scope either
  t.equal((await as({ actor: 'lead', role: 'viewer', scopes: [{ budgetId: team.id }, undefined] })(ACCESS)).statusCode, 401, 'an undefined scope: refused')
  const response = await as(principal)(ACCESS)
  t.not(response.statusCode, 500, `GET /access is not a 500 (${response.statusCode} ${response.body.slice(0, 200)})`)
  t.equal(response.statusCode, 401, 'refused as [undefined] is')
  t.equal((await as(principal)({ method: 'GET', url: PREFIX })).statusCode, 401, 'and the list refuses it too (access fails closed)')
})
