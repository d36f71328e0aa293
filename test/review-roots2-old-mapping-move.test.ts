// Review (second): after a newer instance migrated (010), an instance of the version before (fd4a9ca) still
// serving moves a cost mapping to a budget of another tree. Its UPDATE sets budget_id only; root_id keeps the
// old tree's, and the key (root_id, budget_id) -> budget_definitions refuses it: a 500 for a valid request.
import t from 'tap'
import { ADMIN_TOKEN, PREFIX, budgetRequest } from './fixtures/app.js'
import { createTestSql } from './fixtures/database.js'
import { startInstance, versionBefore } from './fixtures/version-before.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }

t.test('an older instance moves a mapping across trees after the upgrade', async (t) => {
  const { budgets: oldPlugin } = await versionBefore('fd4a9ca')
  const { default: newPlugin } = await import('../lib/index.js')
  const { url } = await createTestSql(t)
  const old = await startInstance(t, url, oldPlugin)
  const make = async (name: string) => (await old.inject({ method: 'POST', url: PREFIX, headers: AUTH, body: budgetRequest({ name, scopeId: name }) })).json().id as string
  const a = await make('team-a')
  const b = await make('team-b')
  const created = await old.inject({ method: 'POST', url: `${PREFIX}/provider-costs/mappings`, headers: AUTH, body: { provider: 'mistral', kind: 'project', value: 'p', budgetId: a } })
  t.equal(created.statusCode, 201, created.body)
  await startInstance(t, url, newPlugin) // migrates to 010
  const moved = await old.inject({ method: 'PUT', url: `${PREFIX}/provider-costs/mappings/${created.json().id}`, headers: AUTH, body: { budgetId: b } })
  t.equal(moved.statusCode, 200, `the older instance's move: ${moved.statusCode} ${moved.body}`)
})
