// Review (approvals): the last level's decision ran in a bounded transaction on a reserved connection and read
// the budget's window and status inside it on the shared pool (alerts.approvalOf). With as many last-level
// decisions at once as the pool had connections, every connection was reserved by a transaction waiting for a
// pool statement that could never get one. Found by review, fixed: the approval is read before the transaction.
import t, { type Test } from 'tap'
import Fastify from 'fastify'
import budgets from '../lib/index.js'
import { ADMIN_TOKEN, PREFIX, TEST_CHANNELS } from './fixtures/app.js'
import { createTestSql } from './fixtures/database.js'

const POOL = 3

async function decideAtOnce (t: Test, count: number) {
  const { sql } = await createTestSql(t, { max: POOL })
  const app = Fastify({ logger: false })
  await app.register(budgets, {
    database: sql,
    adminToken: ADMIN_TOKEN,
    adminTimeoutMs: 2000,
    authorize: (request) => {
      const token = /^Bearer (\S+)$/.exec(request.headers.authorization ?? '')?.[1] ?? ''
      if (token === ADMIN_TOKEN) return 'admin'
      return token === 'finance' ? { actor: 'finance', role: 'approver', scopes: null } : false
    },
    notifications: { intervalMs: 0, channels: TEST_CHANNELS }
  })
  await app.ready()
  t.teardown(async () => { await Promise.race([app.close(), new Promise((resolve) => setTimeout(resolve, 1000))]) })
  const as = (token: string) => async (method: 'GET' | 'POST', url: string, body?: Record<string, unknown>) =>
    await app.inject({ method, url: `${PREFIX}${url}`, headers: { authorization: `Bearer ${token}` }, ...(body === undefined ? {} : { body }) })
  const admin = as(ADMIN_TOKEN)
  const finance = as('finance')

  const created = await admin('POST', '', { name: 'team', scopeType: 'team', scopeId: 'team-a', amount: '100', currency: 'USD', period: 'monthly', startDate: '2024-01-01', alerts: [{ threshold: 50, actions: ['require-approval'] }] })
  t.equal(created.statusCode, 201)
  const budgetId = created.json().id as string
  const requests: string[] = []
  for (let i = 0; i < count; i++) {
    const filed = await admin('POST', `/${budgetId}/approval-requests`, { amount: '1' })
    t.equal(filed.statusCode, 201)
    requests.push(filed.json().id)
  }

  const hung = Symbol('hung')
  const decided = await Promise.race([
    Promise.all(requests.map(async (id) => await finance('POST', `/${budgetId}/approval-requests/${id}/decisions`, { level: 1, verdict: 'approve' }))),
    new Promise<typeof hung>((resolve) => setTimeout(() => resolve(hung), 8000))
  ])
  t.not(decided, hung, `${count} decisions at once on a pool of ${POOL}: they answer within 8 s (the admin bound is 2 s)`)
  if (decided !== hung) t.same(decided.map((one) => `${one.statusCode} ${one.statusCode === 200 ? '' : one.json().code as string}`), requests.map(() => '200 '), 'every decision answers 200')
}

t.test('held: one decision fewer than the pool has connections, all at once: each answers 200', async (t) => { await decideAtOnce(t, POOL - 1) })

t.test('as many last-level decisions at once as the pool has connections: each answers within the admin bound', async (t) => { await decideAtOnce(t, POOL) })
