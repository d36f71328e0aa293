// The audit log: every change to a budget, written in the change's own transaction, with the actor, the
// time and the request id; read per budget and as a feed, newest first, with keyset pagination;
// append-only, through the API and in the database.
import t from 'tap'
import { PREFIX, budgetRequest, buildApp, snapshotTables } from './fixtures/app.js'

interface Entry { id: string, budgetId: string, action: string, changes: string[], before: Record<string, unknown> | null, after: Record<string, unknown> | null, actor: string, requestId: string | null, at: string }

t.test('each kind of change is recorded once, with who, when, which request, and what it was before and after', async (t) => {
  const { admin, app } = await buildApp(t)
  const started = Date.now()
  const parent = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeType: 'organization', scopeId: 'acme', amount: '5000' }) })).json()
  const other = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeType: 'organization', scopeId: 'other', amount: '5000', currency: 'EUR' }) })).json()
  // A move stays in its tree (a budget's root is fixed): the budget moves from other to a sibling under it.
  const middle = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeId: 'middle', amount: '1000', currency: 'EUR', parentId: other.id }) })).json()
  const budget = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ amount: '100', currency: 'EUR', parentId: other.id, alerts: [{ threshold: 50, actions: ['require-approval'] }] }) })).json()
  t.equal((await admin({ method: 'PUT', url: `${PREFIX}/${budget.id}`, body: { amount: '120.5' } })).statusCode, 200)
  t.equal((await admin({ method: 'PUT', url: `${PREFIX}/${budget.id}`, body: { period: 'weekly' } })).statusCode, 200, 'a period change')
  t.equal((await admin({ method: 'PUT', url: `${PREFIX}/${budget.id}`, body: { parentId: middle.id } })).statusCode, 200, 'a parent change')
  await app.budgetTracker.recordUsage({ budgetId: budget.id, amount: '70', currency: 'EUR', source: 'test' })
  const [alert] = (await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/alerts` })).json().alerts
  t.equal((await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/alerts/${alert.id}/acknowledge` })).statusCode, 200)
  t.equal((await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/alerts/${alert.id}/acknowledge` })).statusCode, 200, 'again: the first stands')
  t.equal((await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/approvals`, body: { amount: '10', reason: 'release week' } })).statusCode, 201)
  t.equal((await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/refresh-cache` })).statusCode, 200)
  t.equal((await admin({ method: 'DELETE', url: `${PREFIX}/${other.id}?cascade=true` })).statusCode, 204)

  const log = (await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/audit` })).json() as { entries: Entry[], nextCursor: string | null }
  t.same(log.entries.map((entry) => entry.action), ['delete', 'refresh-cache', 'approve', 'acknowledge', 'update', 'update', 'update', 'create'], 'newest first; one acknowledgement')
  t.equal(log.nextCursor, null)
  for (const entry of log.entries) {
    t.equal(entry.actor, 'admin')
    t.match(entry.requestId, /^req-/, 'the request id')
    t.ok(Date.parse(entry.at) >= started - 1000 && Date.parse(entry.at) <= Date.now() + 1000, 'the time')
  }
  const [deleted, refreshed, approved, acknowledged, moved, reperiod, amount, created] = log.entries
  t.match(created, { before: null, after: { id: budget.id, amount: '100' } })
  t.match(amount, { changes: ['amount'], before: { amount: '100' }, after: { amount: '120.5' } })
  t.match(reperiod, { changes: ['period'], before: { period: 'monthly' }, after: { period: 'weekly' } })
  t.match(moved, { changes: ['parentId'], before: { parentId: other.id, rootId: other.id }, after: { parentId: middle.id, rootId: other.id } })
  t.match(acknowledged, { after: { alertId: alert.id, threshold: 50 } })
  t.match(approved, { after: { amount: '10', reason: 'release week' } })
  t.match(refreshed, { before: { currentAmount: '70.0000000000' }, after: { currentAmount: '70.0000000000', usageCount: 1 } })
  t.match(deleted, { changes: [`cascade from ${other.id}`], before: { id: budget.id }, after: null }, 'deleted with its tree')
  t.same((await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/audit` })).statusCode, 200, 'a deleted budget\'s log stays readable')
  t.ok(parent.id)
})

t.test('the feed pages with a keyset cursor: every entry once, newest first', async (t) => {
  const { admin } = await buildApp(t)
  for (let i = 0; i < 4; i++) {
    const budget = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeId: `team-${i}` }) })).json()
    await admin({ method: 'PUT', url: `${PREFIX}/${budget.id}`, body: { name: `renamed ${i}` } })
  }
  const seen: Entry[] = []
  let cursor: string | null = null
  let pages = 0
  do {
    const page = (await admin({ method: 'GET', url: `${PREFIX}/audit?limit=3${cursor === null ? '' : `&cursor=${cursor}`}` })).json() as { entries: Entry[], nextCursor: string | null }
    seen.push(...page.entries)
    cursor = page.nextCursor
    pages++
  } while (cursor !== null && pages < 10)
  t.equal(pages, 3, '8 entries in pages of 3')
  t.equal(seen.length, 8)
  t.equal(new Set(seen.map((entry) => entry.id)).size, 8, 'no entry twice')
  t.same(seen.map((entry) => BigInt(entry.id)), [...seen.map((entry) => BigInt(entry.id))].sort((a, b) => (a > b ? -1 : 1)), 'newest first')
  for (const [query, field] of [['limit=0', 'limit'], ['limit=501', 'limit'], ['cursor=abc', 'cursor'], ['cursor=-1', 'cursor'], ['cursor=99999999999999999999', 'cursor']] as const) {
    const response = await admin({ method: 'GET', url: `${PREFIX}/audit?${query}` })
    t.equal(response.statusCode, 400, query)
    t.match(response.json().message, field)
  }
  t.equal((await admin({ method: 'GET', url: `${PREFIX}/00000000-0000-4000-8000-000000000000/audit` })).statusCode, 404, 'an id that never named a budget')
})

t.test('a refused change writes no entry; the actor is authorize\'s name', async (t) => {
  const { admin, sql } = await buildApp(t, { adminToken: undefined, authorize: () => 'alice' })
  const budget = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest() })).json()
  const before = await snapshotTables(sql)
  t.equal((await admin({ method: 'PUT', url: `${PREFIX}/${budget.id}`, body: { amount: '-1' } })).statusCode, 400)
  t.equal((await admin({ method: 'PUT', url: `${PREFIX}/${budget.id}`, body: { parentId: budget.id } })).statusCode, 409)
  t.same(await snapshotTables(sql), before, 'no entry, nothing changed')
  const [entry] = (await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/audit` })).json().entries
  t.match(entry, { action: 'create', actor: 'alice' })
})

t.test('entries cannot be edited or deleted: no route does it, and the database refuses', async (t) => {
  const { admin, sql } = await buildApp(t)
  const budget = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest() })).json()
  for (const method of ['PUT', 'PATCH', 'DELETE', 'POST'] as const) {
    t.equal((await admin({ method, url: `${PREFIX}/${budget.id}/audit`, body: {} })).statusCode, 404, `${method} has no route`)
  }
  for (const statement of ['update budget_audit_log set actor = \'mallory\'', 'delete from budget_audit_log', 'truncate budget_audit_log']) {
    const error = await sql.unsafe(statement).then(() => null, (caught: { message: string }) => caught.message)
    t.match(error, /append-only/, statement)
  }
  t.equal((await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/audit` })).json().entries.length, 1)
})
