import t from 'tap'
import { createBudgetTracker } from '../lib/usage/tracker.js'
import { createRepositories } from '../lib/repositories.js'
import { PREFIX, budgetRequest, buildApp, seedBudgetRequest, snapshotTables } from './fixtures/app.js'

type Admin = Awaited<ReturnType<typeof buildApp>>['admin']

async function createBudget (admin: Admin, overrides: Record<string, unknown> = {}) {
  const response = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ startDate: '2024-01-01', amount: '1000', ...overrides }) })
  if (response.statusCode !== 201) throw new Error(response.body)
  return response.json() as { id: string }
}

const usage = (overrides: Record<string, unknown> = {}) => ({ amount: '10', currency: 'USD', source: 'test', ...overrides })

async function usageRows (sql: Awaited<ReturnType<typeof buildApp>>['sql']): Promise<number> {
  const [row] = await sql`select count(*)::int as count from budget_usage_records`
  return row!.count as number
}

t.test('the seed RecordUsageRequest records (201) and shows in status', async (t) => {
  const { admin } = await buildApp(t)
  const budget = (await admin({ method: 'POST', url: PREFIX, body: { ...seedBudgetRequest(), startDate: '2024-01-01', period: 'annual' } })).json()
  const response = await admin({
    method: 'POST',
    url: `${PREFIX}/${budget.id}/usage`,
    body: {
      amount: 25.50,
      currency: 'USD',
      source: 'openai-gpt-4',
      description: 'GPT-4 API calls for code review',
      metadata: { requestId: 'req-123', modelId: 'gpt-4', userId: 'user-456', teamId: 'team-engineering', inputTokens: 1500, outputTokens: 800 }
    }
  })
  t.equal(response.statusCode, 201)
  t.match(response.json(), {
    id: /^[0-9a-f-]{36}$/,
    budgetId: budget.id,
    amount: '25.5',
    currency: 'USD',
    source: 'openai-gpt-4',
    description: 'GPT-4 API calls for code review',
    metadata: { requestId: 'req-123', modelId: 'gpt-4', userId: 'user-456', inputTokens: 1500, outputTokens: 800 }
  })
  const status = (await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/status` })).json()
  t.match(status, { budgetId: budget.id, currentAmount: '25.5', limit: '10000', currency: 'USD', reservedAmount: '0', remaining: '9974.5', status: 'normal', state: 'active' })
})

t.test('a retried record is stored once and answers with the first record', async (t) => {
  const { admin, sql } = await buildApp(t)
  const budget = await createBudget(admin, { period: 'annual' })
  const body = usage({ amount: '1.25', metadata: { requestId: 'req-1' } })
  const first = await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body })
  const again = await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body })
  t.equal(first.statusCode, 201)
  t.equal(again.statusCode, 200, 'a replay is not an error')
  t.equal(again.headers['idempotent-replayed'], 'true')
  t.same(again.json(), first.json(), 'the same record')

  const byHeader = { ...usage({ amount: '2' }) }
  const headers = { 'idempotency-key': 'key-7' }
  const h1 = await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: byHeader, headers })
  const h2 = await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: byHeader, headers })
  t.same([h1.statusCode, h2.statusCode], [201, 200], 'the Idempotency-Key header works the same')
  t.equal(h2.json().id, h1.json().id)

  const conflict = await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: { ...body, amount: '9' } })
  t.equal(conflict.statusCode, 409, 'a reused key with another amount is refused')
  t.equal(conflict.json().code, 'BUDGET_ERR_IDEMPOTENCY_CONFLICT')
  t.equal(await usageRows(sql), 2)
  t.equal((await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/status` })).json().currentAmount, '3.25')
})

t.test('identical requests at the same instant store one record', async (t) => {
  const { admin, sql } = await buildApp(t)
  const budget = await createBudget(admin, { period: 'annual' })
  for (let round = 0; round < 5; round++) {
    const body = usage({ amount: '0.5', metadata: { requestId: `burst-${round}` } })
    const responses = await Promise.all(Array.from({ length: 20 }, async () => await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body })))
    t.equal(responses.filter((r) => r.statusCode === 201).length, 1, `round ${round}: one 201`)
    t.equal(responses.filter((r) => r.statusCode === 200).length, 19, 'and 19 replays')
    t.equal(new Set(responses.map((r) => r.json().id)).size, 1, 'all naming the same record')
  }
  t.equal(await usageRows(sql), 5)
  t.equal((await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/status` })).json().currentAmount, '2.5')
})

t.test('1,000 concurrent records on one budget: no lost update', async (t) => {
  const { admin, sql } = await buildApp(t)
  const parent = await createBudget(admin, { period: 'annual', amount: '100000', scopeType: 'organization' })
  const budget = await createBudget(admin, { period: 'monthly', amount: '100000', parentId: parent.id })
  const amounts = Array.from({ length: 1000 }, (_, i) => `${(i % 97) + 1}.${String(i % 1000).padStart(3, '0')}1`)
  const expectedUnits = amounts.reduce((sum, amount) => sum + BigInt(amount.replace('.', '')), 0n) // four decimals each
  const expected = `${expectedUnits / 10000n}.${String(expectedUnits % 10000n).padStart(4, '0')}`.replace(/\.?0+$/, '')
  const statuses: number[] = []
  for (let offset = 0; offset < amounts.length; offset += 100) {
    // 100 in flight at a time: as concurrent as the connection pool allows
    const batch = await Promise.all(amounts.slice(offset, offset + 100).map(async (amount) =>
      await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: usage({ amount }) })))
    statuses.push(...batch.map((r) => r.statusCode))
  }
  t.ok(statuses.every((s) => s === 201), 'all recorded')
  for (const id of [budget.id, parent.id]) {
    t.equal((await admin({ method: 'GET', url: `${PREFIX}/${id}/status` })).json().currentAmount, expected, 'the trigger-kept cache lost nothing')
    const [row] = await sql`select usage_count::int from budget_status_cache where budget_id = ${id}`
    t.equal(row!.usage_count, 1000, 'and counted every record')
    t.equal((await admin({ method: 'POST', url: `${PREFIX}/${id}/refresh-cache` })).json().currentAmount, expected, 'a recompute from the rows agrees')
  }
})

t.test('usage on a child counts toward every ancestor', async (t) => {
  const { admin } = await buildApp(t)
  const org = await createBudget(admin, { scopeType: 'organization', scopeId: 'acme', period: 'annual', amount: '10000' })
  const team = await createBudget(admin, { scopeType: 'team', scopeId: 'platform', period: 'monthly', amount: '1000', parentId: org.id })
  const alice = await createBudget(admin, { scopeType: 'user', scopeId: 'alice', period: 'daily', amount: '50', parentId: team.id })
  const now = new Date().toISOString()
  await admin({ method: 'POST', url: `${PREFIX}/${alice.id}/usage`, body: usage({ amount: '3.5', occurredAt: now }) })
  await admin({ method: 'POST', url: `${PREFIX}/${team.id}/usage`, body: usage({ amount: '10', occurredAt: now }) })
  await admin({ method: 'POST', url: `${PREFIX}/${org.id}/usage`, body: usage({ amount: '100', occurredAt: now }) })
  const current = async (id: string) => (await admin({ method: 'GET', url: `${PREFIX}/${id}/status` })).json().currentAmount
  t.equal(await current(alice.id), '3.5')
  t.equal(await current(team.id), '13.5')
  t.equal(await current(org.id), '113.5')
  const history = (await admin({ method: 'GET', url: `${PREFIX}/${org.id}/usage` })).json()
  t.equal(history.records.length, 3, 'the org\'s history holds what counts toward it')
})

t.test('10,000 records of 0.0001 make exactly 1', async (t) => {
  const { app, admin } = await buildApp(t)
  const budget = await createBudget(admin, { period: 'annual' })
  const occurredAt = new Date().toISOString()
  for (let offset = 0; offset < 10_000; offset += 250) {
    await Promise.all(Array.from({ length: 250 }, async () =>
      await app.budgetTracker.recordUsage({ budgetId: budget.id, amount: 0.0001, currency: 'USD', occurredAt })))
  }
  const status = (await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/status` })).json()
  t.equal(status.currentAmount, '1')
  t.equal(status.percentUsed, 0.1)
  const refreshed = (await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/refresh-cache` })).json()
  t.equal(refreshed.currentAmount, '1', 'and recomputed from the rows, still exactly 1')
  t.equal((await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/usage/summary` })).json().total, '1')
})

t.test('bad usage input is a 4xx naming the field, and stores nothing', async (t) => {
  const { admin, sql } = await buildApp(t)
  const budget = await createBudget(admin, { period: 'annual' })
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['zero amount', { amount: 0 }, 'amount'],
    ['negative amount', { amount: -1 }, 'amount'],
    ['negative amount as text', { amount: '-0.01' }, 'amount'],
    ['NaN', { amount: 'NaN' }, 'amount'],
    ['Infinity', { amount: 'Infinity' }, 'amount'],
    ['too precise', { amount: '0.00000000001' }, 'amount'],
    ['a boolean amount', { amount: false }, 'amount'],
    ['no amount', { amount: undefined }, 'amount'],
    ['wrong currency', { currency: 'EUR' }, 'currency'],
    ['malformed currency', { currency: 'dollars' }, 'currency'],
    ['token count as text', { metadata: { inputTokens: '1500' } }, 'metadata.inputTokens'],
    ['negative token count', { metadata: { outputTokens: -1 } }, 'metadata.outputTokens'],
    ['metadata that is a list', { metadata: ['x'] }, 'metadata'],
    ['empty request id', { metadata: { requestId: '' } }, 'metadata.requestId'],
    ['occurredAt in the future', { occurredAt: new Date(Date.now() + 86_400_000).toISOString() }, 'occurredAt'],
    ['occurredAt that is no date', { occurredAt: 'yesterday' }, 'occurredAt'],
    ['unknown field', { cost: '1' }, 'cost']
  ]
  for (const [name, change, field] of cases) {
    const response = await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: usage(change) })
    t.equal(response.statusCode, 400, name)
    t.match(response.json(), { code: /^BUDGET_ERR_/, field }, `${name} names ${field}`)
  }
  const nanLiteral = await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, payload: '{"amount": NaN, "currency": "USD"}', headers: { 'content-type': 'application/json' } })
  t.equal(nanLiteral.statusCode, 400, 'a NaN literal is not JSON')
  const unknown = await admin({ method: 'POST', url: `${PREFIX}/00000000-0000-4000-8000-000000000000/usage`, body: usage() })
  t.equal(unknown.statusCode, 404)
  t.equal(unknown.json().code, 'BUDGET_ERR_NOT_FOUND')
  const notUuid = await admin({ method: 'POST', url: `${PREFIX}/nope/usage`, body: usage() })
  t.equal(notUuid.statusCode, 404)
  const beforeStart = await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: usage({ occurredAt: '2023-12-31T23:59:59.999Z' }) })
  t.equal(beforeStart.statusCode, 409, 'before the budget starts')
  t.equal(beforeStart.json().code, 'BUDGET_ERR_NOT_ACTIVE')
  t.equal(await usageRows(sql), 0, 'nothing stored')
})

t.test('history: filters, stable keyset pages, and bad queries', async (t) => {
  const { admin } = await buildApp(t)
  const budget = await createBudget(admin, { period: 'annual', amount: '100000' })
  const models = ['gpt-4o', 'gpt-4o-mini']
  for (let i = 0; i < 25; i++) {
    const occurredAt = new Date(Date.UTC(2024, 0, 2 + (i % 5), 12, 0, i)).toISOString()
    await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: usage({ amount: String(i + 1), occurredAt, metadata: { modelId: models[i % 2], userId: `u${i % 3}` } }) })
  }
  const url = `${PREFIX}/${budget.id}/usage?from=2024-01-01&to=2024-02-01`
  const seen: string[] = []
  let cursor: string | null = null
  let pages = 0
  do {
    const page: { records: Array<{ id: string, occurredAt: string }>, nextCursor: string | null } =
      (await admin({ method: 'GET', url: `${url}&limit=10${cursor === null ? '' : `&cursor=${cursor}`}` })).json()
    seen.push(...page.records.map((r) => r.id))
    if (pages === 0) {
      // A record arriving between pages lands before the cursor and does not shift the later pages.
      await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: usage({ occurredAt: '2024-01-31T00:00:00Z' }) })
    }
    cursor = page.nextCursor
    pages++
  } while (cursor !== null)
  t.equal(pages, 3)
  t.equal(seen.length, 25, 'every record once')
  t.equal(new Set(seen).size, 25, 'no repeats')

  const mini = (await admin({ method: 'GET', url: `${url}&modelId=gpt-4o-mini&limit=100` })).json()
  t.equal(mini.records.length, 12)
  t.ok(mini.records.every((r: { metadata: { modelId: string } }) => r.metadata.modelId === 'gpt-4o-mini'))
  const u1 = (await admin({ method: 'GET', url: `${url}&userId=u1&limit=100` })).json()
  t.equal(u1.records.length, 8)
  const range = (await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/usage?from=2024-01-03&to=2024-01-04` })).json()
  t.equal(range.records.length, 5, 'from inclusive, to exclusive')

  for (const [query, field] of [['from=2024-02-01&to=2024-01-01', 'to'], ['limit=0', 'limit'], ['limit=501', 'limit'], ['limit=ten', 'limit'],
    ['cursor=bogus', 'cursor'], ['from=soon', 'from'], ['sort=asc', 'sort']] as const) {
    const response = await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/usage?${query}` })
    t.equal(response.statusCode, 400, query)
    t.equal(response.json().field, field, `${query} names ${field}`)
  }
})

t.test('summary: totals and counts by model, user and day', async (t) => {
  const { admin } = await buildApp(t)
  const budget = await createBudget(admin, { period: 'annual', amount: '100000' })
  const rows: Array<[string, string, string | undefined, string]> = [
    ['1.10', 'gpt-4o', 'alice', '2024-01-02T10:00:00Z'],
    ['2.20', 'gpt-4o', 'bob', '2024-01-02T23:59:59.999Z'],
    ['0.05', 'gpt-4o-mini', 'alice', '2024-01-03T00:00:00Z'],
    ['4', 'gpt-4o-mini', undefined, '2024-01-05T08:00:00Z']
  ]
  for (const [amount, modelId, userId, occurredAt] of rows) {
    await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: usage({ amount, occurredAt, metadata: { modelId, ...(userId === undefined ? {} : { userId }) } }) })
  }
  const response = await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/usage/summary?from=2024-01-01&to=2024-01-04` })
  t.equal(response.statusCode, 200)
  t.same(response.json(), {
    budgetId: budget.id,
    currency: 'USD',
    from: '2024-01-01T00:00:00.000Z',
    to: '2024-01-04T00:00:00.000Z',
    total: '3.35',
    count: 3,
    byModel: [{ modelId: 'gpt-4o', total: '3.3', count: 2 }, { modelId: 'gpt-4o-mini', total: '0.05', count: 1 }],
    byUser: [{ userId: 'alice', total: '1.15', count: 2 }, { userId: 'bob', total: '2.2', count: 1 }],
    byDay: [{ day: '2024-01-02', total: '3.3', count: 2 }, { day: '2024-01-03', total: '0.05', count: 1 }]
  })
  const all = (await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/usage/summary?from=2024-01-01&to=2024-02-01` })).json()
  t.same(all.byUser.at(-1), { userId: null, total: '4', count: 1 }, 'records without a user are grouped as null')
  const reversed = await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/usage/summary?from=2024-02-01&to=2024-01-01` })
  t.match(reversed.json(), { code: 'BUDGET_ERR_VALIDATION', field: 'to' })
})

t.test('status: the cache serves reads, recomputes when older than its TTL, and refresh-cache rebuilds it', async (t) => {
  const { admin, sql } = await buildApp(t)
  const budget = await createBudget(admin, { period: 'annual' })
  await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: usage({ amount: '40' }) })
  // Tamper with the cached number behind the trigger's back: a fresh row is trusted...
  await sql`update budget_status_cache set current_amount = 999 where budget_id = ${budget.id}`
  t.equal((await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/status` })).json().currentAmount, '999', 'a fresh row is served as it is')
  // ...a row older than five minutes is recomputed from the usage rows on read.
  await sql`update budget_status_cache set updated_at = now() - interval '6 minutes' where budget_id = ${budget.id}`
  const recomputed = (await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/status` })).json()
  t.equal(recomputed.currentAmount, '40', 'a stale row is recomputed')
  t.ok(Date.now() - Date.parse(recomputed.lastUpdated) < 60_000, 'and is fresh again')
  await sql`update budget_status_cache set current_amount = 1 where budget_id = ${budget.id}`
  const refreshed = await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/refresh-cache` })
  t.equal(refreshed.statusCode, 200)
  t.equal(refreshed.json().currentAmount, '40', 'refresh-cache rebuilds it on demand')
  t.equal((await admin({ method: 'POST', url: `${PREFIX}/nope/refresh-cache` })).statusCode, 404)
  t.equal((await admin({ method: 'GET', url: `${PREFIX}/nope/status` })).statusCode, 404)
})

t.test('a recurring budget rolls over to a fresh period; the old period stays queryable', async (t) => {
  const { admin } = await buildApp(t)
  const today = new Date()
  const start = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - 3)).toISOString()
  const budget = await createBudget(admin, { period: 'daily', amount: '10', startDate: start })
  const yesterday = new Date(Date.now() - 86_400_000).toISOString()
  await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: usage({ amount: '9', occurredAt: yesterday }) })
  await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: usage({ amount: '1' }) })
  const status = (await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/status` })).json()
  t.equal(status.currentAmount, '1', 'only today\'s spend')
  t.equal(status.periodStart, new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate())).toISOString())
  const old = (await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/usage/summary?from=${start}&to=${status.periodStart}` })).json()
  t.equal(old.total, '9', 'yesterday\'s spend is still there')
})

t.test('status fields against hand-computed values, on the tracker with a fixed clock', async (t) => {
  const { app, admin, sql } = await buildApp(t)
  const budget = await createBudget(admin, { period: 'monthly', startDate: '2024-04-01', amount: '1000', alerts: [{ threshold: 20, actions: ['notify'] }] })
  await app.budgetTracker.recordUsage({ budgetId: budget.id, amount: '150', currency: 'USD', occurredAt: '2024-04-03T00:00:00Z' })
  await app.budgetTracker.recordUsage({ budgetId: budget.id, amount: '100', currency: 'USD', occurredAt: '2024-04-10T00:00:00Z' })
  const tracker = createBudgetTracker(createRepositories(sql), { statusCacheTtlMs: Number.MAX_SAFE_INTEGER, now: () => new Date('2024-04-11T00:00:00Z') })
  t.match(await tracker.getBudgetStatus(budget.id), {
    currentAmount: '250', limit: '1000', percentUsed: 25, remaining: '750', daysRemaining: 20,
    burnRate: '25', projectedTotal: '750', status: 'warning', reservedAmount: '0',
    activeAlerts: [{ threshold: 20, basis: 'current', actions: ['notify'], acknowledged: false }],
    periodStart: '2024-04-01T00:00:00.000Z', periodEnd: '2024-05-01T00:00:00.000Z', state: 'active'
  })
})

t.test('check-constraints: the decision and the numbers behind it, for the budget and its ancestors', async (t) => {
  const { admin } = await buildApp(t)
  const org = await createBudget(admin, { scopeType: 'organization', period: 'annual', amount: '100' })
  const team = await createBudget(admin, { period: 'monthly', amount: '80', parentId: org.id })
  await admin({ method: 'POST', url: `${PREFIX}/${org.id}/usage`, body: usage({ amount: '60' }) })
  await admin({ method: 'POST', url: `${PREFIX}/${team.id}/usage`, body: usage({ amount: '30' }) })
  const check = async (estimatedCost: unknown) => await admin({ method: 'POST', url: `${PREFIX}/${team.id}/check-constraints`, body: { estimatedCost } })
  const fits = (await check('10')).json()
  t.match(fits, { canProceed: true, code: null, estimatedCost: '10', bindingBudgetId: org.id, limit: '100', currentAmount: '90', remaining: '10' })
  t.same(fits.budgets.map((b: { budgetId: string }) => b.budgetId), [team.id, org.id], 'nearest first')
  const over = (await check(10.01)).json()
  t.match(over, { canProceed: false, code: 'budget_exceeded', bindingBudgetId: org.id, remaining: '10', status: 'critical' })
  t.match(over.suggestedActions, [/cheaper model/])
  for (const bad of [0, '-1', 'lots', null]) {
    const response = await check(bad)
    t.equal(response.statusCode, 400, `estimatedCost ${String(bad)}`)
    t.equal(response.json().field, 'estimatedCost')
  }
})

t.test('spend stays counted where it was counted when a budget moves within its tree; a move out of the tree is refused', async (t) => {
  const { admin, sql } = await buildApp(t)
  const org = await createBudget(admin, { scopeType: 'organization', scopeId: 'org', period: 'annual' })
  const a = await createBudget(admin, { scopeType: 'team', scopeId: 'a', period: 'annual', parentId: org.id })
  const b = await createBudget(admin, { scopeType: 'team', scopeId: 'b', period: 'annual', parentId: org.id })
  const other = await createBudget(admin, { scopeType: 'organization', scopeId: 'other', period: 'annual' })
  const team = await createBudget(admin, { period: 'monthly', amount: '100', parentId: a.id })
  await admin({ method: 'POST', url: `${PREFIX}/${team.id}/usage`, body: usage({ amount: '7' }) })
  const current = async (id: string) => (await admin({ method: 'GET', url: `${PREFIX}/${id}/status` })).json().currentAmount
  t.equal(await current(a.id), '7')
  t.equal((await admin({ method: 'PUT', url: `${PREFIX}/${team.id}`, body: { parentId: b.id } })).statusCode, 200)
  await admin({ method: 'POST', url: `${PREFIX}/${team.id}/usage`, body: usage({ amount: '2' }) })
  t.equal(await current(a.id), '7', 'the former parent keeps what was spent under it')
  t.equal(await current(b.id), '2', 'the new parent counts what is spent from now on')
  t.equal(await current(org.id), '9', 'the root counts both')
  t.equal(await current(team.id), '9')
  t.equal((await admin({ method: 'POST', url: `${PREFIX}/${a.id}/refresh-cache` })).json().currentAmount, '7', 'and a recompute agrees')
  const before = await snapshotTables(sql)
  for (const parentId of [other.id, null]) {
    const moved = await admin({ method: 'PUT', url: `${PREFIX}/${team.id}`, body: { currency: 'EUR', parentId } })
    t.equal(moved.statusCode, 409, `under ${parentId === null ? 'no parent' : 'another tree'}: refused`)
    t.match(moved.json(), { code: 'BUDGET_ERR_MOVE_ACROSS_TREES', field: 'parentId' })
  }
  t.same(await snapshotTables(sql), before, 'and nothing changed')
})
