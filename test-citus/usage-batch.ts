// Usage in bulk (POST /usage/batch) on a distributed schema (`npm run test:citus`): records of two trees in one
// batch, stored under their budgets' roots and counted on each tree's node, with the outcome of the same records
// posted one at a time through the single route (the equivalence test/usage-batch.test.ts holds on plain
// PostgreSQL); records given by scopes whose budgets span both trees; keys replayed across batches.
import t from 'tap'
import fc from 'fast-check'
import { adminHeaders as headers, distributedApp } from '../test/fixtures/citus-app.js'
import { PREFIX } from '../test/fixtures/app.js'
import { findViolations } from '../test/fixtures/invariants.js'
import { ledger } from '../test/fixtures/batch-scopes-world.js'

type App = Awaited<ReturnType<typeof distributedApp>>
interface Spec { budget: number, amount: string, key: number | null, model: string, daysAgo: number, currency: string }

/** Two trees: an organization with a team and a user under it; a user of another organization, its own root. */
async function world (app: App, tag: string): Promise<string[]> {
  const org = await app.createBudget({
    name: `${tag} org`, scopeType: 'organization', scopeId: `${tag}-acme`, amount: '300',
    alerts: [{ threshold: 25, actions: ['notify'], notificationChannels: ['email'] }, { threshold: 90, actions: ['require-approval'] }]
  })
  const team = await app.createBudget({
    name: `${tag} team`, scopeType: 'team', scopeId: `${tag}-platform`, parentId: org.id, amount: '100', period: 'weekly',
    alerts: [{ threshold: 10, actions: ['notify'] }, { threshold: 80, actions: ['notify'], notificationChannels: ['slack'] }]
  })
  const user = await app.createBudget({ name: `${tag} user`, scopeType: 'user', scopeId: `${tag}-ada`, parentId: team.id, amount: '20', period: 'daily', alerts: [{ threshold: 50, actions: ['notify'] }] })
  const other = await app.createBudget({ name: `${tag} other`, scopeType: 'user', scopeId: `${tag}-bob`, amount: '60', filters: { models: ['gpt-4o*'] }, alerts: [{ threshold: 30, actions: ['notify'] }] })
  return [org.id, team.id, user.id, other.id]
}

function bodyOf (spec: Spec, budgets: string[], tag: string, now: number) {
  return {
    budgetId: budgets[spec.budget]!,
    amount: spec.amount,
    currency: spec.currency,
    source: 'equivalence',
    metadata: { modelId: spec.model, ...(spec.key === null ? {} : { requestId: `${tag}-${spec.key}` }) },
    occurredAt: new Date(Math.floor(now / 3_600_000) * 3_600_000 - spec.daysAgo * 3_600_000 * 19).toISOString()
  }
}

const outcome = (status: number, body: { code?: string }) => status === 201 ? 'created' : status === 200 ? 'replayed' : `refused ${body.code}`

async function postAlone (app: App, budgets: string[], specs: Spec[], tag: string, now: number): Promise<string[]> {
  const outcomes: string[] = []
  for (const spec of specs) {
    const { budgetId, ...body } = bodyOf(spec, budgets, tag, now)
    const response = await app.app.inject({ method: 'POST', url: `${PREFIX}/${budgetId}/usage`, headers, body })
    outcomes.push(outcome(response.statusCode, response.json()))
  }
  return outcomes
}

async function postBatch (app: App, records: unknown[]): Promise<Array<{ status: string, record?: { id: string, budgetId: string }, error?: { code: string } }>> {
  const response = await app.app.inject({ method: 'POST', url: `${PREFIX}/usage/batch`, headers, body: { records } })
  if (response.statusCode !== 200) throw new Error(`${response.statusCode} ${response.body.slice(0, 500)}`)
  return response.json().results
}

const specArbitrary = fc.record({
  budget: fc.integer({ min: 0, max: 3 }),
  amount: fc.oneof(
    { weight: 12, arbitrary: fc.oneof(fc.constantFrom('0.0000000001', '0.5', '1', '2.75', '7', '12.3456789012'), fc.integer({ min: 1, max: 5000 }).map((cents) => (cents / 100).toFixed(2))) },
    { weight: 1, arbitrary: fc.constant('600000000000000000') }
  ),
  key: fc.option(fc.integer({ min: 0, max: 8 }), { nil: null }),
  model: fc.constantFrom('gpt-4o', 'gpt-4o-mini', 'gpt-4.1'),
  daysAgo: fc.constantFrom(0, 0, 0, 1, 3),
  currency: fc.constantFrom('USD', 'USD', 'USD', 'USD', 'GBP')
})

t.test('a batch over two trees stores, allocates, counts and alerts exactly as the same records posted one at a time', async (t) => {
  const single = await distributedApp(t)
  const bulk = await distributedApp(t)
  let run = 0
  await fc.assert(fc.asyncProperty(fc.array(specArbitrary, { minLength: 1, maxLength: 24 }), async (specs) => {
    const tag = `w${++run}`
    const now = Date.now()
    const [a, b] = [await world(single, tag), await world(bulk, tag)]
    const alone = await postAlone(single, a, specs, tag, now)
    const together = (await postBatch(bulk, specs.map((spec) => bodyOf(spec, b, tag, now)))).map((result) => result.status === 'refused' ? `refused ${result.error!.code}` : result.status)
    t.same(together, alone, 'the same outcome for every record')
    const [left, right] = [await ledger(single.sql), await ledger(bulk.sql)]
    t.same(right.records, left.records, 'the same records')
    t.same(right.allocations, left.allocations, 'the same allocations')
    t.same(right.cache, left.cache, 'the same window rows')
    t.same(right.crossings, left.crossings, 'the same alert crossings')
    t.same(right.outbox, left.outbox, 'the same notifications queued')
  }), {
    numRuns: Number(process.env.CITUS_BATCH_RUNS ?? 3),
    examples: [[[
      { budget: 2, amount: '5', key: 1, model: 'gpt-4o', daysAgo: 0, currency: 'USD' }, { budget: 3, amount: '5', key: 1, model: 'gpt-4o', daysAgo: 0, currency: 'USD' },
      { budget: 3, amount: '19', key: 2, model: 'gpt-4o-mini', daysAgo: 0, currency: 'USD' }, { budget: 1, amount: '12', key: 2, model: 'gpt-4o', daysAgo: 1, currency: 'USD' },
      { budget: 2, amount: '4', key: 3, model: 'gpt-4o', daysAgo: 0, currency: 'GBP' }, { budget: 2, amount: '4', key: 3, model: 'gpt-4o', daysAgo: 0, currency: 'USD' },
      { budget: 0, amount: '600000000000000000', key: 4, model: 'gpt-4.1', daysAgo: 0, currency: 'USD' }, { budget: 3, amount: '600000000000000000', key: null, model: 'gpt-4o', daysAgo: 0, currency: 'USD' },
      { budget: 0, amount: '90', key: 5, model: 'gpt-4o', daysAgo: 3, currency: 'USD' }, { budget: 2, amount: '5', key: 1, model: 'gpt-4o', daysAgo: 0, currency: 'USD' }
    ]]]
  })
  // (usage recorded after the fact may take a budget past its limit: that is what the gate is for)
  t.same((await findViolations(bulk.sql)).filter((violation) => !violation.startsWith('hard budget')), [], 'no hold left, each window equal to its allocations')
})

t.test('records given by scopes that reach both trees: stored under the first budget\'s root, counted in each tree once; a retried batch stores nothing again', async (t) => {
  const app = await distributedApp(t)
  const [org, team, user, other] = (await world(app, 's')) as [string, string, string, string]
  const records = [
    // bob's own budget (its tree) takes it; the platform team's, and its organization as an ancestor, count it too
    { scopes: { user: 's-bob', team: 's-platform' }, amount: '3.5', currency: 'USD', metadata: { modelId: 'gpt-4o', requestId: 'r1' } },
    // bob's budget's filters leave gpt-4.1 out: the team's takes it
    { scopes: { user: 's-bob', team: 's-platform' }, amount: '1.25', currency: 'USD', metadata: { modelId: 'gpt-4.1', requestId: 'r2' } },
    { scopes: { user: 's-ada' }, amount: '2', currency: 'USD', metadata: { modelId: 'gpt-4o', requestId: 'r3' } },
    { budgetId: other, amount: '0.75', currency: 'USD', metadata: { modelId: 'gpt-4o-mini' } }
  ]
  const first = await postBatch(app, records)
  t.same(first.map((result) => result.status), ['created', 'created', 'created', 'created'])
  t.same(first.map((result) => result.record!.budgetId), [other, team, user, other], 'each on the budget its scopes reach first')
  const roots = await app.sql<Array<{ id: string, rootId: string }>>`select id::text, root_id::text as "rootId" from budget_usage_records`
  const rootOf = new Map(roots.map((row) => [row.id, row.rootId]))
  t.same(first.map((result) => rootOf.get(result.record!.id)), [other, org, org, other], 'each stored under its budget\'s root')

  const again = await postBatch(app, records.slice(0, 3))
  t.same(again.map((result) => result.status), ['replayed', 'replayed', 'replayed'], 'a retry replays each keyed record')
  t.same(again.map((result) => result.record!.id), first.slice(0, 3).map((result) => result.record!.id))

  const spent = async (id: string) => (await app.app.inject({ url: `${PREFIX}/${id}/status`, headers })).json().currentAmount as string
  t.same([await spent(org), await spent(team), await spent(user), await spent(other)], ['6.75', '6.75', '2', '4.25'], 'each budget counts each record once, in both trees')
  t.equal((await app.sql`select count(*)::int as n from budget_usage_records`)[0]!.n, 4, 'nothing stored twice')
  t.same(await findViolations(app.sql), [])
})
