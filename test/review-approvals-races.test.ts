// Review (approvals): races on one request, archived budgets, cross-budget ids and sibling teams.
import t from 'tap'
import Fastify, { type LightMyRequestResponse } from 'fastify'
import budgets from '../lib/index.js'
import { ADMIN_TOKEN, PREFIX, TEST_CHANNELS, snapshotTables } from './fixtures/app.js'
import { approvalsAuthorize, approvalsGateway } from './fixtures/approvals-gateway.js'

const setup = approvalsGateway

const code = (response: LightMyRequestResponse) => `${response.statusCode} ${response.statusCode < 300 ? '' : response.json().code as string}`
const count = async (sql: Awaited<ReturnType<typeof setup>>['sql'], table: string) => (await sql.unsafe(`select count(*)::int as n from ${table}`))[0]!.n as number

t.test('held: two leads decide level 1 at once, and two of finance the last level at once: one of each wins, one approval', async (t) => {
  const { team, dev, lead, lead2, finance, finance2, sql } = await setup(t)
  for (let round = 0; round < 5; round++) {
    const request = (await dev('POST', `/${team.id}/approval-requests`, { amount: '800' })).json()
    const decide = `/${team.id}/approval-requests/${request.id}/decisions`
    const firsts = await Promise.all([lead('POST', decide, { level: 1, verdict: 'approve' }), lead2('POST', decide, { level: 1, verdict: 'approve' })])
    t.same(firsts.map(code).sort(), ['200 ', '409 BUDGET_ERR_APPROVAL_LEVEL'], 'level 1: one decides')
    const lasts = await Promise.all([finance('POST', decide, { level: 2, verdict: 'approve' }), finance2('POST', decide, { level: 2, verdict: 'approve' })])
    t.equal(lasts.filter((one) => one.statusCode === 200).length, 1, 'level 2: one decides')
    t.match(lasts.filter((one) => one.statusCode !== 200).map(code), [/^409 BUDGET_ERR_APPROVAL_(LEVEL|REQUEST_CLOSED)$/], 'the other: 409')
  }
  const approved = await sql`select count(*)::int as n from budget_approval_requests where state = 'approved'`
  t.equal(await count(sql, 'budget_approvals'), approved[0]!.n, 'one approval a request approved')
})

t.test('held: a request id of another budget, or a sibling team\'s request through one\'s own budget, answers as not found', async (t) => {
  const { team, teamB, dev, lead, otherLead, finance, sql } = await setup(t)
  const a = (await dev('POST', `/${team.id}/approval-requests`, { amount: '10' })).json()
  const before = await snapshotTables(sql)
  t.equal(code(await otherLead('POST', `/${teamB.id}/approval-requests/${a.id}/decisions`, { level: 1, verdict: 'approve' })), '404 BUDGET_ERR_APPROVAL_REQUEST_NOT_FOUND')
  t.equal(code(await finance('POST', `/${teamB.id}/approval-requests/${a.id}/decisions`, { level: 1, verdict: 'approve' })), '404 BUDGET_ERR_APPROVAL_REQUEST_NOT_FOUND')
  t.same((await otherLead('GET', `/approval-requests?budgetId=${team.id}`)).json().requests, [])
  t.same((await otherLead('GET', '/approval-requests')).json().requests, [])
  t.same((await otherLead('GET', `/approval-requests?budgetId=${team.id.toUpperCase()}`)).json().requests, [])
  t.equal((await lead('GET', `/approval-requests?budgetId=${team.id.toUpperCase()}`)).json().requests.length, 1)
  t.same(await snapshotTables(sql), before)
})

t.test('held: an archived budget\'s last level is refused (404) and changes nothing', async (t) => {
  const { team, dev, lead, finance, admin, sql } = await setup(t)
  const request = (await dev('POST', `/${team.id}/approval-requests`, { amount: '800' })).json()
  const decide = `/${team.id}/approval-requests/${request.id}/decisions`
  t.equal((await lead('POST', decide, { level: 1, verdict: 'approve' })).statusCode, 200)
  t.equal((await admin('DELETE', `/${team.id}`)).statusCode, 204)
  t.equal(code(await admin('POST', `/${team.id}/approval-requests`, { amount: '1' })), '404 BUDGET_ERR_NOT_FOUND', 'no request filed on an archived budget')
  const before = await snapshotTables(sql)
  t.equal(code(await finance('POST', decide, { level: 2, verdict: 'approve' })), '404 BUDGET_ERR_NOT_FOUND')
  t.same(await snapshotTables(sql), before, 'the refusal changes nothing')
})

t.test('an archived budget\'s pending request is not in an approver\'s decidable queue (every decision on it is refused)', async (t) => {
  const { team, dev, lead, finance, admin } = await setup(t)
  const request = (await dev('POST', `/${team.id}/approval-requests`, { amount: '800' })).json()
  t.equal((await lead('POST', `/${team.id}/approval-requests/${request.id}/decisions`, { level: 1, verdict: 'approve' })).statusCode, 200)
  t.equal((await admin('DELETE', `/${team.id}`)).statusCode, 204)
  const queue = (await finance('GET', '/approval-requests?decidable=true')).json().requests.map((one: { id: string, state: string, mayDecide: boolean }) => `${one.id} ${one.state} mayDecide=${String(one.mayDecide)}`)
  t.same(queue, [], 'finance\'s queue offers a request whose decision can only be refused (404 BUDGET_ERR_NOT_FOUND)')
})

t.test('an archived budget takes no decision at any level: a first level is refused as the last is', async (t) => {
  const { createBudget, finance, admin, sql } = await setup(t)
  const budget = await createBudget({ name: 'two of finance', scopeId: 'team-c', amount: '1000', alerts: [{ threshold: 50, actions: ['require-approval'], approvalPolicy: { levels: [{ name: 'finance', roles: ['approver'], upTo: '1' }, { name: 'finance again', roles: ['approver'] }] } }] })
  const filed = (await admin('POST', `/${budget.id}/approval-requests`, { amount: '800' })).json()
  t.equal((await admin('DELETE', `/${budget.id}`)).statusCode, 204)
  const before = await snapshotTables(sql)
  const first = await finance('POST', `/${budget.id}/approval-requests/${filed.id}/decisions`, { level: 1, verdict: 'approve' })
  t.equal(code(first), '404 BUDGET_ERR_NOT_FOUND', 'level 1 of an archived budget\'s request: refused as its last level is (and as filing is)')
  t.same(await snapshotTables(sql), before, 'no decision, no audit entry, on an archived budget')
})

t.test('held: two processes on one database decide the last level at once: one approval', async (t) => {
  const { team, dev, lead, finance, url, sql } = await setup(t)
  const other = Fastify({ logger: false })
  await other.register(budgets, {
    database: url,
    adminToken: ADMIN_TOKEN,
    authorize: approvalsAuthorize,
    notifications: { intervalMs: 0, channels: TEST_CHANNELS }
  })
  await other.ready()
  t.teardown(async () => await other.close())
  for (let round = 0; round < 5; round++) {
    const request = (await dev('POST', `/${team.id}/approval-requests`, { amount: '800' })).json()
    const decide = `/${team.id}/approval-requests/${request.id}/decisions`
    t.equal((await lead('POST', decide, { level: 1, verdict: 'approve' })).statusCode, 200)
    const [here, there] = await Promise.all([
      finance('POST', decide, { level: 2, verdict: 'approve' }),
      other.inject({ method: 'POST', url: `${PREFIX}${decide}`, headers: { authorization: 'Bearer finance2' }, body: { level: 2, verdict: 'approve' } })
    ])
    t.same([here.statusCode, there.statusCode].sort(), [200, 409])
  }
  t.equal((await sql`select count(*)::int as n from budget_approvals`)[0]!.n, 5, 'five requests, five approvals')
})
