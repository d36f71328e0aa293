import Fastify from 'fastify'
import postgres from 'postgres'
import t from 'tap'
import budgets, { type BudgetsOptions } from '../lib/index.js'
import { ADMIN_TOKEN } from './fixtures/app.js'
import { createTestDatabase, createTestSql } from './fixtures/database.js'

t.test('a bad option makes ready() reject with BUDGET_ERR_OPTIONS', async (t) => {
  const url = await createTestDatabase(t)
  const cases: Array<[string, Partial<BudgetsOptions>]> = [
    ['no database', { adminToken: ADMIN_TOKEN }],
    ['a database that is neither client nor URL', { database: 42 as unknown as string, adminToken: ADMIN_TOKEN }],
    ['a URL that is not postgres', { database: 'mysql://localhost/x', adminToken: ADMIN_TOKEN }],
    ['a prefix without a slash', { database: url, adminToken: ADMIN_TOKEN, prefix: 'budgets' }],
    ['migrate that is not a boolean', { database: url, adminToken: ADMIN_TOKEN, migrate: 'yes' as unknown as boolean }],
    ['a short admin token', { database: url, adminToken: 'short' }],
    ['an authorize that is not a function', { database: url, authorize: true as unknown as () => boolean }],
    ['no way to authorize the admin API', { database: url }]
  ]
  for (const [name, options] of cases) {
    const app = Fastify()
    app.register(budgets, options as BudgetsOptions)
    await t.rejects(async () => await app.ready(), { code: 'BUDGET_ERR_OPTIONS' }, name)
    await app.close()
  }
})

t.test('registering the plugin twice is refused', async (t) => {
  const { sql } = await createTestSql(t)
  const app = Fastify()
  app.register(budgets, { database: sql, adminToken: ADMIN_TOKEN })
  app.register(budgets, { database: sql, adminToken: ADMIN_TOKEN })
  await t.rejects(async () => await app.ready(), { code: 'FST_ERR_DEC_ALREADY_PRESENT' })
  await app.close()
})

t.test('closes the client it opened from a connection string', async (t) => {
  const url = await createTestDatabase(t)
  const observer = postgres(url, { max: 1 })
  t.teardown(async () => await observer.end())
  const applicationName = `budgets-owned-${process.pid}`
  const app = Fastify()
  await app.register(budgets, { database: `${url}?application_name=${applicationName}`, adminToken: ADMIN_TOKEN })
  await app.ready()
  const connections = async () => Number((await observer`select count(*) from pg_stat_activity where application_name = ${applicationName}`)[0]!.count)
  t.ok(await connections() > 0, 'the plugin connected')
  await app.close()
  t.equal(await connections(), 0, 'and disconnected on close')
})

t.test('leaves a host client open on close', async (t) => {
  const { sql } = await createTestSql(t)
  const app = Fastify()
  await app.register(budgets, { database: sql, adminToken: ADMIN_TOKEN })
  await app.close()
  const [row] = await sql`select 1 as one`
  t.equal(row!.one, 1, 'the host client still answers')
})

t.test('migrate: false leaves the schema to the host', async (t) => {
  const { sql } = await createTestSql(t)
  const app = Fastify()
  await app.register(budgets, { database: sql, adminToken: ADMIN_TOKEN, migrate: false })
  await app.ready()
  t.teardown(async () => await app.close())
  const [row] = await sql`select to_regclass('budget_definitions') as table`
  t.equal(row!.table, null, 'no tables were created')
})

t.test('serves the admin API under a custom prefix and decorates the registry', async (t) => {
  const { sql } = await createTestSql(t)
  const app = Fastify()
  await app.register(budgets, { database: sql, adminToken: ADMIN_TOKEN, prefix: '/admin/budgets/' })
  t.teardown(async () => await app.close())
  const response = await app.inject({ url: '/admin/budgets/scope/team/a', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
  t.equal(response.statusCode, 200)
  t.same(response.json(), { budgets: [] })
  t.equal((await app.inject({ url: '/api/v1/budgets/scope/team/a' })).statusCode, 404, 'nothing at the default prefix')
  t.type(app.budgetRegistry.createBudget, 'function')
})

t.test('an authorize hook decides and names the actor', async (t) => {
  const { sql } = await createTestSql(t)
  const app = Fastify()
  await app.register(budgets, {
    database: sql,
    authorize: async (request) => request.headers['x-user'] === 'alice' ? 'alice@example.com' : false
  })
  t.teardown(async () => await app.close())
  const body = { name: 'b', scopeType: 'team', scopeId: 't', amount: '10', currency: 'USD', period: 'monthly', startDate: '2024-01-01' }
  const refused = await app.inject({ method: 'POST', url: '/api/v1/budgets', body, headers: { 'x-user': 'mallory' } })
  t.equal(refused.statusCode, 401)
  t.equal(refused.json().code, 'BUDGET_ERR_UNAUTHORIZED')
  t.match(refused.headers['www-authenticate'], /^Bearer/)
  const created = await app.inject({ method: 'POST', url: '/api/v1/budgets', body, headers: { 'x-user': 'alice' } })
  t.equal(created.statusCode, 201)
  t.equal(created.json().createdBy, 'alice@example.com')
})

t.test('the plugin leaves the host routes alone', async (t) => {
  const { sql } = await createTestSql(t)
  const app = Fastify()
  await app.register(budgets, { database: sql, adminToken: ADMIN_TOKEN })
  app.post('/echo', async (request) => request.body)
  t.teardown(async () => await app.close())
  // Fastify's own coercion and error handling still apply outside the admin API.
  const response = await app.inject({ method: 'POST', url: '/echo', body: { any: 'thing' } })
  t.equal(response.statusCode, 200, 'no admin credentials needed')
  t.same(response.json(), { any: 'thing' })
})
