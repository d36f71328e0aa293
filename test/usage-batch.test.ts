import fc from 'fast-check'
import Fastify from 'fastify'
import t from 'tap'
import type { Sql } from 'postgres'
import budgets from '../lib/index.js'
import { ADMIN_TOKEN, PREFIX, budgetRequest, buildApp, snapshotTables, type TestApp } from './fixtures/app.js'
import { createTestSql } from './fixtures/database.js'
import { migrateFolded } from './fixtures/folded-migrations.js'

const BATCH = `${PREFIX}/usage/batch`

interface Result { index: number, status: string, record?: { id: string, budgetId: string, amount: string }, error?: { code: string, field?: string } }
interface Answer { results: Result[], created: number, replayed: number, refused: number }

async function createBudget (admin: TestApp['admin'], overrides: Record<string, unknown> = {}): Promise<{ id: string }> {
  const response = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ amount: '1000', ...overrides }) })
  if (response.statusCode !== 201) throw new Error(response.body)
  return response.json()
}

async function batch (admin: TestApp['admin'], records: unknown[]): Promise<Answer> {
  const response = await admin({ method: 'POST', url: BATCH, body: { records } })
  if (response.statusCode !== 200) throw new Error(`${response.statusCode} ${response.body.slice(0, 500)}`)
  return response.json()
}

async function count (sql: Sql, table: string): Promise<number> {
  const [row] = await sql.unsafe(`select count(*)::int as n from ${table}`)
  return row!.n as number
}

/** Where the money went, by budget name: each record's allocations, the cache rows and the alert crossings. */
async function ledger (sql: Sql) {
  const allocations = await sql`
    select b.name, a.amount::text, u.idempotency_key as key, a.occurred_at, a.exchange_rate::text as rate
    from budget_usage_allocations a join budget_definitions b on b.id = a.budget_id join budget_usage_records u on u.id = a.usage_id
    order by b.name, u.idempotency_key nulls last, a.amount, a.occurred_at, a.exchange_rate` // every column: a total order, so equal ledgers compare equal
  const cache = await sql`
    select b.name, c.period_start, c.period_end, c.current_amount::text, c.usage_count::int, c.last_usage_at, c.reserved_amount::text
    from budget_status_cache c join budget_definitions b on b.id = c.budget_id order by b.name, c.period_start`
  const crossings = await sql`
    select b.name, h.period_start, h.threshold::text, h.basis, h.actions, h.spent::text, h.limit_amount::text
    from budget_alert_history h join budget_definitions b on b.id = h.budget_id order by b.name, h.period_start, h.threshold, h.basis`
  const outbox = await sql`
    select b.name, h.threshold::text, o.channel from budget_notification_outbox o
    join budget_alert_history h on h.id = o.alert_id join budget_definitions b on b.id = h.budget_id order by 1, 2, 3`
  const records = await sql`select b.name, u.amount::text, u.currency, u.idempotency_key as key, u.metadata, u.occurred_at, cardinality(u.also_counts_toward)::int as also
    from budget_usage_records u join budget_definitions b on b.id = u.budget_id order by b.name, u.idempotency_key nulls last, u.amount, u.occurred_at, u.currency, u.metadata::text, 7`
  return { allocations: [...allocations], cache: [...cache], crossings: [...crossings], outbox: [...outbox], records: [...records] }
}

t.test('answers each record in input order: created, replayed or refused, and bad records block no good one', async (t) => {
  const { admin, sql } = await buildApp(t)
  const budget = await createBudget(admin, { period: 'annual', startDate: '2024-01-01' })
  const filtered = await createBudget(admin, { name: 'gpt-4o only', scopeId: 'team-f', period: 'annual', filters: { models: ['gpt-4o'] } })
  const ok = (key: string, amount = '1.5') => ({ budgetId: budget.id, amount, currency: 'USD', source: 'test', metadata: { requestId: key, modelId: 'gpt-4o-mini' } })
  const answer = await batch(admin, [
    ok('a'),
    { ...ok('b'), amount: '-1' },
    { ...ok('c'), budgetId: '0b6e3f4e-8a62-4d8e-9a39-5d3f0f6f2c11' },
    { ...ok('d'), scopes: { team: 'team-a' } },
    { ...ok('e'), description: 'a\u0000b' },
    { ...ok('f'), budgetId: filtered.id },
    { ...ok('g'), occurredAt: '2023-06-01T00:00:00Z' },
    ok('a'),
    ok('a', '2'),
    { ...ok('h'), unknownField: 1 },
    42,
    { ...ok('i'), metadata: { requestId: 'i', tags: { 'bad key!': 'x' } } },
    { ...ok('j'), amount: 999999999999999 }
  ])
  t.same(answer.results.map((result) => [result.index, result.status, result.error?.code, result.error?.field]), [
    [0, 'created', undefined, undefined],
    [1, 'refused', 'BUDGET_ERR_VALIDATION', 'amount'],
    [2, 'refused', 'BUDGET_ERR_NOT_FOUND', undefined],
    [3, 'refused', 'BUDGET_ERR_VALIDATION', 'budgetId'],
    [4, 'refused', 'BUDGET_ERR_VALIDATION', 'description'],
    [5, 'refused', 'BUDGET_ERR_VALIDATION', 'metadata'],
    [6, 'refused', 'BUDGET_ERR_NOT_ACTIVE', undefined],
    [7, 'replayed', undefined, undefined],
    [8, 'refused', 'BUDGET_ERR_IDEMPOTENCY_CONFLICT', 'metadata.requestId'],
    [9, 'refused', 'BUDGET_ERR_VALIDATION', 'unknownField'],
    [10, 'refused', 'BUDGET_ERR_VALIDATION', 'record'],
    [11, 'refused', 'BUDGET_ERR_VALIDATION', 'metadata.tags.bad key!'],
    [12, 'created', undefined, undefined]
  ])
  t.same([answer.created, answer.replayed, answer.refused], [2, 1, 10])
  t.equal(answer.results[7]!.record!.id, answer.results[0]!.record!.id, 'a replay answers with the first record')
  t.equal(await count(sql, 'budget_usage_records'), 2, 'only the created records are stored')
  const status = (await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/status` })).json()
  t.equal(status.currentAmount, '1000000000000000.5')
})

t.test('replays across batches and against the single route', async (t) => {
  const { admin, sql } = await buildApp(t)
  const budget = await createBudget(admin, { period: 'annual' })
  const single = await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: { amount: '2', currency: 'USD', metadata: { requestId: 'r1' } } })
  t.equal(single.statusCode, 201)
  const first = await batch(admin, [{ budgetId: budget.id, amount: '2', currency: 'USD', metadata: { requestId: 'r1' } }, { budgetId: budget.id, amount: '3', currency: 'USD', metadata: { requestId: 'r2' } }])
  t.same(first.results.map((result) => result.status), ['replayed', 'created'])
  t.equal(first.results[0]!.record!.id, single.json().id)
  const again = await batch(admin, [{ budgetId: budget.id, amount: '3', currency: 'USD', metadata: { requestId: 'r2' } }, { budgetId: budget.id, amount: '4', currency: 'USD', metadata: { requestId: 'r1' } }])
  t.same(again.results.map((result) => [result.status, result.error?.code]), [['replayed', undefined], ['refused', 'BUDGET_ERR_IDEMPOTENCY_CONFLICT']])
  const replayBySingle = await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: { amount: '3', currency: 'USD', metadata: { requestId: 'r2' } } })
  t.equal(replayBySingle.statusCode, 200, 'the single route replays what a batch stored')
  t.equal(await count(sql, 'budget_usage_records'), 2)
  t.equal((await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/status` })).json().currentAmount, '5')
})

t.test('scopes: the record goes on the budgets a gated call with those scopes, model and tags counts on', async (t) => {
  const { admin, sql } = await buildApp(t)
  const org = await createBudget(admin, { name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '100000', period: 'annual' })
  const team = await createBudget(admin, { name: 'team', scopeType: 'team', scopeId: 'team-a', parentId: org.id, period: 'annual' })
  const user = await createBudget(admin, { name: 'alice', scopeType: 'user', scopeId: 'alice', parentId: team.id, amount: '50', period: 'annual' })
  const project = await createBudget(admin, { name: 'project', scopeType: 'project', scopeId: 'p1', parentId: org.id, period: 'annual' })
  await createBudget(admin, { name: 'team gpt-4o', scopeType: 'team', scopeId: 'team-a', parentId: org.id, period: 'annual', filters: { models: ['gpt-4o'] } })
  const summarize = await createBudget(admin, { name: 'team summarize', scopeType: 'team', scopeId: 'team-a', parentId: org.id, period: 'annual', filters: { tags: { feature: 'summarize' } } })
  const answer = await batch(admin, [
    { scopes: { user: 'alice', team: 'team-a', project: 'p1' }, amount: '1', currency: 'USD', metadata: { requestId: 's1', modelId: 'gpt-4o-2024-08-06' } },
    { scopes: { team: 'team-a' }, amount: '2', currency: 'USD', metadata: { requestId: 's2', modelId: 'gpt-4.1', tags: { feature: 'summarize' } } },
    { scopes: { user: 'nobody' }, amount: '3', currency: 'USD', metadata: { requestId: 's3' } },
    { scopes: {}, amount: '3', currency: 'USD' },
    { scopes: { user: 'has space' }, amount: '3', currency: 'USD' }
  ])
  t.same(answer.results.map((result) => [result.status, result.error?.code, result.error?.field]), [
    ['created', undefined, undefined], ['created', undefined, undefined], ['refused', 'BUDGET_ERR_NO_APPLICABLE_BUDGET', 'scopes'],
    ['refused', 'BUDGET_ERR_VALIDATION', 'scopes'], ['refused', 'BUDGET_ERR_VALIDATION', 'scopes.user']
  ])
  t.equal(answer.results[0]!.record!.budgetId, user.id, 'stored on the most specific scope\'s budget')
  // two budgets on one scope: the filtered one the call matched (the narrower) takes the record, whatever the ids' order
  t.equal(answer.results[1]!.record!.budgetId, summarize.id)
  const counted = (await ledger(sql)).allocations.map((row) => `${row.key} ${row.name} ${row.amount}`)
  t.same(counted.sort(), [
    's1 alice 1.0000000000', 's1 org 1.0000000000', 's1 project 1.0000000000', 's1 team 1.0000000000', 's1 team gpt-4o 1.0000000000',
    's2 org 2.0000000000', 's2 team 2.0000000000', 's2 team summarize 2.0000000000'
  ].sort(), 'each budget of the call once, the organization once, only the filtered budgets the call matches')
  const [stored] = await sql`select also_counts_toward::text[] as others from budget_usage_records where idempotency_key = 's1'`
  t.equal((stored!.others as string[]).length, 3, 'the other scope-matched budgets are in also_counts_toward')
  t.ok((stored!.others as string[]).includes(project.id))
})

// ---------------------------------------------------------------------------------------------------
// Equivalence: the same records one by one (POST /:id/usage) on one database, as one batch on another.

// currency GBP has no rate (refused, RB001); an amount near 10^18 takes a total past numeric(28,10) (refused, 22003)
interface Spec { budget: number, amount: string, key: number | null, model: string, daysAgo: number, currency?: string }

async function world (admin: TestApp['admin'], tag: string) {
  const org = await createBudget(admin, {
    name: `${tag} org`, scopeType: 'organization', scopeId: `${tag}-org`, amount: '300', period: 'monthly', startDate: '2024-01-01',
    alerts: [{ threshold: 25, actions: ['notify'], notificationChannels: ['email'] }, { threshold: 50, actions: ['notify'] }, { threshold: 90, actions: ['require-approval'] }]
  })
  const team = await createBudget(admin, {
    name: `${tag} team`, scopeType: 'team', scopeId: `${tag}-team`, parentId: org.id, amount: '100', period: 'weekly', startDate: '2024-01-01',
    alerts: [{ threshold: 10, actions: ['notify'] }, { threshold: 80, actions: ['notify'], notificationChannels: ['slack'] }, { threshold: 100, actions: ['notify'] }]
  })
  const user = await createBudget(admin, { name: `${tag} user`, scopeType: 'user', scopeId: `${tag}-user`, parentId: team.id, amount: '20', period: 'daily', startDate: '2024-01-01', alerts: [{ threshold: 50, actions: ['notify'] }] })
  const model = await createBudget(admin, { name: `${tag} gpt-4o`, scopeType: 'team', scopeId: `${tag}-team`, parentId: org.id, amount: '40', period: 'monthly', startDate: '2024-01-01', filters: { models: ['gpt-4o*'] }, alerts: [{ threshold: 30, actions: ['notify'] }] })
  return [org.id, team.id, user.id, model.id]
}

function bodyOf (spec: Spec, budgets: string[], tag: string, now: number) {
  return {
    amount: spec.amount,
    currency: spec.currency ?? 'USD',
    source: 'equivalence',
    metadata: { modelId: spec.model, ...(spec.key === null ? {} : { requestId: `${tag}-${spec.key}` }) },
    // whole hours back, so the windows (daily, weekly, monthly) differ between records and some open in the batch
    occurredAt: new Date(Math.floor(now / 3_600_000) * 3_600_000 - spec.daysAgo * 3_600_000 * 19).toISOString(),
    budgetId: budgets[spec.budget]!
  }
}

async function postAlone (single: TestApp, budgets: string[], specs: Spec[], tag: string, now: number): Promise<string[]> {
  const outcomes: string[] = []
  for (const spec of specs) {
    const { budgetId, ...body } = bodyOf(spec, budgets, tag, now)
    const response = await single.admin({ method: 'POST', url: `${PREFIX}/${budgetId}/usage`, body })
    outcomes.push(response.statusCode === 201 ? 'created' : response.statusCode === 200 ? 'replayed' : `refused ${response.json().code}`)
  }
  return outcomes
}

async function postBatch (bulk: TestApp, budgets: string[], specs: Spec[], tag: string, now: number): Promise<string[]> {
  const answer = await batch(bulk.admin, specs.map((spec) => bodyOf(spec, budgets, tag, now)))
  return answer.results.map((result) => result.status === 'refused' ? `refused ${result.error!.code}` : result.status)
}

const specArbitrary = fc.record({
  budget: fc.integer({ min: 0, max: 3 }),
  amount: fc.oneof(
    { weight: 10, arbitrary: fc.oneof(fc.constantFrom('0.0000000001', '0.5', '1', '2.75', '7', '12.3456789012', '33'), fc.integer({ min: 1, max: 200000 }).map((cents) => (cents / 100).toFixed(2))) },
    { weight: 1, arbitrary: fc.constant('600000000000000000') }
  ),
  key: fc.option(fc.integer({ min: 0, max: 12 }), { nil: null }),
  model: fc.constantFrom('gpt-4o', 'gpt-4o-mini', 'gpt-4.1'),
  daysAgo: fc.constantFrom(0, 0, 0, 1, 3, 9),
  currency: fc.constantFrom<string>('USD', 'USD', 'USD', 'USD', 'USD', 'USD', 'GBP')
})

t.test('a batch stores, allocates, counts and alerts exactly as the same records posted one by one', async (t) => {
  const single = await buildApp(t, { statusCacheTtlMs: 3_600_000 })
  const bulk = await buildApp(t, { statusCacheTtlMs: 3_600_000 })
  let run = 0
  await fc.assert(fc.asyncProperty(fc.array(specArbitrary, { minLength: 1, maxLength: 40 }), fc.boolean(), async (specs, warm) => {
    const tag = `w${++run}`
    const now = Date.now()
    const a = await world(single.admin, tag)
    const b = await world(bulk.admin, tag)
    if (warm) {
      // Some spend before the batch, so the batch meets existing cache rows and alerts already crossed.
      const before: Spec[] = [{ budget: 1, amount: '15', key: 999, model: 'gpt-4o', daysAgo: 0 }]
      await postAlone(single, a, before, tag, now)
      await postAlone(bulk, b, before, tag, now)
    }
    const alone = await postAlone(single, a, specs, tag, now)
    const together = await postBatch(bulk, b, specs, tag, now)
    t.same(together, alone, 'the same outcome for every record')
    const [left, right] = [await ledger(single.sql), await ledger(bulk.sql)]
    t.same(right.records, left.records, 'the same records')
    t.same(right.allocations, left.allocations, 'the same allocations')
    t.same(right.cache, left.cache, 'the same status cache rows')
    t.same(right.crossings, left.crossings, 'the same alert crossings (threshold, spend at crossing)')
    t.same(right.outbox, left.outbox, 'the same notifications queued')
    for (const [i, id] of b.entries()) {
      const [x, y] = [(await single.admin({ method: 'GET', url: `${PREFIX}/${a[i]}/status` })).json(), (await bulk.admin({ method: 'GET', url: `${PREFIX}/${id}/status` })).json()]
      t.same([y.currentAmount, y.status, y.alerts?.length], [x.currentAmount, x.status, x.alerts?.length], 'the same status')
    }
  }), { numRuns: Number(process.env.BATCH_RUNS ?? 12), examples: [[[
    { budget: 1, amount: '5', key: 1, model: 'gpt-4o', daysAgo: 0, currency: 'USD' }, { budget: 1, amount: '5', key: 1, model: 'gpt-4o', daysAgo: 0, currency: 'USD' },
    { budget: 2, amount: '11', key: 2, model: 'gpt-4o-mini', daysAgo: 0, currency: 'USD' }, { budget: 2, amount: '12', key: 2, model: 'gpt-4o-mini', daysAgo: 0, currency: 'USD' },
    { budget: 3, amount: '13', key: null, model: 'gpt-4o', daysAgo: 1, currency: 'USD' }, { budget: 3, amount: '1', key: 3, model: 'gpt-4.1', daysAgo: 0, currency: 'USD' },
    { budget: 0, amount: '100', key: 4, model: 'gpt-4.1', daysAgo: 9, currency: 'USD' }, { budget: 1, amount: '90', key: 5, model: 'gpt-4o', daysAgo: 3, currency: 'USD' }
  ], false], [[
    // bad records among good ones: no rate, then totals past numeric(28,10) (the third huge one overflows the org), and their keys retried
    { budget: 2, amount: '3', key: 1, model: 'gpt-4o', daysAgo: 0, currency: 'USD' }, { budget: 2, amount: '4', key: 2, model: 'gpt-4o', daysAgo: 0, currency: 'GBP' },
    { budget: 1, amount: '600000000000000000', key: 3, model: 'gpt-4.1', daysAgo: 0, currency: 'USD' }, { budget: 2, amount: '5', key: null, model: 'gpt-4o', daysAgo: 0, currency: 'USD' },
    { budget: 3, amount: '600000000000000000', key: 4, model: 'gpt-4o', daysAgo: 0, currency: 'USD' }, { budget: 2, amount: '4', key: 2, model: 'gpt-4o', daysAgo: 0, currency: 'GBP' },
    { budget: 0, amount: '600000000000000000', key: 5, model: 'gpt-4o', daysAgo: 0, currency: 'USD' }, { budget: 1, amount: '7', key: 6, model: 'gpt-4o', daysAgo: 0, currency: 'USD' },
    { budget: 1, amount: '600000000000000000', key: 3, model: 'gpt-4.1', daysAgo: 0, currency: 'USD' },
    { budget: 2, amount: '4', key: 2, model: 'gpt-4o', daysAgo: 0, currency: 'USD' }
  ], true]] })
})

t.test('10,000 records are accepted in one request; 10,001 are a 400', async (t) => {
  // What this holds is the size limit, not the admin bound (test/usage-batch-bounds.test.ts): on a loaded
  // machine 10,000 records may take longer than the default 10 s, so the bound is set out of the way.
  const { admin, sql } = await buildApp(t, { adminTimeoutMs: 120_000 })
  const budget = await createBudget(admin, { period: 'annual', amount: '1000000' })
  const records = Array.from({ length: 10_000 }, (_, i) => ({ budgetId: budget.id, amount: '0.0021', currency: 'USD', source: 'openai-gpt-4', metadata: { requestId: `req-${i}`, modelId: 'gpt-4o-mini' } }))
  const payload = JSON.stringify({ records })
  t.comment(`10,000 records of this size: ${(Buffer.byteLength(payload) / 1e6).toFixed(2)} MB`)
  const response = await admin({ method: 'POST', url: BATCH, payload, headers: { 'content-type': 'application/json' } })
  t.equal(response.statusCode, 200)
  t.equal(response.json().created, 10_000)
  t.equal(await count(sql, 'budget_usage_records'), 10_000)
  t.equal((await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/status` })).json().currentAmount, '21')

  const before = await snapshotTables(sql)
  const tooMany = await admin({ method: 'POST', url: BATCH, body: { records: [...records, records[0]] } })
  t.equal(tooMany.statusCode, 400)
  t.equal(tooMany.json().field, 'records')
  for (const body of [[], {}, { records: [] }, { records: {} }, { records: [{}], extra: 1 }, [1]]) {
    const response = await admin({ method: 'POST', url: BATCH, body: body as object })
    t.equal(response.statusCode, 400, `${JSON.stringify(body)} is a 400`)
  }
  const huge = await admin({ method: 'POST', url: BATCH, payload: JSON.stringify({ records: [{ description: 'x'.repeat(17 * 1024 * 1024) }] }), headers: { 'content-type': 'application/json' } })
  t.equal(huge.statusCode, 413, 'a body past the route\'s limit')
  t.same(await snapshotTables(sql), before, 'refused requests wrote nothing')
})

t.test('a database fault stores none of the batch', async (t) => {
  const { admin, sql } = await buildApp(t)
  const budget = await createBudget(admin, { period: 'annual' })
  // A fault that no record is to blame for, in the middle of the batch's statements.
  await sql`create function fail_on_seven() returns trigger language plpgsql as $$ begin
    if new.amount = 7 then raise exception 'disk full (injected)' using errcode = '53100'; end if; return new; end $$`
  await sql`create trigger fail_on_seven before insert on budget_usage_allocations for each row execute function fail_on_seven()`
  const before = await snapshotTables(sql)
  const response = await admin({ method: 'POST', url: BATCH, body: { records: ['1', '7', '2'].map((amount, i) => ({ budgetId: budget.id, amount, currency: 'USD', metadata: { requestId: `f${i}` } })) } })
  t.equal(response.statusCode, 503)
  t.equal(response.json().code, 'BUDGET_ERR_DATABASE_UNAVAILABLE')
  t.same(await snapshotTables(sql), before, 'nothing stored')
})

t.test('a record that would take a total past numeric(28,10) is refused alone; the others are stored as one by one', async (t) => {
  const { admin, sql } = await buildApp(t)
  const budget = await createBudget(admin, { period: 'annual', amount: '999999999999999999' })
  const huge = (key: string) => ({ budgetId: budget.id, amount: '999999999999999999', currency: 'USD', metadata: { requestId: key } })
  const other = await createBudget(admin, { name: 'other', scopeId: 'team-b', period: 'annual' })
  const answer = await batch(admin, [huge('h1'), huge('h2'), { ...huge('h3'), amount: '1', budgetId: other.id }, huge('h1')])
  t.same(answer.results.map((result) => [result.status, result.error?.code, result.error?.field]), [
    ['created', undefined, undefined], ['refused', 'BUDGET_ERR_VALIDATION', 'amount'], ['created', undefined, undefined], ['replayed', undefined, undefined]
  ])
  t.equal(await count(sql, 'budget_usage_records'), 2)
  t.equal((await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/status` })).json().currentAmount, '999999999999999999')
})

t.test('records without a rate or past numeric(28,10) are refused alone, and the rest are counted in one pass (each cache row written once)', async (t) => {
  const { admin, sql } = await buildApp(t)
  const org = await createBudget(admin, { name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '999999999999999999', period: 'annual' })
  const team = await createBudget(admin, { name: 'team', scopeType: 'team', scopeId: 'team-a', parentId: org.id, amount: '999999999999999999', period: 'annual' })
  const euro = await createBudget(admin, { name: 'euro team', scopeType: 'team', scopeId: 'team-e', amount: '1000', currency: 'EUR', period: 'annual' })
  t.equal((await admin({ method: 'PUT', url: `${PREFIX}/exchange-rates/USD/EUR`, body: { rate: '100', effectiveFrom: '2024-01-01T00:00:00Z' } })).statusCode, 201)
  // Counts every write to the cache rows: the batch's, not the budget creations'.
  await sql`create table cache_writes (budget_id uuid)`
  await sql`create function count_cache_write() returns trigger language plpgsql as $$ begin insert into cache_writes values (new.budget_id); return null; end $$`
  await sql`create trigger count_cache_write after update on budget_status_cache for each row execute function count_cache_write()`
  const good = (i: number) => ({ budgetId: team.id, amount: '1', currency: 'USD', metadata: { requestId: `g${i}` } })
  const records = [
    ...Array.from({ length: 20 }, (_, i) => good(i)),
    { budgetId: team.id, amount: '1', currency: 'GBP', metadata: { requestId: 'no-rate' } }, // no GBP rate at all
    { budgetId: euro.id, amount: '2', currency: 'EUR', metadata: { requestId: 'euro' } },
    { budgetId: euro.id, amount: '99999999999999999', currency: 'USD', metadata: { requestId: 'converted' } }, // x 100: past 10^18 in EUR
    { budgetId: team.id, amount: '999999999999999990', currency: 'USD', metadata: { requestId: 'total' } }, // team and org past 10^18
    ...Array.from({ length: 20 }, (_, i) => good(20 + i))
  ]
  const answer = await batch(admin, records)
  const codes = answer.results.map((result) => result.status === 'refused' ? `${result.error!.code} ${result.error!.field}` : result.status)
  t.same(codes.slice(20, 24), ['BUDGET_ERR_EXCHANGE_RATE_MISSING currency', 'created', 'BUDGET_ERR_VALIDATION amount', 'BUDGET_ERR_VALIDATION amount'])
  t.same([answer.created, answer.refused], [41, 3])
  t.equal(await count(sql, 'budget_usage_records'), 41, 'exactly the good records are stored')
  const status = async (id: string) => (await admin({ method: 'GET', url: `${PREFIX}/${id}/status` })).json().currentAmount
  t.same([await status(team.id), await status(euro.id), await status(org.id)], ['40', '2', '40'])
  const writes = await sql`select budget_id, count(*)::int as n from cache_writes group by 1`
  t.ok(writes.every((row) => row.n <= 2), `each cache row written at most once (plus an alert crossing), not once per record: ${JSON.stringify(writes.map((row) => row.n))}`)
})

t.test('a record given by scopes, retried after a budget was made under those scopes, is stored once', async (t) => {
  const { admin, sql } = await buildApp(t)
  const team = await createBudget(admin, { name: 'team', scopeType: 'team', scopeId: 'team-a', amount: '100', period: 'annual' })
  const usage = { scopes: { user: 'alice', team: 'team-a' }, amount: '5', currency: 'USD', metadata: { requestId: 'call-1', modelId: 'gpt-4o-mini' } }
  const first = await batch(admin, [usage])
  t.equal(first.results[0]!.record!.budgetId, team.id, 'no user budget yet: the team takes it')
  const user = await createBudget(admin, { name: 'alice', scopeType: 'user', scopeId: 'alice', parentId: team.id, amount: '50', period: 'annual' })
  const retry = await batch(admin, [usage])
  t.same(retry.results.map((result) => result.status), ['replayed'])
  t.equal(retry.results[0]!.record!.id, first.results[0]!.record!.id, 'the retry answers the first record, where it was stored')
  t.equal(await count(sql, 'budget_usage_records'), 1)
  const status = async (id: string) => (await admin({ method: 'GET', url: `${PREFIX}/${id}/status` })).json().currentAmount
  t.same([await status(team.id), await status(user.id)], ['5', '0'], 'the team counts 5 for one usage of 5')

  // The same key with another request: a 409, whatever budget it names.
  const other = await batch(admin, [{ ...usage, scopes: { user: 'alice' } }, { ...usage, budgetId: user.id, scopes: undefined }, { ...usage, description: 'changed' }])
  t.same(other.results.map((result) => result.error?.code), Array(3).fill('BUDGET_ERR_IDEMPOTENCY_CONFLICT'))
  const single = await admin({ method: 'POST', url: `${PREFIX}/${user.id}/usage`, body: { amount: '5', currency: 'USD', metadata: { requestId: 'call-1', modelId: 'gpt-4o-mini' } } })
  t.equal(single.statusCode, 409, 'the single route: the key is held by a record on another budget')
  t.equal(single.json().code, 'BUDGET_ERR_IDEMPOTENCY_CONFLICT')
  t.equal(await count(sql, 'budget_usage_records'), 1)
})

t.test('the single route: a key names one record across budgets; a retry of the same request replays it', async (t) => {
  const { admin, sql } = await buildApp(t)
  const a = await createBudget(admin, { name: 'a', scopeId: 'team-a', period: 'annual' })
  const b = await createBudget(admin, { name: 'b', scopeId: 'team-b', period: 'annual' })
  const body = { amount: '5', currency: 'USD', description: 'one call', metadata: { requestId: 'k1' } }
  t.equal((await admin({ method: 'POST', url: `${PREFIX}/${a.id}/usage`, body })).statusCode, 201)
  t.equal((await admin({ method: 'POST', url: `${PREFIX}/${a.id}/usage`, body: { ...body, amount: '5.000' } })).statusCode, 200, 'the same request (the same amount written otherwise)')
  t.equal((await admin({ method: 'POST', url: `${PREFIX}/${a.id}/usage`, body: { ...body, description: 'another' } })).statusCode, 409, 'the same key, another description')
  t.equal((await admin({ method: 'POST', url: `${PREFIX}/${b.id}/usage`, body })).statusCode, 409, 'the same key on another budget')
  t.equal(await count(sql, 'budget_usage_records'), 1)
})

// A database an earlier version migrated to 017, where the defect stored a key twice; then migrated on by that
// version (018 gives the key to the first record), then by this one (test/migrate-upgrade.test.ts).
t.test('018 (folded into the baseline) on a database that stored a key twice: the first record holds it, the spend stays, and a retry replays the first', async (t) => {
  const { sql } = await createTestSql(t)
  await migrateFolded(sql, { to: 17 })
  const [team] = await sql`insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date)
    values ('team', 'team', 'team-a', 100, 'USD', 'annual', '2024-01-01') returning id`
  const [user] = await sql`insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date, parent_id)
    values ('alice', 'user', 'alice', 50, 'USD', 'annual', '2024-01-01', ${team!.id}) returning id`
  // what the defect stored: one usage of 5 under one key, on the team and again on the user
  await sql`insert into budget_usage_records (budget_id, amount, currency, idempotency_key, recorded_at) values (${team!.id}, 5, 'USD', 'call-1', now() - interval '1 minute')`
  await sql`insert into budget_usage_records (budget_id, amount, currency, idempotency_key) values (${user!.id}, 5, 'USD', 'call-1')`
  await migrateFolded(sql, { from: 18 }) // 018 to 026, as that version's gateway would have on its next start

  const app = Fastify({ logger: false })
  await app.register(budgets, { database: sql, adminToken: ADMIN_TOKEN })
  await app.ready() // recognises the folded migrations: records the baseline, applies sql/functions/
  t.teardown(async () => await app.close())
  const holders = await sql`select budget_id, request_fingerprint from budget_usage_records order by recorded_at`
  t.same(holders.map((row) => [row.budget_id, row.request_fingerprint]), [[team!.id, 'legacy'], [user!.id, null]], 'the first holds the key; the later one stays, outside the index')
  const retry = await app.inject({ method: 'POST', url: `${PREFIX}/usage/batch`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: { records: [{ scopes: { user: 'alice', team: 'team-a' }, amount: '5', currency: 'USD', metadata: { requestId: 'call-1' } }] } })
  t.same(retry.json().results.map((result: Result) => [result.status, result.record?.budgetId]), [['replayed', team!.id]])
  const [{ n }] = await sql`select count(*)::int as n from budget_usage_records` as unknown as [{ n: number }]
  t.equal(n, 2, 'nothing more stored')
})

t.test('recordUsage with the scopes that chose its budget (what recordModelCall needs): a retry after a user budget was made replays the first', async (t) => {
  const { app, admin, sql } = await buildApp(t)
  const team = await createBudget(admin, { name: 'team', scopeType: 'team', scopeId: 'team-a', amount: '100', period: 'annual' })
  const scopes = { user: 'alice', team: 'team-a' }
  const usage = { amount: '5', currency: 'USD', source: 'gateway', metadata: { requestId: 'call-9' } }
  const first = await app.budgetTracker.record({ ...usage, budgetId: team.id }, { scopes })
  const user = await createBudget(admin, { name: 'alice', scopeType: 'user', scopeId: 'alice', parentId: team.id, amount: '50', period: 'annual' })
  const retry = await app.budgetTracker.record({ ...usage, budgetId: user.id, alsoCountsToward: [team.id] }, { scopes })
  t.same([retry.replayed, retry.record.id], [true, first.record.id])
  await t.rejects(app.budgetTracker.record({ ...usage, budgetId: user.id }), { code: 'BUDGET_ERR_IDEMPOTENCY_CONFLICT' }, 'without the scopes it names another budget: a conflict, never a second record')
  t.equal(await count(sql, 'budget_usage_records'), 1)
})
