// Near the limit, answer instead of refusing (nearLimit 'clamp'): the gate lowers max_tokens to the most
// every budget can still afford, forwards that, says so, and holds the clamped worst case, so a hard
// budget is still never overspent, also when many calls race for the last room and upstreams bill the
// worst case or hang up.
import { request as httpRequest } from 'node:http'
import type { FastifyRequest } from 'fastify'
import t from 'tap'
import { PREFIX, ADMIN_TOKEN } from './fixtures/app.js'
import { buildGateway, spendTo } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'
import { startUpstream } from './fixtures/upstream.js'
import { createPriceBook, DEFAULT_PRICES, estimateChatCost, type PriceBook } from '../lib/index.js'
import { toUnits } from '../lib/kernel/money.js'

const prices = createPriceBook(DEFAULT_PRICES)
const body = (extra: Record<string, unknown> = {}) => ({ model: 'gpt-4o', messages: [{ role: 'user', content: 'Write a long story' }], max_tokens: 4000, ...extra })
const cost = async (extra: Record<string, unknown>): Promise<bigint> => toUnits((await estimateChatCost(body(extra), prices)).amount)

t.test('a clamp budget answers with the most max_tokens it can afford, forwards it, says so and records it', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json-worst-case' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const budget = await gateway.createBudget({ amount: '0.01', nearLimit: 'clamp' })
  t.equal((await gateway.app.inject({ url: `${PREFIX}/${budget.id}`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json().nearLimit, 'clamp')
  await spendTo(gateway.app, budget.id, '0.009') // 0.001 left: 4000 tokens of gpt-4o cost 0.04
  const response = await gateway.call({ team: 'team-a' }, body())
  t.equal(response.statusCode, 200, 'answered, not refused')
  const clamped = Number(response.headers['x-budget-clamped-max-tokens'])
  t.ok(clamped >= 16 && clamped < 4000, `clamped to ${clamped}`)
  t.equal(upstream.calls[0]!.body.max_tokens, clamped, 'the upstream was asked for the clamped max_tokens')
  const room = toUnits('0.001')
  t.ok((await cost({ max_tokens: clamped })) <= room, 'its worst case fits')
  t.ok((await cost({ max_tokens: clamped + 1 })) > room, 'one token more would not: the largest that fits')
  await gateway.settled()
  const status = await gateway.status(budget.id)
  t.ok(toUnits(status.currentAmount) <= toUnits('0.01'), `billed the worst case, still within the limit (${status.currentAmount})`)
  const [record] = await gateway.sql`select metadata from budget_usage_records where source = 'gateway'`
  t.equal(record!.metadata.clampedMaxTokens, clamped, 'the usage record says it was clamped')
  await checkInvariants(t, gateway.sql)
})

t.test('which field is lowered; refused below the floor; refuse is the default; a budget overrides the gate', async (t) => {
  const upstream = await startUpstream(t)
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0, clampFloorTokens: 50 } })
  const budget = await gateway.createBudget({ amount: '0.01', nearLimit: 'clamp' })
  await spendTo(gateway.app, budget.id, '0.009')

  const completion = await gateway.call({ team: 'team-a' }, body({ max_tokens: undefined, max_completion_tokens: 4000 }))
  t.equal(completion.statusCode, 200)
  t.equal(upstream.calls.at(-1)!.body.max_completion_tokens, Number(completion.headers['x-budget-clamped-max-tokens']))
  t.equal(upstream.calls.at(-1)!.body.max_tokens, undefined, 'only the field the request named')
  // The first call's hold is released by its settlement, which runs after the reply.
  await gateway.settled()
  const neither = await gateway.call({ team: 'team-a' }, body({ max_tokens: undefined }))
  t.equal(neither.statusCode, 200, 'no limit named: the model\'s maximum is clamped')
  t.equal(upstream.calls.at(-1)!.body.max_completion_tokens, Number(neither.headers['x-budget-clamped-max-tokens']), 'set as max_completion_tokens')
  await gateway.settled()

  // Below the floor: 50 tokens of gpt-4o output cost 0.0005; leave less than that.
  await spendTo(gateway.app, budget.id, '0.0099')
  const floor = await gateway.call({ team: 'team-a' }, body())
  t.equal(floor.statusCode, 402, 'not even the floor fits: refused')
  t.equal(floor.json().error.code, 'budget_exceeded')
  t.equal(floor.headers['x-budget-clamped-max-tokens'], undefined)

  const refusing = await gateway.createBudget({ scopeId: 'team-b', amount: '0.0001' })
  t.equal((await gateway.call({ team: 'team-b' }, body())).statusCode, 402, 'a budget without nearLimit follows the gate: refuse')
  const clampByDefault = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0, nearLimit: 'clamp' } })
  await clampByDefault.createBudget({ scopeId: 'team-b', amount: '0.001' })
  const overriding = await clampByDefault.createBudget({ scopeId: 'team-c', amount: '0.001', nearLimit: 'refuse' })
  t.equal((await clampByDefault.call({ team: 'team-b' }, body())).statusCode, 200, 'the gate\'s default clamps')
  t.equal((await clampByDefault.call({ team: 'team-c' }, body())).statusCode, 402, 'a budget\'s refuse overrides it')
  t.ok(refusing.id !== overriding.id)
  await clampByDefault.settled()
  await gateway.settled()
  await checkInvariants(t, gateway.sql)
  await checkInvariants(t, clampByDefault.sql)
})

t.test('every budget without room must clamp; budgets with room constrain the clamp too', async (t) => {
  const upstream = await startUpstream(t)
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const team = await gateway.createBudget({ name: 'team', amount: '0.001', nearLimit: 'clamp' })
  const organization = await gateway.createBudget({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '0.0008' })
  t.equal((await gateway.call({ team: 'team-a', organization: 'acme' }, body())).statusCode, 402, 'the organization has no room either and refuses')
  await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/${organization.id}`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: { nearLimit: 'clamp' } })
  const response = await gateway.call({ team: 'team-a', organization: 'acme' }, body())
  t.equal(response.statusCode, 200)
  const clamped = Number(response.headers['x-budget-clamped-max-tokens'])
  t.ok((await cost({ max_tokens: clamped })) <= toUnits('0.0008') && (await cost({ max_tokens: clamped + 1 })) > toUnits('0.0008'), 'clamped to the tighter budget, the organization')
  t.ok(team.id !== organization.id)
  await gateway.settled()
  await checkInvariants(t, gateway.sql)
})

t.test('at the boundary under concurrency: clamped calls race for the last room, upstreams bill the worst case, clients leave; no budget goes over', async (t) => {
  const upstream = await startUpstream(t, { mode: (_body, index) => index % 3 === 0 ? 'sse' : 'json-worst-case', chunkDelayMs: 3 })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0, nearLimit: 'clamp' } })
  const budget = await gateway.createBudget({ amount: '0.02' })
  const organization = await gateway.createBudget({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '0.05', nearLimit: 'clamp' })
  const base = await gateway.app.listen({ port: 0, host: '127.0.0.1' })

  // Over real HTTP, so a client can hang up mid-answer: every fifth call leaves after 10 ms.
  const call = async (index: number) => await new Promise<{ status: number, clamped: number | null }>((resolve) => {
    const payload = JSON.stringify(body({ max_tokens: 300 + (index % 7) * 400, stream: index % 3 === 0 }))
    const request = httpRequest(`${base}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-relay-team-id': 'team-a', 'x-relay-organization-id': 'acme' }
    }, (response) => {
      const clamped = response.headers['x-budget-clamped-max-tokens']
      const result = { status: response.statusCode!, clamped: clamped === undefined ? null : Number(clamped) }
      if (index % 5 === 4) { response.destroy(); resolve(result); return }
      response.resume()
      response.on('end', () => resolve(result))
      response.on('error', () => resolve(result))
    })
    request.on('error', () => resolve({ status: 0, clamped: null }))
    request.end(payload)
    if (index % 5 === 4) setTimeout(() => request.destroy(), 10)
  })
  const results = await Promise.all(Array.from({ length: 60 }, async (_, index) => await call(index)))
  const served = results.filter((result) => result.status === 200)
  const clampedCalls = served.filter((result) => result.clamped !== null)
  t.ok(served.length > 0, `${served.length} answered`)
  t.ok(clampedCalls.length > 0, `${clampedCalls.length} of them clamped`)
  t.ok(clampedCalls.every((result) => result.clamped! >= 16), 'never below the floor')
  t.ok(results.every((result) => [0, 200, 402].includes(result.status)), 'answered, refused for want of room, or left')
  await gateway.settled(20_000)
  for (const [id, limit] of [[budget.id, '0.02'], [organization.id, '0.05']] as const) {
    const status = await gateway.status(id)
    t.ok(toUnits(status.currentAmount) <= toUnits(limit), `spent ${status.currentAmount} of ${limit}`)
  }
  await checkInvariants(t, gateway.sql)
})

t.test('clamp counts the prompt once: the search prices other output limits from the first estimate', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json-worst-case' })
  let estimates = 0
  const estimateCost = async (request: FastifyRequest, book: PriceBook, model?: string) => { estimates++; return await estimateChatCost(request.body, book, model) }
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0, estimateCost } })
  const budget = await gateway.createBudget({ amount: '0.05', nearLimit: 'clamp' })
  await spendTo(gateway.app, budget.id, '0.04')
  const long = body({ messages: [{ role: 'user', content: 'Write a long story about '.repeat(200) }], max_tokens: 16_000 })
  const response = await gateway.call({ team: 'team-a' }, long)
  t.equal(response.statusCode, 200)
  const clamped = Number(response.headers['x-budget-clamped-max-tokens'])
  t.equal(estimates, 1, 'one estimate (the prompt counted once), however many limits the search tried')
  const room = toUnits('0.01')
  const at = async (tokens: number): Promise<bigint> => toUnits((await estimateChatCost({ ...long, max_tokens: tokens }, prices)).amount)
  t.ok((await at(clamped)) <= room && (await at(clamped + 1)) > room, `still the largest max_tokens that fits: ${clamped}`)

  // A custom estimate that cannot price other limits by itself: clamp asks it again, and still finds the largest.
  let plain = 0
  const withoutArithmetic = async (request: FastifyRequest, book: PriceBook, model?: string) => { plain++; const { model: chosen, amount, tokens } = (await estimateChatCost(request.body, book, model)); return { model: chosen, amount, tokens } }
  const other = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0, estimateCost: withoutArithmetic } })
  const second = await other.createBudget({ amount: '0.05', nearLimit: 'clamp' })
  await spendTo(other.app, second.id, '0.04')
  const again = await other.call({ team: 'team-a' }, long)
  t.equal(Number(again.headers['x-budget-clamped-max-tokens']), clamped, 'the same clamp')
  t.ok(plain > 1, `a custom estimate without atOutputLimit is asked per candidate (${plain} times)`)
  await gateway.settled()
  await other.settled()
  await checkInvariants(t, gateway.sql)
})

t.test('the check paths report each budget\'s own nearLimit, as the gate reads it (issue 22: they said null)', async (t) => {
  const gateway = await buildGateway(t)
  const org = await gateway.createBudget({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '10', nearLimit: 'refuse' })
  const team = await gateway.createBudget({ name: 'team', amount: '1', nearLimit: 'clamp', parentId: org.id })
  await gateway.createBudget({ name: 'project', scopeType: 'project', scopeId: 'apollo', amount: '1' })
  const byName = (budgets: Array<{ name: string, nearLimit: unknown }>) => Object.fromEntries(budgets.map((budget) => [budget.name, budget.nearLimit]))

  const caller = await gateway.app.budgetIntegration.checkCaller({ team: 'team-a', project: 'apollo' }, '0.01')
  t.same(byName(caller.budgets), { team: 'clamp', org: 'refuse', project: null }, 'checkCaller')

  const checked = await gateway.app.inject({
    method: 'POST', url: `${PREFIX}/${team.id}/check-constraints`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: { estimatedCost: '0.01' }
  })
  t.equal(checked.statusCode, 200)
  t.same(byName(checked.json().budgets), { team: 'clamp', org: 'refuse' }, 'POST check-constraints')
  t.same(byName((await gateway.app.budgetTracker.checkBudgetConstraints(team.id, '0.01')).budgets), { team: 'clamp', org: 'refuse' }, 'checkBudgetConstraints')
})
