// Review of 1df63c1/57ae84d (adversarial, concurrency): two instances on one database during a rolling deploy,
// the version before (1109fdb) still serving while an instance of this version has started (and so re-made the
// functions and triggers: 57ae84d drops budget_recon_mappings_moved). docs/data-model.md (Upgrades) says an older
// instance keeps serving, and that "a cost mapping it moves takes its new budget's root by trigger".
import t from 'tap'
import { ADMIN_TOKEN, PREFIX, budgetRequest } from './fixtures/app.js'
import { createTestSql } from './fixtures/database.js'
import { startInstance, versionBefore } from './fixtures/version-before.js'
import { importCsv, YESTERDAY } from './fixtures/reconciliation.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }

t.test('1109fdb instance beside a 57ae84d instance: mapping moves across trees, creates and true-ups from both', async (t) => {
  const { budgets: oldPlugin } = await versionBefore('1109fdb')
  const { default: newPlugin } = await import('../lib/index.js')
  const { url, sql } = await createTestSql(t)
  const old = await startInstance(t, url, oldPlugin)
  const made = await startInstance(t, url, newPlugin) // re-applies the functions and triggers of this version
  const call = async (app: any, method: string, path: string, body?: Record<string, unknown>) =>
    await app.inject({ method, url: `${PREFIX}${path}`, headers: AUTH, ...(body === undefined ? {} : { body }) })
  const make = async (name: string) => (await call(made, 'POST', '', budgetRequest({ name, scopeId: name, startDate: '2024-01-01' }))).json().id as string
  const a = await make('team-a')
  const b = await make('team-b')
  const c = await make('team-c')
  const created = await call(old, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'p', budgetId: a, trueUp: true })
  t.equal(created.statusCode, 201, created.body)
  const id = created.json().id as string

  // The older instance moves the mapping to another tree while the newer one creates a mapping in a third:
  // each a valid request.
  const [moved, other] = await Promise.all([
    call(old, 'PUT', `/provider-costs/mappings/${id}`, { budgetId: b }),
    call(made, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'q', budgetId: c, trueUp: true })
  ])
  t.equal(other.statusCode, 201, other.body)
  t.equal(moved.statusCode, 200, `the older instance's move to another tree: ${moved.statusCode} ${moved.body}`)
  const rows = await sql`select m.id::text as id, m.budget_id::text as budget, m.root_id = d.root_id as same_root
                         from budget_recon_mappings m join budget_definitions d on d.root_id = m.root_id and d.id = m.budget_id order by m.id`
  t.strictSame(rows.map((r) => [r.id, r.budget, r.same_root]), [[id, b, true], [other.json().id, c, true]], 'the mapping is in its new budget\'s tree')
  t.equal((await sql`select count(*)::int as n from budget_audit_log where action = 'update-cost-mapping'`)[0]!.n, 1, 'one audit entry for the move')

  // The older instance's true-up on the newer functions (columns added to budget_recon_true_up's result).
  await importCsv({ admin: async (r: any) => await old.inject({ ...r, headers: { ...AUTH, ...r.headers } }) } as any, [`${YESTERDAY},mistral,acme,p,3,USD`, `${YESTERDAY},mistral,acme,q,4,USD`])
  const upOld = await call(old, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: c })
  t.equal(upOld.statusCode, 200, `the older instance's true-up: ${upOld.body}`)
})
