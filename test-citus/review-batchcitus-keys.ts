// Review of 1f6c1c2 (usage in bulk on Citus), on the cluster (`npm run test:citus -- test-citus/review-batchcitus-keys.ts`):
// one idempotency key over two trees in one batch, where a record under it is refused late (a window past
// numeric(28,10), found by budget_record_spend after the keys are taken). One at a time, the refused record
// stores nothing, so the next request under the key in that tree takes it; the batch must answer the same.
import t from 'tap'
import type { Sql } from 'postgres'
import { adminHeaders as headers, distributedApp } from '../test/fixtures/citus-app.js'
import { PREFIX } from '../test/fixtures/app.js'
import { findViolations } from '../test/fixtures/invariants.js'

type App = Awaited<ReturnType<typeof distributedApp>>
const HUGE = '600000000000000000'

/** Tree 1: an organization with two teams under it; tree 2: bob, a root. */
async function world (app: App): Promise<Record<'org' | 'a' | 'a2' | 'bob', string>> {
  const org = await app.createBudget({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '300' })
  const a = await app.createBudget({ name: 'a', scopeType: 'team', scopeId: 'team-a', parentId: org.id, amount: '100' })
  const a2 = await app.createBudget({ name: 'a2', scopeType: 'team', scopeId: 'team-b', parentId: org.id, amount: '100' })
  const bob = await app.createBudget({ name: 'bob', scopeType: 'user', scopeId: 'bob', amount: '60' })
  return { org: org.id, a: a.id, a2: a2.id, bob: bob.id }
}

type Names = Awaited<ReturnType<typeof world>>
interface Spec { budget: keyof Names, amount: string, key: string | null, description?: string }

function bodyOf (spec: Spec, at: string) {
  return { amount: spec.amount, currency: 'USD', source: 'review', ...(spec.description === undefined ? {} : { description: spec.description }), metadata: { modelId: 'gpt-4o', ...(spec.key === null ? {} : { requestId: spec.key }) }, occurredAt: at }
}

async function alone (app: App, ids: Names, specs: Spec[], at: string): Promise<string[]> {
  const outcomes: string[] = []
  for (const spec of specs) {
    const response = await app.app.inject({ method: 'POST', url: `${PREFIX}/${ids[spec.budget]}/usage`, headers, body: bodyOf(spec, at) })
    outcomes.push(response.statusCode === 201 ? 'created' : response.statusCode === 200 ? 'replayed' : `refused ${response.json().code as string}`)
  }
  return outcomes
}

async function together (app: App, ids: Names, specs: Spec[], at: string): Promise<string[]> {
  const response = await app.app.inject({ method: 'POST', url: `${PREFIX}/usage/batch`, headers, body: { records: specs.map((spec) => ({ budgetId: ids[spec.budget], ...bodyOf(spec, at) })) } })
  if (response.statusCode !== 200) throw new Error(`${response.statusCode} ${response.body.slice(0, 500)}`)
  return response.json().results.map((result: { status: string, error?: { code: string } }) => result.status === 'refused' ? `refused ${result.error!.code}` : result.status)
}

async function records (sql: Sql): Promise<string[]> {
  const rows = await sql<Array<{ name: string, amount: string, key: string | null }>>`
    select b.name, u.amount::text, u.idempotency_key as key from budget_usage_records u join budget_definitions b on b.root_id = u.root_id and b.id = u.budget_id`
  return rows.map((row) => `${row.name} ${row.amount} ${row.key ?? '-'}`).sort()
}

const scenarios: Array<[string, Spec[]]> = [
  ['the freed key taken by a sibling in the same tree, the key held in the other tree by a later record', [
    { budget: 'a', amount: HUGE, key: null },
    { budget: 'a', amount: HUGE, key: 'k' }, // past numeric(28,10) on a and org: refused, stores nothing
    { budget: 'a2', amount: '1', key: 'k', description: 'other' }, // one at a time: the key is free in tree 1, created
    { budget: 'bob', amount: '1', key: 'k', description: 'bob' } // tree 2: created
  ]],
  ['the freed key in the second tree, held in the first by an earlier record', [
    { budget: 'bob', amount: HUGE, key: null },
    { budget: 'a', amount: '1', key: 'k', description: 'a' }, // tree 1: created
    { budget: 'bob', amount: HUGE, key: 'k' }, // refused (bob's window past numeric(28,10))
    { budget: 'bob', amount: '2', key: 'k', description: 'bob again' } // one at a time: the key is free in tree 2, created
  ]]
]

for (const [name, specs] of scenarios) {
  t.test(`on Citus, a batch equals one at a time: ${name}`, async (t) => {
    const single = await distributedApp(t)
    const bulk = await distributedApp(t)
    const [x, y] = [await world(single), await world(bulk)]
    const at = new Date(Math.floor(Date.now() / 3_600_000) * 3_600_000).toISOString()
    const expected = await alone(single, x, specs, at)
    const found = await together(bulk, y, specs, at)
    t.same(found, expected, 'the same outcome for every record')
    t.same(await records(bulk.sql), await records(single.sql), 'the same records')
    t.same((await findViolations(bulk.sql)).filter((violation) => !violation.startsWith('hard budget')), [], 'each window equal to its allocations')
  })
}

// A key held in two trees (on Citus a key is unique within a tree only): a record given by scopes, stored in
// tree 1, then retried after a budget was made under those scopes (in tree 1 too). The retry is the same
// request: it must replay the record it made, not meet the other tree's holder of the key (another request).
t.test('on Citus, a retry by scopes after a budget was made under them replays its record, though another tree holds the key for an earlier request', async (t) => {
  const app = await distributedApp(t)
  const org = await app.createBudget({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '300' })
  const team = await app.createBudget({ name: 'team', scopeType: 'team', scopeId: 'platform', parentId: org.id, amount: '100' })
  const bob = await app.createBudget({ name: 'bob', scopeType: 'user', scopeId: 'bob', amount: '60' })
  // tree 2: bob's request under the key, first
  const first = await app.app.inject({ method: 'POST', url: `${PREFIX}/${bob.id}/usage`, headers, body: { amount: '1', currency: 'USD', metadata: { requestId: 'call-1' } } })
  t.equal(first.statusCode, 201)
  // tree 1: another request under the key, given by scopes: stored there (the key is free in tree 1)
  const usage = { scopes: { user: 'ada', team: 'platform' }, amount: '2', currency: 'USD', metadata: { requestId: 'call-1', modelId: 'gpt-4o' } }
  const batch = async () => {
    const response = await app.app.inject({ method: 'POST', url: `${PREFIX}/usage/batch`, headers, body: { records: [usage] } })
    t.equal(response.statusCode, 200)
    return response.json().results[0] as { status: string, record?: { id: string, budgetId: string }, error?: { code: string } }
  }
  const stored = await batch()
  t.same([stored.status, stored.record?.budgetId], ['created', team.id], 'stored on the team, in tree 1')
  await app.createBudget({ name: 'ada', scopeType: 'user', scopeId: 'ada', parentId: team.id, amount: '50' })
  const retry = await batch()
  t.same([retry.status, retry.error?.code, retry.record?.id], ['replayed', undefined, stored.record?.id], 'the batch: the retry replays the record it made')
  // the single route's counterpart (what recordModelCall does): the tracker with the scopes
  const ada = (await app.sql<Array<{ id: string }>>`select id::text from budget_definitions where name = 'ada'`)[0]!.id
  const single = await app.app.budgetTracker.record({ amount: '2', currency: 'USD', metadata: { requestId: 'call-1', modelId: 'gpt-4o' }, budgetId: ada, alsoCountsToward: [team.id] }, { scopes: usage.scopes })
    .then((result) => ['replayed', result.replayed, result.record.id], (error: { code?: string }) => ['refused', error.code, null])
  t.same(single, ['replayed', true, stored.record?.id], 'the tracker: the same')
  t.equal((await app.sql`select count(*)::int as n from budget_usage_records`)[0]!.n, 2, 'nothing stored again')
})

t.test('on Citus, the tracker alone (what recordModelCall does): a retry by scopes after a budget was made under them replays its record, though another tree holds the key', async (t) => {
  const app = await distributedApp(t)
  const org = await app.createBudget({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '300' })
  const team = await app.createBudget({ name: 'team', scopeType: 'team', scopeId: 'platform', parentId: org.id, amount: '100' })
  const bob = await app.createBudget({ name: 'bob', scopeType: 'user', scopeId: 'bob', amount: '60' })
  const scopes = { user: 'ada', team: 'platform' }
  const usage = { amount: '2', currency: 'USD', metadata: { requestId: 'call-1', modelId: 'gpt-4o' } }
  await app.app.budgetTracker.record({ amount: '1', currency: 'USD', metadata: { requestId: 'call-1' }, budgetId: bob.id })
  const stored = await app.app.budgetTracker.record({ ...usage, budgetId: team.id }, { scopes })
  t.equal(stored.replayed, false, 'stored in tree 1 (the key is free there)')
  const ada = await app.createBudget({ name: 'ada', scopeType: 'user', scopeId: 'ada', parentId: team.id, amount: '50' })
  const retry = await app.app.budgetTracker.record({ ...usage, budgetId: ada.id, alsoCountsToward: [team.id] }, { scopes })
    .then((result) => ['replayed', result.replayed, result.record.id], (error: { code?: string }) => ['refused', error.code, null])
  t.same(retry, ['replayed', true, stored.record.id], 'the retry replays the record it made')
  t.equal((await app.sql`select count(*)::int as n from budget_usage_records`)[0]!.n, 2, 'nothing stored again')
})
