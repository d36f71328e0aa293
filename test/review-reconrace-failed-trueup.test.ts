// Review of 1df63c1/57ae84d (adversarial): a true-up whose transaction fails midway (after the budget's own
// correction and the relaycore_budgets.correcting mark, in its ancestors' re-true-up: RB001; or a correction
// past numeric(28,10): 22003) writes nothing, and the mark does not reach the next request on the same pooled
// connection: a late usage record into an ended window still fires its alert.
import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import budgets from '../lib/index.js'
import { ADMIN_TOKEN, PREFIX, TEST_CHANNELS, snapshotTables } from './fixtures/app.js'
import { createTestSql } from './fixtures/database.js'
import { YESTERDAY } from './fixtures/reconciliation.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }

async function oneConnectionApp (t: any) {
  // one connection: every request of the app runs on the session the failed true-up ran on
  const { sql } = await createTestSql(t, { max: 1 })
  const app: FastifyInstance = Fastify()
  await app.register(budgets, { database: sql, adminToken: ADMIN_TOKEN, notifications: { intervalMs: 0, channels: TEST_CHANNELS }, gate: { sweepIntervalMs: 0 } } as any)
  await app.ready()
  t.teardown(async () => await app.close())
  const call = async (method: 'GET' | 'POST' | 'PUT', path: string, body?: Record<string, unknown>, headers: Record<string, string> = {}, payload?: string) =>
    await app.inject({ method, url: `${PREFIX}${path}`, headers: { ...AUTH, ...headers }, ...(body === undefined ? {} : { body }), ...(payload === undefined ? {} : { payload }) })
  const must = async (method: 'GET' | 'POST' | 'PUT', path: string, body: Record<string, unknown> | undefined, status: number) => {
    const r = await call(method, path, body)
    if (r.statusCode !== status) throw new Error(`${method} ${path}: ${r.statusCode} ${r.body}`)
    return r.json()
  }
  const csv = async (lines: string[]) => {
    const r = await call('POST', '/provider-costs/import', undefined, { 'content-type': 'text/csv' }, ['date,provider,account,project,amount,currency', ...lines].join('\n'))
    if (r.statusCode !== 200) throw new Error(r.body)
  }
  const budget = async (body: Record<string, unknown>) => (await must('POST', '', { scopeType: 'team', amount: '1000', currency: 'USD', period: 'monthly', startDate: '2024-01-01', ...body }, 201)).id as string
  return { sql, call, must, csv, budget }
}

/** A late usage record into yesterday's (ended) daily window crossing 50%: its alert must be recorded. */
async function lateAlertFires (t: any, h: Awaited<ReturnType<typeof oneConnectionApp>>, name: string) {
  const daily = await h.budget({ name, scopeId: name, period: 'daily', amount: '10', startDate: '2024-01-01', alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['ops'] }] })
  await h.must('POST', `/${daily}/usage`, { amount: '6', currency: 'USD', occurredAt: `${YESTERDAY}T03:00:00Z`, metadata: { requestId: `late-${name}` } }, 201)
  const [row] = await h.sql`select count(*)::int as n from budget_alert_history where budget_id = ${daily}`
  t.equal(row!.n, 1, 'the late record into the ended window fires its alert on the same connection')
}

t.test('RB001 in the ancestors\' re-true-up: nothing written, no mark left behind', async (t) => {
  const h = await oneConnectionApp(t)
  const parent = await h.budget({ name: 'org', scopeType: 'organization', scopeId: 'acme' })
  const child = await h.budget({ name: 'team', scopeId: 'team-a', parentId: parent })
  await h.must('POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'account', value: 'acme', budgetId: parent, trueUp: true }, 201)
  await h.must('POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: child, trueUp: true }, 201)
  await h.csv([`${YESTERDAY},mistral,acme,proj_a,5,USD`, `${YESTERDAY},mistral,acme,proj_b,3,USD`])
  t.match(await h.must('POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: parent }, 200), { status: 'created' })
  // a bucket in a currency with no rate to USD, of the parent's dimension only
  await h.csv([`${YESTERDAY},mistral,acme,proj_a,5,USD`, `${YESTERDAY},mistral,acme,proj_b,3,USD`, `${YESTERDAY},mistral,acme,proj_c,2,GBP`])
  const before = await snapshotTables(h.sql)
  const refused = await h.call('POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: child })
  t.ok(refused.statusCode >= 400 && refused.statusCode < 500, `the child's true-up is refused with a 4xx: ${refused.statusCode} ${refused.body}`)
  t.strictSame(await snapshotTables(h.sql), before, 'nothing written')
  await lateAlertFires(t, h, 'late-a')
})

t.test('22003 from a correction past numeric(28,10): nothing written, no mark left behind', async (t) => {
  const h = await oneConnectionApp(t)
  const parent = await h.budget({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '999999999999999999' })
  const child = await h.budget({ name: 'team', scopeId: 'team-a', parentId: parent, amount: '999999999999999999' })
  await h.must('POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: child, trueUp: true }, 201)
  await h.must('POST', `/${parent}/usage`, { amount: '600000000000000000', currency: 'USD', occurredAt: `${YESTERDAY}T01:00:00Z`, metadata: { requestId: 'big' } }, 201)
  await h.csv([`${YESTERDAY},mistral,acme,proj_a,600000000000000000,USD`])
  const before = await snapshotTables(h.sql)
  const refused = await h.call('POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: child })
  t.ok(refused.statusCode >= 400 && refused.statusCode < 500, `refused with a 4xx: ${refused.statusCode} ${refused.body}`)
  t.strictSame(await snapshotTables(h.sql), before, 'nothing written')
  await lateAlertFires(t, h, 'late-b')
})
