import t from 'tap'
import { compareMoney } from '../lib/money.js'
import { buildGateway } from './fixtures/gateway.js'

t.test('a call within budget goes through, carries the binding budget\'s remaining amount, and settles its actual cost', async (t) => {
  const { call, createBudget, status, settled, sql } = await buildGateway(t)
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1' })
  const response = await call({ team: 'platform' })
  t.equal(response.statusCode, 200)
  const body = response.json()
  t.equal(body.model, 'gpt-4o-mini')
  t.equal(response.headers['x-budget-id'], team.id)
  t.equal(response.headers['x-budget-currency'], 'USD')
  await settled()
  // gpt-4o-mini: 0.15 per 1M input, 0.6 per 1M output; the mock's usage follows from the prompt.
  const { prompt_tokens: input, completion_tokens: output } = body.usage
  const expected = (BigInt(input) * 1_500_000_000n + BigInt(output) * 6_000_000_000n + 999_999n) / 1_000_000n // 10 decimals, rounded up
  const current = (await status(team.id)).currentAmount
  t.equal(current, `0.${expected.toString().padStart(10, '0')}`.replace(/0+$/, ''), 'the actual cost from usage x price')
  t.equal((await status(team.id)).reservedAmount, '0', 'the reservation is gone')
  t.equal(compareMoney(response.headers['x-budget-remaining'] as string, '1'), -1, 'remaining after the reservation')
  const [record] = await sql`select metadata from budget_usage_records`
  t.match(record!.metadata, { modelId: 'gpt-4o-mini', inputTokens: input, outputTokens: output, teamId: 'platform' })
})

t.test('a call over budget is refused with 402 in the OpenAI error shape, and reserves nothing', async (t) => {
  const { call, createBudget, status, upstreamCalls, sql } = await buildGateway(t, { upstream: true })
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '0.0001' })
  const response = await call({ team: 'platform' }, { model: 'gpt-4o', max_tokens: 1000 })
  t.equal(response.statusCode, 402)
  t.match(response.json(), {
    error: {
      message: /Budget 'budget' has 0.0001 left, less than the estimated cost/,
      type: 'insufficient_quota',
      code: 'budget_exceeded',
      param: null,
      budget: { id: team.id, remaining: '0.0001', limit: '0.0001', currency: 'USD' }
    }
  })
  t.equal(response.headers['x-budget-id'], team.id)
  t.equal(upstreamCalls(), 0, 'the provider was not called')
  t.equal((await status(team.id)).reservedAmount, '0')
  const [row] = await sql`select count(*)::int as count from budget_reservations`
  t.equal(row!.count, 0)
})

t.test('every applicable budget must fit: user, team, project, organization and their ancestors', async (t) => {
  const { call, createBudget, settled } = await buildGateway(t)
  const org = await createBudget({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '0.00002' })
  await createBudget({ name: 'alice', scopeType: 'user', scopeId: 'alice', amount: '10' })
  const team = await createBudget({ name: 'team', scopeType: 'team', scopeId: 'platform', amount: '0.00002', parentId: org.id })
  const project = await createBudget({ name: 'project', scopeType: 'project', scopeId: 'apollo', amount: '5' })

  const aliceOnly = await call({ user: 'alice' })
  t.equal(aliceOnly.statusCode, 200, 'alice alone has room')
  const withTeam = await call({ user: 'alice', team: 'platform' }, { max_tokens: 1000 })
  t.equal(withTeam.statusCode, 402, 'the team (via its organization) has not')
  t.equal(withTeam.json().error.budget.id, team.id, 'the nearest budget without room binds')
  await settled()
  const viaAncestor = await call({ project: 'apollo', organization: 'acme' }, { max_tokens: 1000 })
  t.equal(viaAncestor.statusCode, 402)
  t.equal(viaAncestor.json().error.budget.id, org.id)
  t.not(project.id, org.id)
})

t.test('a call counts once toward every applicable budget, even when two of its scopes share an ancestor', async (t) => {
  const { call, createBudget, status, settled } = await buildGateway(t)
  const org = await createBudget({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '10' })
  const alice = await createBudget({ name: 'alice', scopeType: 'user', scopeId: 'alice', amount: '5', parentId: org.id })
  const project = await createBudget({ name: 'apollo', scopeType: 'project', scopeId: 'apollo', amount: '5', parentId: org.id })
  const response = await call({ user: 'alice', project: 'apollo' })
  t.equal(response.statusCode, 200)
  await settled()
  const spent = (await status(alice.id)).currentAmount
  t.not(spent, '0')
  t.equal((await status(project.id)).currentAmount, spent, 'the project counts it')
  t.equal((await status(org.id)).currentAmount, spent, 'and the organization counts it once, not twice')
})

t.test('a soft budget only alerts; a hard one refuses', async (t) => {
  const { app, call, createBudget, settled } = await buildGateway(t)
  const soft = await createBudget({ name: 'soft', scopeType: 'team', scopeId: 'soft', amount: '0.000001', enforcement: 'soft' })
  t.equal((await app.budgetRegistry.getBudget(soft.id)).enforcement, 'soft')
  t.equal((await call({ team: 'soft' })).statusCode, 200, 'over its amount, still allowed')
  await createBudget({ name: 'hard', scopeType: 'team', scopeId: 'hard', amount: '0.000001' })
  t.equal((await call({ team: 'hard' })).statusCode, 402)
  await settled()
})

t.test('no budget applies: the call goes through unreserved', async (t) => {
  const { call, sql } = await buildGateway(t)
  t.equal((await call({ user: 'nobody' })).statusCode, 200)
  t.equal((await call({})).statusCode, 200)
  const [row] = await sql`select count(*)::int as count from budget_usage_records`
  t.equal(row!.count, 0)
})

t.test('bad scope headers and bad bodies get a clear 400, and the provider is not called', async (t) => {
  const { app, call, createBudget, upstreamCalls } = await buildGateway(t, { upstream: true })
  await createBudget({ scopeType: 'team', scopeId: 'platform' })
  const cases: Array<[string, Record<string, string>, Record<string, unknown>, string, string | null]> = [
    ['an empty scope header', { team: '' }, {}, 'invalid_scope', 'x-relay-team-id'],
    ['a 10 KB scope header', { user: 'u'.repeat(10_240) }, {}, 'invalid_scope', 'x-relay-user-id'],
    ['a scope with spaces', { project: 'two words' }, {}, 'invalid_scope', 'x-relay-project-id'],
    ['a model without a price', { team: 'platform' }, { model: 'gpt-9' }, 'model_not_priced', 'model'],
    ['a model that is a number', { team: 'platform' }, { model: 42 }, 'invalid_request', 'model'],
    ['messages that are a string', { team: 'platform' }, { messages: 'hello' }, 'invalid_request', 'messages'],
    ['max_tokens as text', { team: 'platform' }, { max_tokens: '20' }, 'invalid_request', 'max_tokens'],
    ['negative max_tokens', { team: 'platform' }, { max_tokens: -5 }, 'invalid_request', 'max_tokens']
  ]
  for (const [name, scopes, body, code, param] of cases) {
    const response = await call(scopes, body)
    t.equal(response.statusCode, 400, name)
    t.match(response.json(), { error: { type: 'invalid_request_error', code, param } }, `${name}: ${code}`)
  }
  const twice = await app.inject({
    method: 'POST',
    url: '/v1/chat/completions',
    headers: { 'x-relay-team-id': ['platform', 'other'] },
    body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] }
  })
  t.equal(twice.statusCode, 400, 'a scope header given twice')
  t.equal(upstreamCalls(), 0, 'no bad request reached the provider')
})

t.test('a failed call releases its reservation and records nothing', async (t) => {
  const { app, createBudget, status, settled, sql } = await buildGateway(t, {
    routes: (app) => app.post('/v1/failing', { config: { budgetGate: true } }, async () => { throw new Error('provider down') })
  })
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform' })
  const response = await app.inject({ method: 'POST', url: '/v1/failing', headers: { 'x-relay-team-id': 'platform' }, body: { model: 'gpt-4o', messages: [] } })
  t.equal(response.statusCode, 500)
  await settled()
  t.match(await status(team.id), { currentAmount: '0', reservedAmount: '0' })
  const [row] = await sql`select count(*)::int as count from budget_usage_records`
  t.equal(row!.count, 0)
})
