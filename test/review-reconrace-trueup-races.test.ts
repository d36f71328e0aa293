// Review of 1df63c1/57ae84d (adversarial, concurrency): on plain PostgreSQL, two instances on one database
// race true-ups of a child and its parent with CSV re-imports of a new bill, POST /reconciliation/evaluate,
// and moves (within the tree and to another tree) and deletes of mappings of the same budgets. No 5xx (no
// deadlock surfacing), and after a final true-up each budget is at its invoice, each correction stored once,
// the records of a correction sum to it, and every window is the sum of its allocations.
import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import budgets from '../lib/index.js'
import { ADMIN_TOKEN, PREFIX, TEST_CHANNELS } from './fixtures/app.js'
import { createTestSql } from './fixtures/database.js'
import { checkInvariants } from './fixtures/invariants.js'
import { YESTERDAY } from './fixtures/reconciliation.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }

async function instance (t: { teardown: (fn: () => unknown) => void }, url: string): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(budgets, { database: url, adminToken: ADMIN_TOKEN, notifications: { intervalMs: 0, channels: TEST_CHANNELS }, gate: { sweepIntervalMs: 0 } } as any)
  await app.ready()
  t.teardown(async () => await app.close())
  return app
}

t.test('true-ups, bill corrections, evaluate and mapping moves/deletes from two instances', async (t) => {
  const { url, sql } = await createTestSql(t)
  const apps = [await instance(t, url), await instance(t, url)]
  const call = async (i: number, method: 'GET' | 'POST' | 'PUT' | 'DELETE', path: string, body?: Record<string, unknown>, headers: Record<string, string> = {}, payload?: string) =>
    await apps[i % 2]!.inject({ method, url: `${PREFIX}${path}`, headers: { ...AUTH, ...headers }, ...(body === undefined ? {} : { body }), ...(payload === undefined ? {} : { payload }) })
  const must = async (method: 'POST' | 'PUT', path: string, body: Record<string, unknown>, status: number) => {
    const r = await call(0, method, path, body)
    if (r.statusCode !== status) throw new Error(`${method} ${path}: ${r.statusCode} ${r.body}`)
    return r.json()
  }
  const alerts = [{ threshold: 50, actions: ['notify'], notificationChannels: ['ops'] }]
  const budget = async (body: Record<string, unknown>) => (await must('POST', '', { scopeType: 'team', amount: '100000', currency: 'USD', period: 'monthly', startDate: '2024-01-01', alerts, ...body }, 201)).id as string
  const parent = await budget({ name: 'org', scopeType: 'organization', scopeId: 'acme' })
  const child = await budget({ name: 'team', scopeId: 'team-a', parentId: parent })
  const sibling = await budget({ name: 'sibling', scopeId: 'team-s', parentId: parent })
  const elsewhere = await budget({ name: 'elsewhere', scopeId: 'team-e' })
  await must('POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'account', value: 'acme', budgetId: parent, trueUp: true }, 201)
  await must('POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: child, trueUp: true }, 201)
  const roaming = (await must('POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_x', budgetId: child, trueUp: true }, 201)).id as string
  for (const [b, amount, key] of [[child, '40', 'c'], [parent, '15', 'p'], [sibling, '5', 's'], [elsewhere, '3', 'e']] as const) {
    await must('POST', `/${b}/usage`, { amount, currency: 'USD', occurredAt: `${YESTERDAY}T02:00:00Z`, metadata: { requestId: key } }, 201)
  }
  const csv = (round: number) => ['date,provider,account,project,amount,currency',
    `${YESTERDAY},mistral,acme,proj_a,${50 + (round * 37) % 29}.5,USD`,
    `${YESTERDAY},mistral,acme,proj_x,${7 + (round * 13) % 11},USD`,
    `${YESTERDAY},mistral,acme,proj_b,${20 + (round * 7) % 5},USD`].join('\n')

  const failures: string[] = []
  const statuses: Record<string, number> = {}
  const note = (label: string, r: { statusCode: number, body: string }) => {
    statuses[`${label}:${r.statusCode}`] = (statuses[`${label}:${r.statusCode}`] ?? 0) + 1
    if (r.statusCode >= 500) failures.push(`${label}: ${r.statusCode} ${r.body}`)
  }
  const targets = [sibling, elsewhere, child]
  const [before] = await sql<Array<{ n: string }>>`select deadlocks::text as n from pg_stat_database where datname = current_database()`
  for (let round = 0; round < 14; round++) {
    const up = (i: number, budgetId: string) => call(i, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId }).then((r) => note('true-up', r))
    const work = [
      call(round, 'POST', '/provider-costs/import', undefined, { 'content-type': 'text/csv' }, csv(round)).then((r) => note('import', r)),
      up(round, round % 2 === 0 ? child : parent),
      up(round + 1, round % 2 === 0 ? parent : child),
      up(round, sibling),
      call(round + 1, 'POST', '/reconciliation/evaluate').then((r) => note('evaluate', r)),
      call(round, 'PUT', `/provider-costs/mappings/${roaming}`, { budgetId: targets[round % 3] }).then((r) => note('move', r)),
      call(round + 1, 'POST', `/${child}/usage`, { amount: '0.25', currency: 'USD', occurredAt: `${YESTERDAY}T05:00:00Z`, metadata: { requestId: `r${round}` } }).then((r) => note('usage', r))
    ]
    if (round === 9) {
      // a delete of the roaming mapping (stranding refused or allowed), then it is made again under the child
      work.push(call(round + 1, 'DELETE', `/provider-costs/mappings/${roaming}`).then((r) => note('delete', r)))
    }
    await Promise.all(work)
  }
  t.strictSame(failures, [], 'no 5xx')
  t.comment(JSON.stringify(statuses))
  const [after] = await sql<Array<{ n: string }>>`select deadlocks::text as n from pg_stat_database where datname = current_database()`
  t.comment(`deadlocks detected: ${Number(after!.n) - Number(before!.n)}`)

  // final: the last bill, then true-ups of every mapped budget, child before parent
  const last = await call(0, 'POST', '/provider-costs/import', undefined, { 'content-type': 'text/csv' }, csv(99))
  t.equal(last.statusCode, 200)
  const mapped = await sql<Array<{ budget: string }>>`select distinct budget_id::text as budget from budget_recon_mappings where true_up`
  for (const b of [child, sibling, elsewhere, parent]) {
    if (!mapped.some((m) => m.budget === b)) continue
    const r = await call(0, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: b })
    t.equal(r.statusCode, 200, `final true-up: ${r.body}`)
  }
  const lines = (await call(0, 'GET', `/reconciliation?from=${YESTERDAY}&to=${YESTERDAY}`)).json().lines as Array<{ budgetName: string, difference: string, correction: string | null }>
  t.strictSame(lines.filter((l) => l.correction !== null && l.correction !== l.difference), [], 'each trued-up budget at its invoice')
  const twice = await sql`select provider, day, budget_id, count(*)::int as n from budget_recon_corrections group by 1, 2, 3 having count(*) > 1`
  t.strictSame(twice.map((r) => ({ ...r })), [], 'each correction stored once')
  const sums = await sql`
    select c.budget_id::text as budget, c.amount::text as correction,
           (select sum(u.amount) from budget_usage_records u where u.root_id = c.root_id and u.correction and (u.id = c.usage_id or u.metadata->>'adjusts' = c.usage_id::text))::text as records
    from budget_recon_corrections c`
  t.strictSame(sums.filter((r) => Number(r.correction) !== Number(r.records)).map((r) => ({ ...r })), [], 'the records of each correction sum to it')
  const roots = await sql`select m.id from budget_recon_mappings m left join budget_definitions d on d.root_id = m.root_id and d.id = m.budget_id where d.id is null`
  t.equal(roots.length, 0, 'every mapping in its budget\'s tree')
  await checkInvariants(t, sql)
})
