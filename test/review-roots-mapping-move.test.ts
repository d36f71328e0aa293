// Reviews of the row roots change (sql/migrations/010_row_roots.sql): a cost mapping moved to a budget in
// another tree takes that budget's root (the PUT answered 500 when only an insert filled the root); a move to
// an archived budget, to none or to a malformed id is refused with a 4xx and changes nothing; concurrent moves
// across two trees leave the mapping with its budget's root.
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

t.test('moves refused and raced', async (t) => {
  const app = await buildApp(t)
  const a = await budget(app, { name: 'A', scopeId: 'team-a' })
  const b = await budget(app, { name: 'B', scopeId: 'team-b' })
  const c = await budget(app, { name: 'C', scopeId: 'team-c' })
  const archived = await app.admin({ method: 'DELETE', url: `${PREFIX}/${c}` })
  t.ok(archived.statusCode < 300, `C archived: ${archived.statusCode}`)
  const created = await app.admin({ method: 'POST', url: `${PREFIX}/provider-costs/mappings`, body: { provider: 'mistral', kind: 'project', value: 'p', budgetId: a } })
  t.equal(created.statusCode, 201, created.body)
  const id = created.json<{ id: string }>().id
  const before = await app.sql`select budget_id, root_id, value from budget_recon_mappings`
  for (const target of [c, '00000000-0000-4000-8000-000000000001', 'not-a-uuid']) {
    const moved = await app.admin({ method: 'PUT', url: `${PREFIX}/provider-costs/mappings/${id}`, body: { budgetId: target } })
    t.ok(moved.statusCode >= 400 && moved.statusCode < 500, `to ${target}: ${moved.statusCode} ${moved.body}`)
  }
  t.same(await app.sql`select budget_id, root_id, value from budget_recon_mappings`, before, 'nothing changed')
  const raced = await Promise.all([b, a, b, a, b].map(async (target) =>
    (await app.admin({ method: 'PUT', url: `${PREFIX}/provider-costs/mappings/${id}`, body: { budgetId: target } })).statusCode))
  t.ok(raced.every((code) => code === 200), `concurrent moves: ${raced}`)
  const [row] = await app.sql`select m.budget_id, m.root_id, d.root_id as budget_root from budget_recon_mappings m join budget_definitions d on d.id = m.budget_id`
  t.equal(row!.root_id, row!.budget_root, 'the mapping carries its budget\'s root')
})
