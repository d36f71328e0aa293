// A cap on the cost of one call: a budget's maxCallCost, the caller's x-budget-max-cost header and the
// operator's gate.maxCallCost. A call whose worst case is over a cap is clamped (max_tokens lowered) where
// the near-limit rule allows, else refused with 402 call_cost_cap_exceeded, holding nothing; a cap never
// lets through what a budget refuses. On every admission path: holds, leased lines, other currencies.
import OpenAI from 'openai'
import t from 'tap'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway, spendTo, type GatewayOptions } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'
import { startTcpProxy, throughProxy } from './fixtures/tcp-proxy.js'
import { startUpstream } from './fixtures/upstream.js'
import { createPriceBook, DEFAULT_PRICES, estimateChatCost } from '../lib/index.js'
import { toUnits } from '../lib/kernel/money.js'

type TestContext = Parameters<typeof buildGateway>[0]
const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }
const prices = createPriceBook(DEFAULT_PRICES)
/** A gpt-4o call of 4000 output tokens: its worst case is some 0.04 USD. */
const big = (extra: Record<string, unknown> = {}) => ({ model: 'gpt-4o', messages: [{ role: 'user', content: 'Write a long story' }], max_tokens: 4000, ...extra })
const cost = async (extra: Record<string, unknown>): Promise<bigint> => toUnits((await estimateChatCost(big(extra), prices)).amount)

async function gatewayWith (t: TestContext, options: GatewayOptions = {}) {
  const gateway = await buildGateway(t, { ...options, gate: { sweepIntervalMs: 0, ...options.gate } })
  const chat = async (headers: Record<string, string>, body: Record<string, unknown> = big()) =>
    await gateway.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'team-a', ...headers }, body })
  const held = async () => (await gateway.sql`select count(*)::int as count from budget_reservations where not lease`)[0]!.count as number
  const decisions = async () => {
    await gateway.app.budgetDecisions.flush()
    return (await gateway.app.inject({ url: `${PREFIX}/decisions`, headers: AUTH })).json().decisions as Array<Record<string, any>>
  }
  const metric = async (sample: string) => {
    const text = (await gateway.app.inject({ url: `${PREFIX}/metrics`, headers: AUTH })).body
    const line = text.split('\n').find((row) => row.startsWith(`${sample} `))
    return line === undefined ? 0 : Number(line.split(' ')[1])
  }
  return { ...gateway, chat, held, decisions, metric }
}

t.test('maxCallCost on a budget: set on create, returned, changed, cleared with null, audited; bad values are 400s that store nothing', async (t) => {
  const gateway = await gatewayWith(t)
  const budget = await gateway.createBudget({ amount: '10', maxCallCost: '0.50' })
  const read = async () => (await gateway.app.inject({ url: `${PREFIX}/${budget.id}`, headers: AUTH })).json()
  t.equal((await read()).maxCallCost, '0.5', 'canonical decimal')
  const put = async (body: Record<string, unknown>) => await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: AUTH, body })
  t.equal((await put({ maxCallCost: 0.25 })).json().maxCallCost, '0.25', 'a JSON number, as amount takes')
  t.equal((await put({ name: 'renamed' })).json().maxCallCost, '0.25', 'an update without it keeps it')
  t.equal((await put({ maxCallCost: null })).json().maxCallCost, null, 'null clears it')
  t.equal((await gateway.createBudget({ scopeId: 'team-b' }) as { maxCallCost?: unknown }).maxCallCost, null, 'absent: no cap')
  for (const bad of ['0', 0, '-1', -0.5, '1e-3', 'abc', '0.00000000001', '1000000000000000000', true, {}, []]) {
    const response = await put({ maxCallCost: bad })
    t.equal(response.statusCode, 400, `${JSON.stringify(bad)}: 400`)
    t.match(response.json(), { field: 'maxCallCost' }, `${JSON.stringify(bad)}: names the field`)
  }
  t.equal((await read()).maxCallCost, null, 'nothing stored by the refused updates')
  const created = await gateway.app.inject({ method: 'POST', url: PREFIX, headers: AUTH, body: { name: 'x', scopeType: 'team', scopeId: 'team-c', amount: '1', currency: 'USD', period: 'monthly', startDate: '2024-01-01', maxCallCost: '0' } })
  t.equal(created.statusCode, 400, 'a create with a cap of 0 is refused')
  const { entries } = (await gateway.app.inject({ url: `${PREFIX}/${budget.id}/audit`, headers: AUTH })).json() as { entries: Array<{ action: string, changes: string[], before: { maxCallCost?: unknown } | null, after: { maxCallCost?: unknown } | null }> }
  const capChanges = entries.filter((entry) => entry.action === 'update' && entry.changes.includes('maxCallCost')).map((entry) => [entry.before?.maxCallCost, entry.after?.maxCallCost])
  t.same(capChanges, [['0.25', null], ['0.5', '0.25']], 'the audit log records each change of the cap, before and after (newest first)')
  t.match(entries.at(-1), { action: 'create', after: { maxCallCost: '0.5' } })
  await t.rejects(gateway.sql`update budget_definitions set max_call_cost = 0 where id = ${budget.id}`, { code: '23514' }, 'the CHECK refuses a cap of 0 in the table too')
})

t.test('a budget\'s cap refuses a call whose worst case is over it, with room left, on a hard and a soft budget alike; calls within it pass', async (t) => {
  const gateway = await gatewayWith(t)
  const hard = await gateway.createBudget({ amount: '100', maxCallCost: '0.01' })
  const refused = await gateway.chat({})
  t.equal(refused.statusCode, 402)
  const estimate = await cost({})
  t.match(refused.json().error, {
    code: 'call_cost_cap_exceeded', type: 'insufficient_quota',
    cap: { source: 'budget', budgetId: hard.id, amount: '0.01', currency: 'USD' }
  })
  t.equal(toUnits(refused.json().error.cap.estimatedCost), estimate, 'names the estimate')
  t.equal(refused.headers['x-budget-id'], hard.id, 'the x-budget-* headers as any refusal')
  t.equal(refused.headers['x-budget-remaining'], '100')
  t.equal(await gateway.held(), 0, 'nothing held')
  t.equal((await gateway.chat({}, big({ max_tokens: 500 }))).statusCode, 200, 'a call within the cap passes')
  await gateway.settled()

  await gateway.createBudget({ scopeId: 'team-soft', amount: '100', enforcement: 'soft', maxCallCost: '0.01' })
  const soft = await gateway.chat({ 'x-relay-team-id': 'team-soft' })
  t.equal(soft.statusCode, 402, 'a soft budget\'s cap refuses too: the cap is its own rule')
  t.equal(soft.json().error.code, 'call_cost_cap_exceeded')

  const [decision] = (await gateway.decisions()).filter((row) => row.outcome === 'refused')
  t.match(decision, { code: 'call_cost_cap_exceeded', outcome: 'refused' }, 'the decision log notes it')
  t.equal(await gateway.metric('relaycore_budget_gate_decisions_total{outcome="refused",code="call_cost_cap_exceeded"}'), 2, 'the metrics count it')
  await checkInvariants(t, gateway.sql)
})

t.test('a budget\'s cap clamps under nearLimit \'clamp\': the largest max_tokens whose worst case is within it, forwarded and held', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json-worst-case' })
  const gateway = await gatewayWith(t, { upstreamServer: upstream.url })
  const budget = await gateway.createBudget({ amount: '100', maxCallCost: '0.01', nearLimit: 'clamp' })
  const response = await gateway.chat({})
  t.equal(response.statusCode, 200, 'served, clamped')
  const clamped = Number(response.headers['x-budget-clamped-max-tokens'])
  t.equal(upstream.calls[0]!.body.max_tokens, clamped, 'the upstream got the clamped max_tokens')
  t.ok((await cost({ max_tokens: clamped })) <= toUnits('0.01') && (await cost({ max_tokens: clamped + 1 })) > toUnits('0.01'), `clamped to ${clamped}: the most within the cap`)
  await gateway.settled()
  t.ok(toUnits((await gateway.status(budget.id)).currentAmount) <= toUnits('0.01'), 'billed the worst case, within the cap')
  t.match((await gateway.decisions()).find((row) => row.outcome === 'clamped'), { code: 'call_cost_cap_exceeded', budget: { id: budget.id } }, 'the decision log notes the clamp')
  await checkInvariants(t, gateway.sql)
})

t.test('the caller\'s x-budget-max-cost: refused under the gate\'s refuse, clamped under clamp; malformed headers are 400 invalid_max_cost with nothing held', async (t) => {
  const gateway = await gatewayWith(t)
  await gateway.createBudget({ amount: '100' })
  const refused = await gateway.chat({ 'x-budget-max-cost': '0.01' })
  t.equal(refused.statusCode, 402)
  t.match(refused.json().error, { code: 'call_cost_cap_exceeded', param: 'x-budget-max-cost', cap: { source: 'header', budgetId: null, amount: '0.01', currency: 'USD' } })
  t.equal(toUnits(refused.json().error.cap.estimatedCost), await cost({}))
  t.ok(refused.headers['x-budget-id'] !== undefined, 'the x-budget-* headers')
  t.equal(await gateway.held(), 0)
  t.equal((await gateway.chat({ 'x-budget-max-cost': '0.5' })).statusCode, 200, 'a cap above the worst case changes nothing')
  await gateway.settled()

  for (const bad of ['0', '-1', '0.0', '1e-3', ' 0.5', '0.5 ', '0.5, 0.6', '+0.5', '0x10', '.5', '5.', '1'.repeat(19), '0.00000000001', 'abc', '', '١']) {
    const response = await gateway.chat({ 'x-budget-max-cost': bad })
    t.equal(response.statusCode, 400, `${JSON.stringify(bad)}: 400`)
    t.match(response.json().error, { code: 'invalid_max_cost', param: 'x-budget-max-cost', type: 'invalid_request_error' })
  }
  const repeated = await gateway.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'team-a', 'x-budget-max-cost': ['0.5', '0.6'] }, body: big() })
  t.equal(repeated.statusCode, 400, 'a repeated header is refused')
  t.equal(await gateway.held(), 0, 'nothing held by any of them')

  const clamping = await gatewayWith(t, { gate: { nearLimit: 'clamp' } })
  await clamping.createBudget({ amount: '100' })
  const clamped = await clamping.chat({ 'x-budget-max-cost': '0.01' })
  t.equal(clamped.statusCode, 200, 'the gate\'s clamp clamps to the caller\'s cap')
  const tokens = Number(clamped.headers['x-budget-clamped-max-tokens'])
  t.ok((await cost({ max_tokens: tokens })) <= toUnits('0.01') && (await cost({ max_tokens: tokens + 1 })) > toUnits('0.01'), `clamped to ${tokens}`)
  t.equal((await clamping.chat({ 'x-budget-max-cost': '0.00001' })).json().error.code, 'call_cost_cap_exceeded', 'not even the floor fits: refused')
  t.match((await clamping.decisions()).map((row) => `${row.outcome as string} ${row.code as string}`), ['refused call_cost_cap_exceeded', 'clamped call_cost_cap_exceeded'])

  // With the gate's refuse, hard budgets that all clamp let the caller's cap clamp.
  await gateway.createBudget({ scopeId: 'team-b', amount: '100', nearLimit: 'clamp' })
  t.equal((await gateway.chat({ 'x-relay-team-id': 'team-b', 'x-budget-max-cost': '0.01' })).statusCode, 200, 'every hard budget clamps: clamped')
  await gateway.settled()
  await clamping.settled()
  await checkInvariants(t, gateway.sql)
  await checkInvariants(t, clamping.sql)
})

t.test('the operator\'s cap (gate.maxCallCost): a header may lower it, never raise it', async (t) => {
  const gateway = await gatewayWith(t, { gate: { maxCallCost: (request) => request.headers['x-relay-team-id'] === 'team-a' ? '0.01' : null } })
  await gateway.createBudget({ amount: '100' })
  await gateway.createBudget({ scopeId: 'team-b', amount: '100' })
  const operator = await gateway.chat({})
  t.match(operator.json().error, { code: 'call_cost_cap_exceeded', param: null, cap: { source: 'operator', amount: '0.01' } }, 'the operator\'s cap for team-a')
  const raised = await gateway.chat({ 'x-budget-max-cost': '100' })
  t.match(raised.json().error, { code: 'call_cost_cap_exceeded', cap: { source: 'operator', amount: '0.01' } }, 'a larger header does not raise it')
  const lowered = await gateway.chat({ 'x-budget-max-cost': '0.005' }, big({ max_tokens: 600 }))
  t.match(lowered.json().error, { code: 'call_cost_cap_exceeded', cap: { source: 'header', amount: '0.005' } }, 'a smaller header lowers it')
  t.equal((await gateway.chat({}, big({ max_tokens: 600 }))).statusCode, 200, 'within the operator\'s cap')
  t.equal((await gateway.chat({ 'x-relay-team-id': 'team-b' })).statusCode, 200, 'another caller has no cap')
  await gateway.settled()
  await checkInvariants(t, gateway.sql)
})

t.test('a cap never raises what a budget allows: a cap above the remaining leaves the budget\'s refusal', async (t) => {
  const gateway = await gatewayWith(t, { gate: { nearLimit: 'refuse' } })
  const budget = await gateway.createBudget({ amount: '0.01', maxCallCost: '5' })
  await spendTo(gateway.app, budget.id, '0.009')
  const response = await gateway.chat({ 'x-budget-max-cost': '5' })
  t.equal(response.statusCode, 402)
  t.equal(response.json().error.code, 'budget_exceeded', 'the budget still refuses')
  // And the smaller of a budget's room and its cap bounds a clamp.
  const clamping = await gatewayWith(t)
  const tight = await clamping.createBudget({ amount: '0.02', maxCallCost: '0.015', nearLimit: 'clamp' })
  await spendTo(clamping.app, tight.id, '0.01')
  const clamped = await clamping.chat({})
  t.equal(clamped.statusCode, 200)
  const tokens = Number(clamped.headers['x-budget-clamped-max-tokens'])
  t.ok((await cost({ max_tokens: tokens })) <= toUnits('0.01') && (await cost({ max_tokens: tokens + 1 })) > toUnits('0.01'), 'clamped to the room (0.01), below the cap (0.015)')
  await clamping.settled()
  await checkInvariants(t, clamping.sql)
})

t.test('Responses and Messages clamp to a cap; embeddings, with no output to lower, are refused; each in its API\'s error shape', async (t) => {
  const gateway = await gatewayWith(t)
  await gateway.createBudget({ amount: '100', maxCallCost: '0.001', nearLimit: 'clamp' })
  const inject = async (url: string, body: Record<string, unknown>, headers: Record<string, string> = {}) =>
    await gateway.app.inject({ method: 'POST', url, headers: { 'x-relay-team-id': 'team-a', ...headers }, body })

  const responses = await inject('/v1/responses', { model: 'gpt-4o-mini', input: 'Write a long story', max_output_tokens: 4000 })
  t.equal(responses.statusCode, 200, 'Responses: clamped')
  t.ok(Number(responses.headers['x-budget-clamped-max-tokens']) < 4000)
  const messages = await inject('/v1/messages', { model: 'claude-sonnet-4-5', max_tokens: 4000, messages: [{ role: 'user', content: 'Write a long story' }] })
  t.equal(messages.statusCode, 200, 'Messages: clamped')
  t.ok(Number(messages.headers['x-budget-clamped-max-tokens']) < 4000)

  const longInput = Array.from({ length: 20000 }, (_, i) => `budget${i % 10}`).join(' ')
  const embeddings = await inject('/v1/embeddings', { model: 'text-embedding-3-small', input: longInput }, { 'x-budget-max-cost': '0.0000001' })
  t.equal(embeddings.statusCode, 402, 'embeddings over the caller\'s cap: refused')
  t.match(embeddings.json().error, { code: 'call_cost_cap_exceeded', cap: { source: 'header' } })
  t.equal(embeddings.headers['x-budget-clamped-max-tokens'], undefined)

  const refusing = await gatewayWith(t)
  await refusing.createBudget({ amount: '100', maxCallCost: '0.001' })
  const refusedMessages = await refusing.app.inject({ method: 'POST', url: '/v1/messages', headers: { 'x-relay-team-id': 'team-a' }, body: { model: 'claude-sonnet-4-5', max_tokens: 4000, messages: [{ role: 'user', content: 'Write' }] } })
  t.equal(refusedMessages.statusCode, 402)
  t.match(refusedMessages.json(), { type: 'error', error: { type: 'billing_error', code: 'call_cost_cap_exceeded', cap: { source: 'budget', amount: '0.001' } } }, 'Anthropic\'s shape')
  const refusedEmbeddings = await refusing.app.inject({ method: 'POST', url: '/v1/embeddings', headers: { 'x-relay-team-id': 'team-a' }, body: { model: 'text-embedding-3-large', input: Array.from({ length: 8 }, () => longInput.slice(0, 30000)) } })
  t.equal(refusedEmbeddings.statusCode, 402)
  t.match(refusedEmbeddings.json().error, { code: 'call_cost_cap_exceeded', type: 'insufficient_quota' }, 'OpenAI\'s shape')
  await gateway.settled()
  await refusing.settled()
  t.equal(await refusing.held(), 0)
  await checkInvariants(t, gateway.sql)
  await checkInvariants(t, refusing.sql)
})

t.test('on a hot line admitted from a lease in memory, a call over a budget\'s cap or the caller\'s is still refused or clamped', async (t) => {
  const gateway = await gatewayWith(t)
  const budget = await gateway.createBudget({ amount: '100', maxCallCost: '0.01' })
  const small = big({ max_tokens: 20 })
  for (let i = 0; i < 6; i++) t.equal((await gateway.chat({}, small)).statusCode, 200)
  const leases = async () => (await gateway.sql`select count(distinct id)::int as count from budget_reservations where lease`)[0]!.count as number
  t.ok(await leases() > 0, 'the line is hot: a lease holds a slice of it')
  const refused = await gateway.chat({})
  t.equal(refused.statusCode, 402, 'the budget\'s cap refuses it, lease or not')
  t.match(refused.json().error, { code: 'call_cost_cap_exceeded', cap: { budgetId: budget.id } })
  t.equal((await gateway.chat({ 'x-budget-max-cost': '0.0001' }, big({ max_tokens: 200 }))).json().error?.code, 'call_cost_cap_exceeded', 'and the caller\'s')
  t.equal((await gateway.chat({}, small)).statusCode, 200, 'small calls still pass')
  t.ok(await leases() > 0, 'the lease is still there')
  await gateway.settled()
  t.ok(toUnits((await gateway.status(budget.id)).currentAmount) < toUnits('0.01'), 'nothing over the cap was charged')
  await checkInvariants(t, gateway.sql)
})

t.test('a EUR budget\'s cap is in EUR: the estimate is converted as its hold is, refused or clamped within it', async (t) => {
  const gateway = await gatewayWith(t)
  t.equal((await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/exchange-rates/USD/EUR`, headers: AUTH, body: { rate: '0.5' } })).statusCode < 300, true, 'the rate is set')
  const budget = await gateway.createBudget({ currency: 'EUR', amount: '100', maxCallCost: '0.01' })
  const estimate = await cost({}) // some 0.04 USD: 0.02 EUR, over the cap
  const refused = await gateway.chat({})
  t.equal(refused.statusCode, 402)
  t.match(refused.json().error, { code: 'call_cost_cap_exceeded', cap: { source: 'budget', budgetId: budget.id, amount: '0.01', currency: 'EUR' } })
  t.equal(toUnits(refused.json().error.cap.estimatedCost), (estimate + 1n) / 2n, 'the estimate in EUR, rounded up')
  t.equal((await gateway.chat({}, big({ max_tokens: 1500 }))).statusCode, 200, 'some 0.0075 EUR: within the cap though over 0.01 USD')
  await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: AUTH, body: { nearLimit: 'clamp' } })
  const clamped = await gateway.chat({})
  t.equal(clamped.statusCode, 200)
  const tokens = Number(clamped.headers['x-budget-clamped-max-tokens'])
  t.ok((await cost({ max_tokens: tokens })) <= toUnits('0.02') && (await cost({ max_tokens: tokens + 2 })) > toUnits('0.02'), `clamped to ${tokens}: within 0.01 EUR, some 0.02 USD`)
  await gateway.settled()
  await checkInvariants(t, gateway.sql)
})

t.test('many capped calls at once: each within its cap, no hard budget over its limit', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json-worst-case' })
  const gateway = await gatewayWith(t, { upstreamServer: upstream.url, gate: { nearLimit: 'clamp' } })
  const budget = await gateway.createBudget({ amount: '0.2', maxCallCost: '0.012' })
  const organization = await gateway.createBudget({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '0.25', maxCallCost: '0.02' })
  const results = await Promise.all(Array.from({ length: 40 }, async (_, index) => await gateway.chat(
    { 'x-relay-organization-id': 'acme', ...(index % 2 === 0 ? { 'x-budget-max-cost': '0.008' } : {}) },
    big({ max_tokens: 300 + (index % 7) * 600 }))))
  const served = results.filter((response) => response.statusCode === 200)
  t.ok(served.length > 0, `${served.length} served`)
  t.ok(results.every((response) => response.statusCode === 200 || response.statusCode === 402), 'served or refused, nothing else')
  for (const [index, response] of results.entries()) {
    if (response.statusCode !== 200) continue
    const tokens = Number(response.headers['x-budget-clamped-max-tokens'] ?? 300 + (index % 7) * 600)
    const cap = index % 2 === 0 ? toUnits('0.008') : toUnits('0.012')
    t.ok((await cost({ max_tokens: tokens })) <= cap, `call ${index}: its worst case (${tokens} tokens) within its cap`)
  }
  await gateway.settled()
  t.ok(toUnits((await gateway.status(budget.id)).currentAmount) <= toUnits('0.2'), 'the team within its limit')
  t.ok(toUnits((await gateway.status(organization.id)).currentAmount) <= toUnits('0.25'), 'the organization within its limit')
  await checkInvariants(t, gateway.sql)
})

t.test('the official openai client: a capped call is clamped (the upstream gets the lower max_tokens); one that cannot be is its typed APIError 402', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json-worst-case' })
  const gateway = await gatewayWith(t, { upstreamServer: upstream.url })
  await gateway.createBudget({ scopeId: 'platform', amount: '100', nearLimit: 'clamp' })
  const address = await gateway.app.listen({ port: 0, host: '127.0.0.1' })
  const openai = new OpenAI({ baseURL: `${address}/v1`, apiKey: 'unused', defaultHeaders: { 'x-relay-team-id': 'platform', 'x-budget-max-cost': '0.01' }, maxRetries: 0, timeout: 10_000 })

  const { data, response } = await openai.chat.completions.create(big() as OpenAI.ChatCompletionCreateParamsNonStreaming).withResponse()
  t.equal(response.status, 200)
  const clamped = Number(response.headers.get('x-budget-clamped-max-tokens'))
  t.ok(Number.isInteger(clamped) && clamped < 4000, `clamped to ${clamped}`)
  t.equal(upstream.calls.at(-1)!.body.max_tokens, clamped, 'the upstream was asked for the clamped max_tokens')
  t.ok(data.usage!.completion_tokens <= clamped)

  const error = await openai.chat.completions.create(big({ max_tokens: 4000 }) as OpenAI.ChatCompletionCreateParamsNonStreaming, { headers: { 'x-budget-max-cost': '0.00001' } })
    .then(() => null, (caught: unknown) => caught)
  t.ok(error instanceof OpenAI.APIError, 'the client\'s typed APIError')
  const apiError = error as InstanceType<typeof OpenAI.APIError>
  t.equal(apiError.status, 402)
  t.equal(apiError.code, 'call_cost_cap_exceeded')
  t.match(apiError.error, { cap: { source: 'header', amount: '0.00001', currency: 'USD' } })
  t.equal(upstream.calls.length, 1, 'the refused call never reached the upstream')
  await gateway.settled()
  await checkInvariants(t, gateway.sql)
})

t.test('failureMode open with the database away: the call goes unchecked, still within the caller\'s cap (clamped under the gate\'s clamp, else refused)', async (t) => {
  const target = new URL(process.env.DATABASE_URL!)
  for (const nearLimit of ['clamp', 'refuse'] as const) {
    const proxy = await startTcpProxy(target.hostname, Number(target.port || 5432))
    t.teardown(async () => await proxy.cut())
    const gateway = await buildGateway(t, { gatewayDatabase: async (url) => throughProxy(url, proxy), gate: { failureMode: 'open', timeoutMs: 500, sweepIntervalMs: 0, nearLimit } })
    await gateway.createBudget({ amount: '100' })
    await proxy.cut()
    const response = await gateway.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'team-a', 'x-budget-max-cost': '0.01' }, body: big() })
    if (nearLimit === 'clamp') {
      t.equal(response.statusCode, 200, 'clamp: served unchecked')
      const tokens = Number(response.headers['x-budget-clamped-max-tokens'])
      t.ok((await cost({ max_tokens: tokens })) <= toUnits('0.01'), `clamped to ${tokens}, within the cap`)
    } else {
      t.equal(response.statusCode, 402, 'refuse: refused')
      t.equal(response.json().error.code, 'call_cost_cap_exceeded')
    }
    await proxy.restore()
  }
})
