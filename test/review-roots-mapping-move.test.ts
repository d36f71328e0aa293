// Review of the row roots change (sql/migrations/010_row_roots.sql): a cost mapping moved to a budget in
// another tree. budget_recon_mappings now carries root_id, filled by a BEFORE INSERT trigger only; the
// mapping's PUT updates budget_id and leaves root_id as the old tree's, so the new key
// (root_id, budget_id) -> budget_definitions (root_id, id) refuses a valid request.
import t from 'tap'
import { buildApp, PREFIX, budgetRequest, type TestApp } from './fixtures/app.js'

async function budget (app: TestApp, overrides: Record<string, unknown>): Promise<string> {
  const response = await app.admin({ method: 'POST', url: PREFIX, body: budgetRequest(overrides) })
  if (response.statusCode !== 201) throw new Error(response.body)
  return response.json<{ id: string }>().id
}

t.test('a cost mapping moved to a budget of another tree is moved, and carries the new budget\'s root', async (t) => {
  const app = await buildApp(t)
  const a = await budget(app, { name: 'A', scopeId: 'team-a' }) // a root of its own
  const b = await budget(app, { name: 'B', scopeId: 'team-b' }) // another tree
  const created = await app.admin({ method: 'POST', url: `${PREFIX}/provider-costs/mappings`, body: { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: a } })
  t.equal(created.statusCode, 201, created.body)
  const mapping = created.json<{ id: string }>()

  const moved = await app.admin({ method: 'PUT', url: `${PREFIX}/provider-costs/mappings/${mapping.id}`, body: { budgetId: b } })
  t.equal(moved.statusCode, 200, `the move is answered 200: ${moved.statusCode} ${moved.body}`)
  const rows = await app.sql<Array<{ budget_id: string, root_id: string }>>`select budget_id, root_id from budget_recon_mappings`
  t.same(rows, [{ budget_id: b, root_id: b }], 'the mapping names B, with B\'s root')
})

t.test('within one tree a mapping moves as before (control)', async (t) => {
  const app = await buildApp(t)
  const org = await budget(app, { name: 'Org', scopeType: 'organization', scopeId: 'acme' })
  const a = await budget(app, { name: 'A', scopeId: 'team-a', parentId: org })
  const b = await budget(app, { name: 'B', scopeId: 'team-b', parentId: org })
  const created = await app.admin({ method: 'POST', url: `${PREFIX}/provider-costs/mappings`, body: { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: a } })
  const moved = await app.admin({ method: 'PUT', url: `${PREFIX}/provider-costs/mappings/${created.json<{ id: string }>().id}`, body: { budgetId: b } })
  t.equal(moved.statusCode, 200, moved.body)
})
