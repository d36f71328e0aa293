// The admin API on a distributed schema (`npm run test:citus`): what of it runs on Citus today. Budgets are
// created through the registry (its global version bumped from the coordinator, each tree's by trigger on
// its shard, the audit entry routed by the budget's root); docs/scaling.md lists what does not run yet.
import t from 'tap'
import Fastify from 'fastify'
import budgets from '../lib/index.js'
import { distributeOnCitus } from '../lib/kernel/database/citus.js'
import { migrate } from '../lib/kernel/database/migrate.js'
import { createTestSql } from '../test/fixtures/database.js'
import { ADMIN_TOKEN, PREFIX } from '../test/fixtures/app.js'

t.test('a root budget and a child created through the admin API, each audited in its tree, both trees\' versions bumped', async (t) => {
  const { sql } = await createTestSql(t, { max: 4 })
  await migrate(sql)
  await distributeOnCitus(sql)
  const app = Fastify()
  await app.register(budgets, { database: sql, adminToken: ADMIN_TOKEN, notifications: { intervalMs: 0 } })
  await app.ready()
  t.teardown(async () => await app.close())
  const headers = { authorization: `Bearer ${ADMIN_TOKEN}` }
  const create = async (body: Record<string, unknown>) => await app.inject({
    method: 'POST', url: PREFIX, headers, body: { amount: '100', currency: 'USD', period: 'monthly', startDate: '2024-01-01', ...body }
  })
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
  t.equal((await sql`select version::text from budget_definitions_version`)[0]!.version, String(BigInt(global) + 3n), 'the global version: once a change')

  const listed = await app.inject({ url: PREFIX, headers })
  t.equal(listed.statusCode, 200, listed.body)
  t.same(listed.json().budgets.map((budget: { name: string }) => budget.name).sort(), ['org', 'other org', 'team'], 'the list reads every tree')
  const got = await app.inject({ url: `${PREFIX}/${team.json().id}`, headers })
  t.equal(got.json().parentId, org.json().id, 'a budget read by id')
})
