// Review of 1f6c1c2 (usage in bulk on Citus), on the cluster (`npm run test:citus -- test-citus/review-batchcitus-race.ts`): two batches at once sharing keys and budgets
// over two trees (records by scopes that count in both), in opposite orders, with the single route posting the
// same keys meanwhile. Nothing stored twice, no 5xx, each created record answered 'created' once, every replay
// pointing at a stored record, and each window equal to its allocations.
import t from 'tap'
import type { Sql } from 'postgres'
import type { InjectOptions } from 'fastify'
import { PREFIX, budgetRequest } from '../test/fixtures/app.js'
import { adminHeaders, distributedApp } from '../test/fixtures/citus-app.js'
import { findViolations } from '../test/fixtures/invariants.js'

type TestApp = Awaited<ReturnType<typeof citusApp>>
async function citusApp (t: Parameters<typeof distributedApp>[0]) {
  const made = await distributedApp(t)
  const admin = async (request: InjectOptions) => await made.app.inject({ ...request, headers: { ...adminHeaders, ...request.headers } })
  return { ...made, admin }
}

async function createBudget (admin: TestApp['admin'], overrides: Record<string, unknown>): Promise<string> {
  const response = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ startDate: '2024-01-01', ...overrides }) })
  if (response.statusCode !== 201) throw new Error(response.body)
  return response.json().id
}

/** Tree 1: org (acme) > team (platform) > ada; tree 2: bob, a root, with a gpt-4o* team budget on platform beside it. */
async function world (admin: TestApp['admin'], tag: string) {
  const org = await createBudget(admin, { name: `${tag} org`, scopeType: 'organization', scopeId: `${tag}-acme`, amount: '300', alerts: [{ threshold: 25, actions: ['notify'] }] })
  const team = await createBudget(admin, { name: `${tag} team`, scopeType: 'team', scopeId: `${tag}-platform`, parentId: org, amount: '100', period: 'weekly', alerts: [{ threshold: 10, actions: ['notify'] }] })
  const ada = await createBudget(admin, { name: `${tag} ada`, scopeType: 'user', scopeId: `${tag}-ada`, parentId: team, amount: '20', period: 'daily' })
  const bob = await createBudget(admin, { name: `${tag} bob`, scopeType: 'user', scopeId: `${tag}-bob`, amount: '60', alerts: [{ threshold: 30, actions: ['notify'] }] })
  const team4o = await createBudget(admin, { name: `${tag} team4o`, scopeType: 'team', scopeId: `${tag}-platform`, amount: '40', filters: { models: ['gpt-4o*'] } })
  return { org, team, ada, bob, team4o }
}

type World = Awaited<ReturnType<typeof world>>

/** The record for key i: its target and amount; `variant` changes the request (the same key, another request: a conflict). */
function recordFor (i: number, w: World, tag: string, variant: number) {
  const metadata = { modelId: i % 3 === 0 ? 'gpt-4o' : 'gpt-4.1', requestId: `${tag}-k${i}` }
  const amount = (1 + (i % 7) + (i % 5 === 0 ? variant : 0)).toFixed(2)
  const body = { amount, currency: 'USD', source: 'race', metadata }
  switch (i % 5) {
    case 0: return { scopes: { user: `${tag}-bob`, team: `${tag}-platform` }, ...body } // bob takes it; team4o (gpt-4o), team and org count it too
    case 1: return { budgetId: w.ada, ...body }
    case 2: return { budgetId: w.bob, ...body }
    case 3: return { scopes: { user: `${tag}-ada`, team: `${tag}-platform` }, ...body }
    default: return { budgetId: variant === 0 ? w.ada : w.bob, ...body } // the same key on a budget of each tree
  }
}

interface Assert { same: (found: unknown, wanted: unknown, message: string) => unknown }
interface Answer { status: string, record?: { id: string }, error?: { code: string } }

async function race (app: TestApp, tag: string): Promise<{ answers: Answer[], fives: string[] }> {
  const w = await world(app.admin, tag)
  const keys = Array.from({ length: 30 }, (_, i) => i)
  const x = keys.map((i) => recordFor(i, w, tag, 0))
  const y = [...keys].reverse().map((i) => recordFor(i, w, tag, 1))
  const z = keys.filter((i) => i % 3 === 1).map((i) => recordFor(i, w, tag, 0)).filter((record): record is ReturnType<typeof recordFor> & { budgetId: string } => 'budgetId' in record)
  const fives: string[] = []
  const answers: Answer[] = []
  const batch = async (records: unknown[]) => {
    const response = await app.admin({ method: 'POST', url: `${PREFIX}/usage/batch`, body: { records } })
    if (response.statusCode !== 200) { fives.push(`batch ${response.statusCode} ${response.body.slice(0, 300)}`); return }
    answers.push(...(response.json().results as Answer[]))
  }
  const single = async (record: { budgetId: string } & Record<string, unknown>) => {
    const { budgetId, ...body } = record
    const response = await app.admin({ method: 'POST', url: `${PREFIX}/${budgetId}/usage`, body })
    if (response.statusCode >= 500) { fives.push(`single ${response.statusCode} ${response.body.slice(0, 300)}`); return }
    answers.push(response.statusCode === 201 ? { status: 'created', record: response.json() } : response.statusCode === 200 ? { status: 'replayed', record: response.json() } : { status: 'refused', error: response.json() })
  }
  await Promise.all([batch(x), batch(y), (async () => { for (const record of z) await single(record) })()])
  return { answers, fives }
}

async function check (t: Assert, sql: Sql, answers: Answer[], fives: string[]) {
  t.same(fives, [], 'no 5xx, no refused batch')
  const stored = await sql<Array<{ id: string, key: string, root: string }>>`select id::text, idempotency_key as key, root_id::text as root from budget_usage_records`
  const perKeyAndTree = new Map<string, number>()
  for (const row of stored) perKeyAndTree.set(`${row.key} ${row.root}`, (perKeyAndTree.get(`${row.key} ${row.root}`) ?? 0) + 1)
  t.same([...perKeyAndTree].filter(([, n]) => n > 1), [], 'no key stored twice in a tree')
  const ids = new Set(stored.map((row) => row.id))
  const created = answers.filter((answer) => answer.status === 'created').map((answer) => answer.record!.id)
  t.same([...created].sort(), [...ids].sort(), 'each stored record answered created once, and nothing else stored')
  t.same(answers.filter((answer) => answer.status === 'replayed' && !ids.has(answer.record!.id)), [], 'every replay answers a stored record')
  t.same(answers.filter((answer) => answer.status === 'refused' && answer.error!.code !== 'BUDGET_ERR_IDEMPOTENCY_CONFLICT'), [], 'refused only as conflicts')
  t.same((await findViolations(sql)).filter((violation) => !violation.startsWith('hard budget')), [], 'each window equal to its allocations')
}

t.test('on Citus: two batches and the single route at once, over two trees, sharing keys and budgets', async (t) => {
  const app = await citusApp(t)
  const all: Answer[] = []
  const fives: string[] = []
  for (let round = 0; round < Number(process.env.REVIEW_ROUNDS ?? 4); round++) {
    const result = await race(app, `r${round}`)
    all.push(...result.answers)
    fives.push(...result.fives)
  }
  await check(t, app.sql, all, fives)
  t.ok(all.some((answer) => answer.status === 'replayed') && all.some((answer) => answer.status === 'refused'), 'the races met replays and conflicts')
})
