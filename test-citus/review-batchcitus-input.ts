// Review of 1f6c1c2 (usage in bulk on Citus), on the cluster (`npm run test:citus -- test-citus/review-batchcitus-input.ts`): records every one of which is refused change
// nothing (the refusals found in the database too: no rate, an amount or a window past numeric(28,10), a key held
// on another budget or tree); a budget id written in capitals is the budget, as on the single route.
import t from 'tap'
import type { InjectOptions } from 'fastify'
import { PREFIX, budgetRequest, snapshotTables } from '../test/fixtures/app.js'
import { adminHeaders, distributedApp } from '../test/fixtures/citus-app.js'

type TestApp = Awaited<ReturnType<typeof buildApp>>
async function buildApp (t: Parameters<typeof distributedApp>[0]) {
  const made = await distributedApp(t)
  const admin = async (request: InjectOptions) => await made.app.inject({ ...request, headers: { ...adminHeaders, ...request.headers } })
  return { ...made, admin }
}

const HUGE = '600000000000000000'

async function createBudget (admin: TestApp['admin'], overrides: Record<string, unknown>): Promise<string> {
  const response = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ startDate: '2024-01-01', ...overrides }) })
  if (response.statusCode !== 201) throw new Error(response.body)
  return response.json().id
}

async function world (admin: TestApp['admin']) {
  const org = await createBudget(admin, { name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '300' })
  const team = await createBudget(admin, { name: 'team', scopeType: 'team', scopeId: 'platform', parentId: org, amount: '100', period: 'weekly' })
  const ada = await createBudget(admin, { name: 'ada', scopeType: 'user', scopeId: 'ada', parentId: team, amount: '20', period: 'daily', alerts: [{ threshold: 50, actions: ['notify'] }] })
  const bob = await createBudget(admin, { name: 'bob', scopeType: 'user', scopeId: 'bob', amount: '60', filters: { models: ['gpt-4o*'] }, alerts: [{ threshold: 30, actions: ['notify'] }] })
  const eur = await createBudget(admin, { name: 'eur', scopeType: 'project', scopeId: 'p1', amount: '60', currency: 'EUR' })
  return { org, team, ada, bob, eur }
}

t.test('on Citus: a batch whose every record is refused, some by the database (no rate, past numeric(28,10), keys held in the tree), changes nothing', async (t) => {
  const { admin, sql } = await buildApp(t)
  const w = await world(admin)
  const at = new Date(Math.floor(Date.now() / 3_600_000) * 3_600_000).toISOString()
  const usage = (budgetId: string, amount: string, key: string | null, extra: Record<string, unknown> = {}) =>
    ({ budgetId, amount, currency: 'USD', occurredAt: at, metadata: { modelId: 'gpt-4o', ...(key === null ? {} : { requestId: key }) }, ...extra })
  // what is there before: a window of bob's near numeric(28,10), keys held on each tree
  for (const body of [usage(w.bob, HUGE, null), usage(w.ada, '1', 'held-1'), usage(w.bob, '1', 'held-2')]) {
    const { budgetId, ...rest } = body
    t.equal((await admin({ method: 'POST', url: `${PREFIX}/${budgetId}/usage`, body: rest })).statusCode, 201)
  }
  const before = await snapshotTables(sql)
  const records = [
    usage(w.bob, HUGE, 'new-1'), // bob's window past numeric(28,10)
    usage(w.bob, HUGE, null),
    usage(w.ada, '999999999999999999', 'new-2'), // past numeric(28,10) on ada, team and org
    { ...usage(w.eur, '1', 'new-3'), currency: 'GBP' }, // no rate
    { scopes: { project: 'p1', user: 'ada' }, amount: '1', currency: 'GBP', occurredAt: at, metadata: { modelId: 'gpt-4o', requestId: 'new-4' } }, // no GBP rate
    usage(w.ada, '2', 'held-1'), // another request under a held key
    usage(w.team, '1', 'held-1'), // the key held in this tree, on another budget (on Citus a key is unique within its tree only)
    { ...usage(w.bob, '1', 'new-5'), metadata: { modelId: 'gpt-4.1', requestId: 'new-5' } }, // bob's filters leave it out
    { scopes: { user: 'nobody' }, amount: '1', currency: 'USD', occurredAt: at }
  ]
  const response = await admin({ method: 'POST', url: `${PREFIX}/usage/batch`, body: { records } })
  t.equal(response.statusCode, 200)
  const answer = response.json() as { created: number, replayed: number, results: Array<{ status: string, error?: { code: string } }> }
  t.same(answer.results.map((result) => [result.status, result.error?.code]), [
    ['refused', 'BUDGET_ERR_VALIDATION'], ['refused', 'BUDGET_ERR_VALIDATION'], ['refused', 'BUDGET_ERR_VALIDATION'],
    ['refused', 'BUDGET_ERR_EXCHANGE_RATE_MISSING'], ['refused', 'BUDGET_ERR_EXCHANGE_RATE_MISSING'],
    ['refused', 'BUDGET_ERR_IDEMPOTENCY_CONFLICT'], ['refused', 'BUDGET_ERR_IDEMPOTENCY_CONFLICT'],
    ['refused', 'BUDGET_ERR_VALIDATION'], ['refused', 'BUDGET_ERR_NO_APPLICABLE_BUDGET']
  ])
  t.same(await snapshotTables(sql), before, 'nothing written: no record, allocation, window row, crossing or outbox row')
})

t.test('on Citus: a budget id in capitals names the budget, in a batch as on the single route', async (t) => {
  const { admin, sql } = await buildApp(t)
  const w = await world(admin)
  const body = { amount: '2', currency: 'USD', metadata: { modelId: 'gpt-4o', requestId: 'caps-1' } }
  const single = await admin({ method: 'POST', url: `${PREFIX}/${w.ada.toUpperCase()}/usage`, body })
  t.equal(single.statusCode, 201, 'the single route takes it')
  const batch = await admin({ method: 'POST', url: `${PREFIX}/usage/batch`, body: { records: [{ budgetId: w.bob.toUpperCase(), ...body, metadata: { modelId: 'gpt-4o', requestId: 'caps-2' } }, { budgetId: w.ada.toUpperCase(), ...body }] } })
  t.equal(batch.statusCode, 200)
  t.same(batch.json().results.map((result: { status: string, error?: { code: string } }) => [result.status, result.error?.code]), [['created', undefined], ['replayed', undefined]],
    'the batch: created on bob, and the single route\'s record replayed')
  t.equal((await sql`select count(*)::int as n from budget_usage_records`)[0]!.n, 2)
})
