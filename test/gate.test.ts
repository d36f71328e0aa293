import t from 'tap'
import { compareMoney, fromUnits, toUnits } from '../lib/kernel/money.js'
import { buildGateway, spendTo } from './fixtures/gateway.js'

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
  const { app, call, createBudget, settled, sql } = await buildGateway(t)
  // Room everywhere except one budget of each kind, so each refusal names the budget that lacks it. The
  // organization has spent all but 0.00001 of its 1, so its children have room of their own and it has not.
  const org = await createBudget({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '1' })
  await createBudget({ name: 'alice', scopeType: 'user', scopeId: 'alice', amount: '10' })
  const bob = await createBudget({ name: 'bob', scopeType: 'user', scopeId: 'bob', amount: '0.00002' })
  await createBudget({ name: 'platform', scopeType: 'team', scopeId: 'platform', amount: '10' })
  const design = await createBudget({ name: 'design', scopeType: 'team', scopeId: 'design', amount: '0.00002' })
  const growth = await createBudget({ name: 'growth', scopeType: 'team', scopeId: 'growth', amount: '0.00002', parentId: org.id })
  const apollo = await createBudget({ name: 'apollo', scopeType: 'project', scopeId: 'apollo', amount: '0.00002' })
  await createBudget({ name: 'gemini', scopeType: 'project', scopeId: 'gemini', amount: '0.5', parentId: org.id })
  await spendTo(app, org.id, '0.99999')

  t.equal((await call({ user: 'alice', team: 'platform' })).statusCode, 200, 'alice on platform: every budget has room')
  const refusals: Array<[string, Record<string, string>, string]> = [
    ['a user budget', { user: 'bob', team: 'platform' }, bob.id],
    ['a team budget', { user: 'alice', team: 'design' }, design.id],
    ['a project budget', { user: 'alice', team: 'platform', project: 'apollo' }, apollo.id],
    ['an organization budget', { user: 'alice', organization: 'acme' }, org.id],
    ['a project\'s ancestor (gemini has room, its organization has not)', { user: 'alice', project: 'gemini' }, org.id]
  ]
  for (const [name, scopes, binding] of refusals) {
    const response = await call(scopes, { max_tokens: 1000 })
    t.equal(response.statusCode, 402, `${name} refuses`)
    t.equal(response.json().error.budget.id, binding, `${name}: the refusal names it`)
  }
  const nearest = await call({ user: 'alice', team: 'growth' }, { max_tokens: 1000 })
  t.equal(nearest.json().error.budget.id, growth.id, 'a team and its organization both without room: the nearest binds')
  await settled()
  const [usage] = await sql`select count(*)::int as count from budget_usage_records where source = 'gateway'`
  t.equal(usage!.count, 1, 'only the allowed call was charged')
  const held = await sql`select budget_id from budget_status_cache where reserved_amount <> 0`
  t.same(held, [], 'the refused calls hold nothing on any budget')
})

t.test('a call counts once toward every applicable budget, even when two of its scopes share an ancestor', async (t) => {
  const { call, createBudget, status, settled, sql } = await buildGateway(t)
  const org = await createBudget({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '10' })
  const alice = await createBudget({ name: 'alice', scopeType: 'user', scopeId: 'alice', amount: '5', parentId: org.id })
  const project = await createBudget({ name: 'apollo', scopeType: 'project', scopeId: 'apollo', amount: '5', parentId: org.id })
  const response = await call({ user: 'alice', project: 'apollo' })
  t.equal(response.statusCode, 200)
  await settled()
  // gpt-4o-mini: 0.15 per 1M input, 0.6 per 1M output, rounded up to 10 decimals.
  const { prompt_tokens: input, completion_tokens: output } = response.json().usage
  const cost = fromUnits((BigInt(input) * toUnits('0.15') + BigInt(output) * toUnits('0.6') + 999_999n) / 1_000_000n)
  t.equal((await status(alice.id)).currentAmount, cost, 'the user counts the call\'s cost')
  t.equal((await status(project.id)).currentAmount, cost, 'the project counts it')
  t.equal((await status(org.id)).currentAmount, cost, 'and the organization counts it once, not twice')
  const [counts] = await sql`
    select (select count(*)::int from budget_usage_records) as records,
           (select count(*)::int from budget_usage_allocations where budget_id = ${org.id}) as "orgAllocations"`
  t.same(counts, { records: 1, orgAllocations: 1 }, 'one usage record, allocated to the organization once')
})

t.test('a soft budget only alerts; a hard one refuses', async (t) => {
  const { app, call, createBudget, settled, sql } = await buildGateway(t)
  const soft = await createBudget({
    name: 'soft', scopeType: 'team', scopeId: 'soft', amount: '0.000001', enforcement: 'soft',
    alerts: [{ threshold: 100, actions: ['notify'], notificationChannels: ['ops'] }]
  })
  const allowed = await call({ team: 'soft' })
  t.equal(allowed.statusCode, 200, 'over its amount, still allowed')
  await settled()
  const softStatus = await app.budgetTracker.getBudgetStatus(soft.id)
  t.equal(compareMoney(softStatus.currentAmount, softStatus.limit), 1, `spent ${softStatus.currentAmount}, past its amount ${softStatus.limit}`)
  t.equal(softStatus.status, 'exceeded', 'and its status says so')
  const alerts = await app.budgetAlerts.listAlerts(soft.id)
  t.match(alerts, [{ threshold: 100, actions: ['notify'] }], 'the crossing of 100% is recorded as an alert')

  const hard = await createBudget({ name: 'hard', scopeType: 'team', scopeId: 'hard', amount: '0.000001' })
  const refused = await call({ team: 'hard' })
  t.equal(refused.statusCode, 402, 'a hard budget refuses the same call')
  t.equal(refused.json().error.budget.id, hard.id)
  const [charged] = await sql`select count(*)::int as count from budget_usage_records where budget_id = ${hard.id}`
  t.equal(charged!.count, 0, 'and charges nothing')
})

t.test('no budget applies: the call goes through unreserved', async (t) => {
  const { call, createBudget, sql } = await buildGateway(t)
  const other = await createBudget({ scopeType: 'team', scopeId: 'other', amount: '0.000001' })
  for (const scopes of [{ user: 'nobody' }, {}] as Array<Record<string, string>>) {
    const response = await call(scopes)
    t.equal(response.statusCode, 200, `${JSON.stringify(scopes)}: allowed, though the only budget has no room`)
    t.equal(response.headers['x-budget-id'], undefined, 'no budget was consulted')
  }
  const [row] = await sql`
    select (select count(*)::int from budget_usage_records where budget_id is not null) as records,
           (select count(*)::int from budget_status_cache where budget_id = ${other.id} and reserved_amount <> 0) as held`
  // The calls are recorded without a budget (the spend ledger: test/unbudgeted-spend.test.ts).
  t.same(row, { records: 0, held: 0 }, 'nothing recorded under a budget, nothing held')
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
  let held: string | null = null
  const { app, createBudget, status, settled, sql } = await buildGateway(t, {
    routes: (app) => app.post('/v1/failing', { config: { budgetGate: 'chat' } }, async (request) => {
      held = request.budgetGate?.reservationId ?? null
      throw new Error('provider down')
    })
  })
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform' })
  const response = await app.inject({ method: 'POST', url: '/v1/failing', headers: { 'x-relay-team-id': 'platform' }, body: { model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] } })
  t.equal(response.statusCode, 500)
  t.ok(held !== null, 'the handler ran with a reservation held')
  await settled()
  t.match(await status(team.id), { currentAmount: '0', reservedAmount: '0' }, 'released: nothing reserved, nothing spent')
  const [row] = await sql`select (select count(*)::int from budget_usage_records) + (select count(*)::int from budget_reservations) as count`
  t.equal(row!.count, 0, 'no usage record, no reservation row')
})
