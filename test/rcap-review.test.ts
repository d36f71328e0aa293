// Adversarial review of the per-call cost cap (branch cap).
import t from 'tap'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'
import { createPriceBook, DEFAULT_PRICES, estimateChatCost } from '../lib/index.js'
import { toUnits } from '../lib/kernel/money.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }
const prices = createPriceBook(DEFAULT_PRICES)
const body = (max: number) => ({ model: 'gpt-4o', messages: [{ role: 'user', content: 'Write a long story' }], max_tokens: max })
const cost = async (max: number): Promise<bigint> => toUnits((await estimateChatCost(body(max), prices)).amount)

t.test('two instances: instance A lowers a budget\'s cap; instance B, on a hot leased line, still admits a call over the new cap after the PUT returned', async (t) => {
  const a = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const b = await buildGateway(t, { gate: { sweepIntervalMs: 0 }, gatewayDatabase: async () => a.url })
  const budget = await a.createBudget({ amount: '100', maxCallCost: '1' })
  const chat = async (gateway: typeof a, max: number) => await gateway.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'team-a' }, body: body(max) })
  // B's line is hot: a lease holds a slice, B admits from memory
  for (let i = 0; i < 8; i++) t.equal((await chat(b, 20)).statusCode, 200)
  const newCap = '0.005'
  t.ok(await cost(2000) > toUnits(newCap), 'a 2000-token call costs more than the new cap')
  let admittedOver = 0
  let tries = 0
  for (let round = 0; round < 20 && admittedOver === 0; round++) {
    tries++
    await a.app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: AUTH, body: { maxCallCost: '1' } })
    for (let i = 0; i < 3; i++) await chat(b, 20) // keep B hot under the old cap
    const put = await a.app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: AUTH, body: { maxCallCost: newCap } })
    t.equal(put.statusCode, 200)
    // The cap is committed (the PUT answered): B is asked for a call over it at once.
    const response = await chat(b, 2000)
    if (response.statusCode === 200) admittedOver++
  }
  t.equal(admittedOver, 0, `after the PUT lowering the cap returned, B admitted ${admittedOver} call(s) over the new cap (in ${tries} rounds)`)
  // b shares a.url
  await a.settled()
  const over = await a.sql`select count(*)::int as n from budget_usage_records where (metadata->>'estimatedCost')::numeric > ${newCap}::numeric and created_at > (select updated_at from budget_definitions where id = ${budget.id}) - interval '1 second'`.catch(() => [{ n: -1 }])
  t.comment(`records over the new cap: ${JSON.stringify(over)}`)
  await checkInvariants(t, a.sql)
})

t.test('upgrade path: an old (main) instance keeps serving while the branch migrates; then an old instance restarting (rolling deploy, rollback) cannot migrate the database back', async (t) => {
  const { default: Fastify } = await import('fastify')
  const { default: oldBudgets } = await import('/work/main/lib/index.ts' as string)
  const { chatCompletions: oldChat } = await import('/work/main/examples/chat-completions.ts' as string)
  const { default: newBudgets } = await import('../lib/index.js')
  const { createTestSql } = await import('./fixtures/database.js')
  const { sql, url } = await createTestSql(t)
  const start = async (plugin: any, chatRoutes: any) => {
    const app = Fastify()
    await app.register(plugin, { database: url, adminToken: ADMIN_TOKEN, gate: { routes: ['/v1/chat/completions'], sweepIntervalMs: 0 }, notifications: { intervalMs: 0 } })
    await app.register(chatRoutes, { mockTokenDelayMs: 0 })
    await app.ready()
    t.teardown(async () => await app.close())
    return app
  }
  const old = await start(oldBudgets, oldChat)
  const created = await old.inject({ method: 'POST', url: PREFIX, headers: AUTH, body: { name: 'b', scopeType: 'team', scopeId: 'team-a', amount: '100', currency: 'USD', period: 'monthly', startDate: '2024-01-01', enforcement: 'soft' } })
  t.equal(created.statusCode, 201)
  const oldChatCall = async () => (await old.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'team-a' }, body: body(20) })).statusCode
  t.equal(await oldChatCall(), 200, 'old instance serves')
  const fresh = await start(newBudgets, (await import('../examples/chat-completions.js')).chatCompletions)
  t.equal((await fresh.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'team-a' }, body: body(20) })).statusCode, 200, 'new instance serves')
  const statuses = []
  for (let i = 0; i < 5; i++) statuses.push(await oldChatCall())
  t.same(statuses, [200, 200, 200, 200, 200], 'the running old instance keeps serving after the branch migrated')
  // An old instance (re)starting now migrates with main's sql/: create or replace function with the old result type.
  const restart = await start(oldBudgets, oldChat).then(() => null, (error: Error) => error)
  t.equal(restart, null, `an old instance restarting after the upgrade: ${restart?.message ?? 'started'}`)
  t.equal((await fresh.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'team-a' }, body: body(20) })).statusCode, 200, 'the new instance still serves')
  await new Promise((resolve) => setTimeout(resolve, 300))
  void sql
})
