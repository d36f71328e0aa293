// The per-call cost cap under pressure: caps lowered while lines are hot, concurrency, the boundary, the example
// gateway, upgrades from the version before, upstreams that bill past the output limit, rate limits, a slow database.
import t from 'tap'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'
import { versionBefore } from './fixtures/version-before.js'
import { costFromUsage, createPriceBook, DEFAULT_PRICES, estimateChatCost } from '../lib/index.js'
import { toUnits } from '../lib/kernel/money.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }
const prices = createPriceBook(DEFAULT_PRICES)
const body = (max: number) => ({ model: 'gpt-4o', messages: [{ role: 'user', content: 'Write a long story' }], max_tokens: max })
const cost = async (max: number): Promise<bigint> => toUnits((await estimateChatCost(body(max), prices)).amount)

/** A gateway of one version (this one's plugin, or the version before's) on the database at `url`, closed after the test. */
async function startVersion (t: { teardown: (fn: () => unknown) => void }, url: string, plugin: any, chatRoutes: any) {
  const { default: Fastify } = await import('fastify')
  const app = Fastify()
  await app.register(plugin, { database: url, adminToken: ADMIN_TOKEN, gate: { routes: ['/v1/chat/completions'], sweepIntervalMs: 0 }, notifications: { intervalMs: 0 } })
  await app.register(chatRoutes, { mockTokenDelayMs: 0 })
  await app.ready()
  t.teardown(async () => await app.close())
  return app
}

t.test('a budget\'s cap lowered on one instance binds another instance\'s hot leased line as soon as the PUT answers', async (t) => {
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

t.test('upgrade path: an instance of the version before keeps serving while this version migrates; restarted afterwards, it is refused with a MigrationError and changes nothing', async (t) => {
  const { budgets: oldBudgets, chatCompletions: oldChat } = await versionBefore()
  const { default: newBudgets } = await import('../lib/index.js')
  const { createTestSql } = await import('./fixtures/database.js')
  const { sql, url } = await createTestSql(t)
  const start = async (plugin: any, chatRoutes: any) => await startVersion(t, url, plugin, chatRoutes)
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
  // An instance of the version before (re)starting now migrates with its sql/, which predates the rule that leaves a
  // newer database alone: its function files cannot change the results of this version's functions back (budget_line's,
  // in lines.sql; its budget_hold_batch now makes one of another argument list beside this one's), and the whole run rolls back.
  const functions = async () => await sql`select p.oid::regprocedure::text as signature, pg_get_function_result(p.oid) as result from pg_proc p where p.proname in ('budget_hold_batch', 'budget_line') order by 1`
  const before = await functions()
  const restart = await start(oldBudgets, oldChat).then(() => null, (error: Error) => error)
  // Its function files' DDL runs beside the new instance's traffic; under load PostgreSQL may end it as a deadlock's
  // victim before it reaches lines.sql, which refuses and rolls back the same.
  t.match(restart, { code: 'BUDGET_ERR_MIGRATION', message: /functions\/lines\.sql.*cannot change return type|deadlock detected/ }, 'an instance of the version before, restarting after the upgrade, is refused with a MigrationError')
  t.same(await functions(), before, 'and leaves this version\'s functions as they were')
  t.equal((await fresh.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'team-a' }, body: body(20) })).statusCode, 200, 'the new instance still serves')
  await new Promise((resolve) => setTimeout(resolve, 300))
})

t.test('240 calls at once on one hot hard budget (budget and header caps, streams with and without usage, cut streams, clients leaving): no charge past a cap of its call, invariants hold', async (t) => {
  const { startUpstream, modeMarker } = await import('./fixtures/upstream.js')
  const upstream = await startUpstream(t, { mode: (b: any) => (JSON.stringify(b.messages).match(/\[upstream:([a-z0-9-]+)\]/)?.[1] ?? 'json-worst-case') as any, chunkDelayMs: 2 })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0, nearLimit: 'clamp' } })
  const org = await gateway.createBudget({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '0.6', maxCallCost: '0.012' })
  await gateway.createBudget({ name: 'team-x', scopeId: 'team-x', amount: '5' })
  await gateway.createBudget({ name: 'team-y', scopeId: 'team-y', amount: '5', enforcement: 'soft', maxCallCost: '0.006', nearLimit: 'refuse' })
  const address = await gateway.app.listen({ port: 0, host: '127.0.0.1' })
  const modes = ['json-worst-case', 'sse', 'sse-no-usage', 'sse-cut', 'json-no-usage', 'json']
  const results = await Promise.all(Array.from({ length: 240 }, async (_, i) => {
    const team = ['team-x', 'team-y', 'team-z'][i % 3]!
    const mode = modes[i % modes.length]!
    const stream = mode.startsWith('sse')
    const headers: Record<string, string> = { 'content-type': 'application/json', 'x-relay-team-id': team, 'x-relay-organization-id': 'acme' }
    if (team === 'team-x') headers['x-budget-max-cost'] = '0.004'
    const controller = new AbortController()
    const b = { model: 'gpt-4o', messages: [{ role: 'user', content: `Write a long story ${modeMarker(mode as any)}` }], max_tokens: 100 + (i % 9) * 300, ...(stream ? { stream: true, stream_options: { include_usage: true } } : {}) }
    if (i % 11 === 0) setTimeout(() => controller.abort(), 5 + (i % 4) * 5)
    try {
      const response = await fetch(`${address}/v1/chat/completions`, { method: 'POST', headers, body: JSON.stringify(b), signal: controller.signal })
      await response.arrayBuffer()
      return response.status
    } catch { return -1 }
  }))
  const count = (status: number) => results.filter((s) => s === status).length
  t.comment(`200: ${count(200)}, 402: ${count(402)}, aborted: ${count(-1)}, other: ${results.filter((s) => ![200, 402, -1].includes(s)).join(',')}`)
  t.ok(results.every((s) => [200, 402, -1].includes(s)), 'no 4xx/5xx other than 402')
  await gateway.settled()
  await new Promise((resolve) => setTimeout(resolve, 500))
  await gateway.settled()
  const over = await gateway.sql`
    select metadata->>'teamId' as team, amount::text, metadata->>'costBasis' as basis, metadata->>'estimatedCost' as estimate
    from budget_usage_records
    where amount > case metadata->>'teamId' when 'team-x' then 0.004 when 'team-y' then 0.006 else 0.012 end`
  t.same(over, [], 'no usage record charged past a cap that applied to its call')
  t.ok(toUnits((await gateway.status(org.id)).currentAmount) <= toUnits('0.6'), 'org within its limit')
  await checkInvariants(t, gateway.sql)
})

t.test('a cap equal to the estimate admits (hold and lease paths) and one unit under refuses, in USD and in EUR at a rate that rounds', async (t) => {
  const { fromUnits } = await import('../lib/kernel/money.js')
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const exact = await cost(1000)
  const budget = await gateway.createBudget({ amount: '100', maxCallCost: fromUnits(exact) })
  const chat = async (headers: Record<string, string>, max: number) => await gateway.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'team-a', ...headers }, body: body(max) })
  const results: Array<[string, number]> = []
  for (let i = 0; i < 8; i++) results.push([`budget cap = estimate #${i}`, (await chat({}, 1000)).statusCode])
  for (let i = 0; i < 4; i++) results.push([`header = estimate #${i}`, (await chat({ 'x-budget-max-cost': fromUnits(exact) }, 1000)).statusCode])
  for (let i = 0; i < 4; i++) results.push([`header = estimate - 1 unit #${i}`, (await chat({ 'x-budget-max-cost': fromUnits(exact - 1n) }, 1000)).statusCode])
  await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: AUTH, body: { maxCallCost: fromUnits(exact - 1n) } })
  for (let i = 0; i < 4; i++) results.push([`budget cap = estimate - 1 unit #${i}`, (await chat({}, 1000)).statusCode])
  t.same(results.map(([, s]) => s), [...Array(12).fill(200), ...Array(8).fill(402)], JSON.stringify(results))
  // EUR: a rate with many decimals, cap exactly the converted (rounded-up) estimate
  await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/exchange-rates/USD/EUR`, headers: AUTH, body: { rate: '0.9234567891' } })
  const eur = await gateway.createBudget({ scopeId: 'team-e', currency: 'EUR', amount: '100' })
  const probe = await gateway.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'team-e', 'x-budget-max-cost': '0.0000000001' }, body: body(1000) })
  const converted = probe.json().error?.cap?.estimatedCost
  const refusedCheck = await gateway.app.inject({ url: `${PREFIX}/${eur.id}/status`, headers: AUTH })
  void refusedCheck
  // the EUR estimate as the hold converts it: ceil(exact * rate) in units
  const rate = toUnits('0.9234567891')
  const inEur = (exact * rate + 10n ** 10n - 1n) / 10n ** 10n
  await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/${eur.id}`, headers: AUTH, body: { maxCallCost: fromUnits(inEur) } })
  const atCap = await gateway.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'team-e' }, body: body(1000) })
  t.equal(atCap.statusCode, 200, `EUR cap ${fromUnits(inEur)} = the converted estimate: admitted (${atCap.body.slice(0, 200)}) ${converted}`)
  await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/${eur.id}`, headers: AUTH, body: { maxCallCost: fromUnits(inEur - 1n) } })
  const under = await gateway.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'team-e' }, body: body(1000) })
  t.equal(under.statusCode, 402, 'one unit under: refused')
  await gateway.settled()
  await checkInvariants(t, gateway.sql)
})

t.test('the example gateway process: a GATEWAY_KEYS cap binds, a header lowers it but cannot raise it, a bad key cap stops the start', async (t) => {
  const { startGatewayProcess } = await import('./fixtures/gateway-process.js')
  const { createTestDatabase } = await import('./fixtures/database.js')
  const url = await createTestDatabase(t)
  const keys = { 'sk-capped': { team: 'team-a', maxCallCost: '0.001' }, 'sk-free': { team: 'team-a' }, 'sk-num': { team: 'team-a', maxCallCost: 0.5 } }
  const gateway = await startGatewayProcess({ DATABASE_URL: url, ADMIN_TOKEN: 'rcap-admin-token-0123456789abcdef', GATEWAY_KEYS: JSON.stringify(keys) })
  t.teardown(async () => await gateway.stop())
  await fetch(`${gateway.url}${PREFIX}`, { method: 'POST', headers: { authorization: 'Bearer rcap-admin-token-0123456789abcdef', 'content-type': 'application/json' }, body: JSON.stringify({ name: 'b', scopeType: 'team', scopeId: 'team-a', amount: '100', currency: 'USD', period: 'monthly', startDate: '2024-01-01' }) })
  const call = async (key: string, headers: Record<string, string> = {}, max = 4000) => {
    const response = await fetch(`${gateway.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...headers }, body: JSON.stringify(body(max)) })
    return { status: response.status, json: await response.json() as any }
  }
  const raised = await call('sk-capped', { 'x-budget-max-cost': '5' })
  t.equal(raised.status, 402, 'a header cannot raise the key\'s cap')
  t.equal(raised.json.error?.cap?.source, 'operator')
  t.equal((await call('sk-free', { 'x-budget-max-cost': '0.001' })).status, 402, 'the header alone caps')
  t.equal((await call('sk-num')).status, 200, 'a JSON number cap 0.5 lets a 0.04 call through')
  t.equal((await call('sk-num', { 'x-budget-max-cost': 'abc' })).status, 400)
  const bad = await startGatewayProcess({ DATABASE_URL: url, ADMIN_TOKEN: 'rcap-admin-token-0123456789abcdef', GATEWAY_KEYS: JSON.stringify({ 'sk-x': { team: 'a', maxCallCost: '0' } }) }).then((p) => { void p.stop(); return null }, (e: Error) => e.message)
  t.match(bad, /maxCallCost/, 'a key cap of 0 stops the start, naming maxCallCost')
})

t.test('an instance of the version before, holding call by call, serves every call while this version\'s migration drops and recreates budget_hold_batch and budget_line', async (t) => {
  const { budgets: oldBudgets, chatCompletions: oldChat } = await versionBefore()
  const { default: newBudgets } = await import('../lib/index.js')
  const { createTestSql } = await import('./fixtures/database.js')
  const { url } = await createTestSql(t)
  const start = async (plugin: any, chatRoutes: any) => await startVersion(t, url, plugin, chatRoutes)
  const old = await start(oldBudgets, oldChat)
  await old.inject({ method: 'PUT', url: `${PREFIX}/exchange-rates/USD/EUR`, headers: AUTH, body: { rate: '0.9' } })
  // EUR: never leased, every call is a hold (budget_hold_batch); many callers: many line loads (budget_line)
  await old.inject({ method: 'POST', url: PREFIX, headers: AUTH, body: { name: 'b', scopeType: 'organization', scopeId: 'acme', amount: '1000', currency: 'EUR', period: 'monthly', startDate: '2024-01-01' } })
  let stop = false
  const statuses = new Map<number, number>()
  const bodies: string[] = []
  const hammer = async (w: number) => {
    let i = 0
    while (!stop) {
      const response = await old.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-organization-id': 'acme', 'x-relay-user-id': `u${w}-${i++ % 50}` }, body: body(20) })
      statuses.set(response.statusCode, (statuses.get(response.statusCode) ?? 0) + 1)
      if (response.statusCode !== 200 && bodies.length < 3) bodies.push(response.body.slice(0, 300))
    }
  }
  const workers = Array.from({ length: 8 }, async (_, w) => await hammer(w))
  await new Promise((resolve) => setTimeout(resolve, 300))
  await start(newBudgets, (await import('../examples/chat-completions.js')).chatCompletions)
  await new Promise((resolve) => setTimeout(resolve, 500))
  stop = true
  await Promise.all(workers)
  t.same([...statuses.keys()], [200], `the old instance's statuses through the migration: ${JSON.stringify([...statuses])} ${bodies.join(' | ')}`)
})

t.test('the charge is the usage the upstream reports: past the caps when it bills past max_tokens, at the answered model\'s rates when it answers a pricier one', async (t) => {
  const { startUpstream } = await import('./fixtures/upstream.js')
  for (const mode of ['json-over-limit', 'json-pricier'] as const) {
    const upstream = await startUpstream(t, { mode })
    const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
    const budget = await gateway.createBudget({ amount: '100', maxCallCost: '0.002' })
    const model = mode === 'json-pricier' ? 'gpt-4o-mini' : 'gpt-4o'
    const response = await gateway.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'team-a', 'x-budget-max-cost': '0.002' }, body: { ...body(150), model } })
    t.equal(response.statusCode, 200, `${mode}: admitted within the caps`)
    await gateway.settled()
    const spent = (await gateway.status(budget.id)).currentAmount
    // The provider's bill: the usage it reported, at the rates of the model it named.
    const [{ usage, answeredModel }] = upstream.calls as [typeof upstream.calls[number]]
    const billed = costFromUsage({ model: answeredModel, inputTokens: usage!.prompt_tokens, outputTokens: usage!.completion_tokens }, prices)!
    t.equal(toUnits(spent), toUnits(billed), `${mode}: charged ${spent}, the reported usage's cost ${billed}`)
    if (mode === 'json-over-limit') t.ok(toUnits(spent) > toUnits('0.002'), `${mode}: past the caps of 0.002, as the upstream billed past the output limit it was sent`)
  }
})

t.test('calls refused by a cap (the budget\'s or the caller\'s) take no request from a rate-limited line\'s minute allowance', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  await gateway.createBudget({ amount: '100', maxCallCost: '0.01', rateLimits: { requestsPerMinute: 4, tokensPerMinute: 100000 } })
  const chat = async (headers: Record<string, string>, max: number) => (await gateway.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'team-a', ...headers }, body: body(max) })).statusCode
  const refused = []
  for (let i = 0; i < 3; i++) refused.push(await chat({}, 4000)) // over the budget's cap
  for (let i = 0; i < 3; i++) refused.push(await chat({ 'x-budget-max-cost': '0.0001' }, 200)) // over the caller's
  t.same(refused, [402, 402, 402, 402, 402, 402])
  const served = []
  for (let i = 0; i < 4; i++) served.push(await chat({}, 20))
  t.same(served, [200, 200, 200, 200], 'the four requests of the minute are all still there')
  t.equal(await chat({}, 20), 429, 'the fifth is over the rate')
  await gateway.settled()
  await checkInvariants(t, gateway.sql)
})

t.test('gate.timeoutMs bounds the budget read of a call over the caller\'s cap as it bounds a hold, in failureMode closed and open', async (t) => {
  const { proxiedGateway } = await import('./fixtures/gateway.js')
  for (const failureMode of ['closed', 'open'] as const) {
    const gateway = await proxiedGateway(t, { timeoutMs: 300, failureMode })
    await gateway.createBudget({ amount: '100' })
    await gateway.createBudget({ scopeId: 'team-c', amount: '100' })
    const chat = async (headers: Record<string, string>) => {
      const started = Date.now()
      const response = await gateway.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'team-a', ...headers }, body: body(4000) })
      return { status: response.statusCode, code: response.json().error?.code as string | undefined, ms: Date.now() - started }
    }
    t.equal((await chat({})).status, 200, 'warm')
    // the hold is slow: answered by the failure mode within timeoutMs
    gateway.proxy.arm('budget_hold_batch', { kind: 'delay-reply', ms: 4000 })
    const held = await chat({ 'x-relay-team-id': 'team-c' })
    t.ok(held.ms < 1500, `${failureMode}: a slow hold is answered in ${held.ms} ms (${held.status})`)
    await new Promise((resolve) => setTimeout(resolve, 4200))
    // the read a call over the caller's cap makes first is slow
    gateway.proxy.arm('budget_standings(', { kind: 'delay-reply', ms: 4000 })
    const capped = await chat({ 'x-budget-max-cost': '0.01' })
    t.ok(capped.ms < 1500, `${failureMode}: a call over the caller's cap, its read slow, is answered in ${capped.ms} ms (${capped.status}); timeoutMs is 300`)
    // as a slow hold is: closed refuses 503; open decides without the budgets (the gate's nearLimit, refuse: 402)
    t.same([capped.status, capped.code], failureMode === 'closed' ? [503, 'budget_unavailable'] : [402, 'call_cost_cap_exceeded'], `${failureMode}: answered by the failure mode`)
    await new Promise((resolve) => setTimeout(resolve, 4200))
  }
})

t.test('a budget\'s cap lowered on an instance binds its own hot leased line as soon as the PUT answers', async (t) => {
  const a = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const budget = await a.createBudget({ amount: '100', maxCallCost: '1' })
  const chat = async (max: number) => await a.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'team-a' }, body: body(max) })
  let over = 0
  for (let round = 0; round < 20; round++) {
    await a.app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: AUTH, body: { maxCallCost: '1' } })
    for (let i = 0; i < 6; i++) await chat(20)
    await a.app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: AUTH, body: { maxCallCost: '0.005' } })
    if ((await chat(2000)).statusCode === 200) over++
  }
  t.equal(over, 0, `calls over the new cap admitted right after the PUT: ${over}/20`)
  await a.settled()
  await checkInvariants(t, a.sql)
})
