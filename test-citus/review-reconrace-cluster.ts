// Review of 1df63c1/57ae84d (adversarial, concurrency) on the Citus cluster: two plugin instances on the
// coordinator. A mapping moved back and forth between two trees (delete + insert) races a true-up of its
// budget, a create of the same dimension in the other tree and in a third, from the other instance. On Citus
// only the mapping lock and the dimension read keep a dimension mapped once. Then a true-up that fails midway
// (RB001 in the ancestors' re-true-up) on a one-connection pool: nothing written, and a late usage record
// into an ended window on that connection still fires its alert (the correcting mark is sent to the workers).
import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import postgres from 'postgres'
import budgets from '../lib/index.js'
import { distributeOnCitus } from '../lib/kernel/database/citus.js'
import { migrate } from '../lib/kernel/database/migrate.js'
import { createTestSql } from '../test/fixtures/database.js'
import { ADMIN_TOKEN, PREFIX, TEST_CHANNELS } from '../test/fixtures/app.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }
const DAY_MS = 86_400_000
const YESTERDAY = new Date(Date.now() - DAY_MS).toISOString().slice(0, 10)

async function instance (t: { teardown: (fn: () => unknown) => void }, database: any): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(budgets, { database, adminToken: ADMIN_TOKEN, notifications: { intervalMs: 0, channels: TEST_CHANNELS }, gate: { sweepIntervalMs: 0 } } as any)
  await app.ready()
  t.teardown(async () => await app.close())
  return app
}

t.test('cluster: two instances race a cross-tree move, a true-up and creates of the same dimension; a failed true-up leaves no mark', async (t) => {
  const { url, sql } = await createTestSql(t, { max: 6 })
  await migrate(sql)
  await distributeOnCitus(sql)
  const apps = [await instance(t, sql), await instance(t, url)]
  const call = async (i: number, method: 'GET' | 'POST' | 'PUT' | 'DELETE', path: string, body?: Record<string, unknown>, headers: Record<string, string> = {}, payload?: string) =>
    await apps[i % 2]!.inject({ method, url: `${PREFIX}${path}`, headers: { ...AUTH, ...headers }, ...(body === undefined ? {} : { body }), ...(payload === undefined ? {} : { payload }) })
  const must = async (i: number, method: 'POST' | 'PUT', path: string, body: Record<string, unknown>, status: number) => {
    const r = await call(i, method, path, body)
    if (r.statusCode !== status) throw new Error(`${method} ${path}: ${r.statusCode} ${r.body}`)
    return r.json()
  }
  const csv = async (i: number, lines: string[]) => {
    const r = await call(i, 'POST', '/provider-costs/import', undefined, { 'content-type': 'text/csv' }, ['date,provider,account,project,amount,currency', ...lines].join('\n'))
    if (r.statusCode !== 200) throw new Error(r.body)
  }
  const budget = async (body: Record<string, unknown>) => (await must(0, 'POST', '', { scopeType: 'team', amount: '100000', currency: 'USD', period: 'monthly', startDate: '2024-01-01', ...body }, 201)).id as string

  const parent = await budget({ name: 'org', scopeType: 'organization', scopeId: 'acme' })
  const child = await budget({ name: 'team', scopeId: 'team-a', parentId: parent })
  const other = await budget({ name: 'other', scopeId: 'team-b' })
  const third = await budget({ name: 'third', scopeId: 'team-c' })
  await must(0, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: child, trueUp: true }, 201)
  const roaming = (await must(0, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_x', budgetId: other, trueUp: true }, 201)).id as string
  await must(0, 'POST', `/${child}/usage`, { amount: '4', currency: 'USD', occurredAt: `${YESTERDAY}T02:00:00Z`, metadata: { requestId: 'c' } }, 201)
  await csv(0, [`${YESTERDAY},mistral,acme,proj_a,9,USD`, `${YESTERDAY},mistral,acme,proj_x,3,USD`])

  const failures: string[] = []
  const statuses: Record<string, number> = {}
  const note = (label: string, r: { statusCode: number, body: string }) => {
    statuses[`${label}:${r.statusCode}`] = (statuses[`${label}:${r.statusCode}`] ?? 0) + 1
    if (r.statusCode >= 500) failures.push(`${label}: ${r.statusCode} ${r.body}`)
  }
  let created = 0
  let moved = 0
  for (let round = 0; round < 8; round++) {
    const to = round % 2 === 0 ? child : other
    const away = round % 2 === 0 ? other : third
    await Promise.all([
      call(0, 'PUT', `/provider-costs/mappings/${roaming}`, { budgetId: to }).then((r) => { note('move', r); if (r.statusCode === 200) moved++ }),
      call(1, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: child }).then((r) => note('true-up', r)),
      call(1, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'workspace', value: 'proj_x', budgetId: away }).then((r) => { note('create', r); if (r.statusCode === 201) created++ }),
      call(0, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_x', budgetId: third }).then((r) => { note('create', r); if (r.statusCode === 201) created++ }),
      call(1, 'POST', '/reconciliation/evaluate').then((r) => note('evaluate', r))
    ])
  }
  t.strictSame(failures, [], 'no 5xx')
  t.comment(JSON.stringify(statuses))
  const rows = await sql<Array<{ id: string, value: string, kind: string, budget: string, root: string }>>`
    select id::text as id, value, kind, budget_id::text as budget, root_id::text as root from budget_recon_mappings order by id`
  t.equal(new Set(rows.map((r) => r.id)).size, rows.length, 'each mapping id once')
  t.equal(rows.filter((r) => r.value === 'proj_x').length, 1, 'proj_x (project and workspace one dimension) mapped once')
  t.equal(created, 0, 'no create of a mapped dimension acknowledged')
  for (const r of rows) {
    const [d] = await sql`select root_id::text as root from budget_definitions where id = ${r.budget}`
    t.equal(r.root, d!.root, `mapping ${r.id} in its budget's tree`)
  }
  const [audits] = await sql`select count(*)::int as n from budget_audit_log where action = 'update-cost-mapping'`
  t.equal(audits!.n, moved, 'one audit entry per acknowledged move')

  // a final true-up of the child (the roaming mapping where the last move left it): at its invoice
  const final = await call(0, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: child })
  t.equal(final.statusCode, 200, final.body)
  const line = (await call(0, 'GET', `/reconciliation?from=${YESTERDAY}&to=${YESTERDAY}&budgetId=${child}`)).json().lines[0]
  t.equal(line.correction, line.difference, 'the child at its invoice')
  const sums = await sql`
    select c.root_id, c.usage_id, c.amount::text as correction from budget_recon_corrections c`
  for (const c of sums) {
    const [s] = await sql`select sum(u.amount)::text as total from budget_usage_records u where u.root_id = ${c.root_id} and u.correction
                          and (u.id = ${c.usage_id} or u.metadata->>'adjusts' = ${c.usage_id}::text)`
    t.equal(Number(s!.total), Number(c.correction), 'the records of the correction sum to it')
  }

  // a true-up failing midway on a one-connection pool, then a late record into an ended window on it
  const one = postgres(url, { max: 1, onnotice: () => {} })
  t.teardown(async () => await one.end({ timeout: 5 }))
  const single = await instance(t, one)
  const on1 = async (method: 'POST' | 'PUT', path: string, body?: Record<string, unknown>, headers: Record<string, string> = {}, payload?: string) =>
    await single.inject({ method, url: `${PREFIX}${path}`, headers: { ...AUTH, ...headers }, ...(body === undefined ? {} : { body }), ...(payload === undefined ? {} : { payload }) })
  await must(0, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'account', value: 'acme', budgetId: parent, trueUp: true }, 201)
  const base = [`${YESTERDAY},mistral,acme,proj_a,9,USD`, `${YESTERDAY},mistral,acme,proj_x,3,USD`]
  await csv(0, base)
  t.equal((await on1('POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: parent })).statusCode, 200, 'parent trued up')
  await csv(0, [...base, `${YESTERDAY},mistral,acme,proj_c,2,GBP`, `${YESTERDAY},mistral,acme,proj_a2,1,USD`])
  // the child's bill moves (a new mapping of the child's), so its true-up writes, then the parent's line misses GBP
  await must(0, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a2', budgetId: child, trueUp: true }, 201)
  const count = async () => (await sql`select (select count(*) from budget_usage_records)::int as records, (select count(*) from budget_recon_corrections)::int as corrections,
                                              (select coalesce(sum(amount), 0)::text from budget_recon_corrections) as amount, (select count(*) from budget_audit_log)::int as audits`)[0]
  const before = await count()
  const refused = await on1('POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: child })
  t.equal(refused.statusCode, 400, `RB001 midway: ${refused.body}`)
  t.strictSame(await count(), before, 'nothing written')
  const daily = (await must(0, 'POST', '', { name: 'daily', scopeType: 'team', scopeId: 'team-d', amount: '10', currency: 'USD', period: 'daily', startDate: '2024-01-01',
    alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['ops'] }] }, 201)).id as string
  const late = await on1('POST', `/${daily}/usage`, { amount: '6', currency: 'USD', occurredAt: `${YESTERDAY}T03:00:00Z`, metadata: { requestId: 'late' } })
  t.equal(late.statusCode, 201, late.body)
  const [fired] = await sql`select count(*)::int as n from budget_alert_history where budget_id = ${daily}`
  t.equal(fired!.n, 1, 'the late record into the ended window fires its alert on the same connection')
})
