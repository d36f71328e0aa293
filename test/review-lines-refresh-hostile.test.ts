// Review of the rewrite in steps: the refresh (one statement's snapshot, the
// drift added under a lock) against usage committing alongside it; hostile input through the admin routes
// that reach the rewritten functions; a caller whose scopes name many budgets.
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { PREFIX, buildApp, snapshotTables } from './fixtures/app.js'
import { checkInvariants } from './fixtures/invariants.js'

const budgetBody = (extra: Record<string, unknown>) => ({ name: 'b', scopeType: 'team', scopeId: 'team-a', amount: '1000000', currency: 'USD', period: 'monthly', startDate: '2024-01-01', ...extra })

t.test('refreshes running while usage commits leave each window row equal to its allocations', async (t) => {
  const { app, admin, sql } = await buildApp(t)
  const root = (await admin({ method: 'POST', url: PREFIX, body: budgetBody({}) })).json()
  const child = (await admin({ method: 'POST', url: PREFIX, body: budgetBody({ scopeType: 'user', scopeId: 'u1', parentId: root.id }) })).json()
  const other = (await admin({ method: 'POST', url: PREFIX, body: budgetBody({ scopeId: 'team-b' }) })).json()
  let n = 0
  const usage = async () => {
    if (n % 2 === 0) {
      // the library's path, counting toward a budget of another tree as well
      await app.budgetTracker.record({ budgetId: child.id, amount: `${(n % 7) + 0.125}`, currency: 'USD', source: 's', alsoCountsToward: [other.id], metadata: { requestId: `r-${n++}` } })
      return
    }
    const response = await admin({ method: 'POST', url: `${PREFIX}/${child.id}/usage`, body: { amount: `${(n % 7) + 0.125}`, currency: 'USD', source: 's', metadata: { requestId: `r-${n++}` } } })
    t.equal(response.statusCode, 201, response.body.slice(0, 200))
  }
  const refresh = async (id: string) => {
    const response = await admin({ method: 'POST', url: `${PREFIX}/${id}/refresh-cache` })
    t.equal(response.statusCode, 200, response.body.slice(0, 200))
  }
  await usage()
  // a drift to put right
  await sql`update budget_status_cache set current_amount = current_amount + 7, usage_count = usage_count + 3`
  for (let round = 0; round < 15; round++) {
    await Promise.all([usage(), refresh(root.id), usage(), refresh(child.id), usage(), refresh(other.id), usage(), usage()])
  }
  const [counted] = await sql`select count(*)::int as n from budget_usage_allocations where budget_id = ${other.id}`
  t.ok(counted!.n > 10, 'the other tree counted the library records')
  await checkInvariants(t, sql)
})

t.test('hostile ids through the routes that walk the trees: 4xx, never 5xx, and nothing changed', async (t) => {
  const { admin, sql } = await buildApp(t)
  const root = (await admin({ method: 'POST', url: PREFIX, body: budgetBody({}) })).json()
  const child = (await admin({ method: 'POST', url: PREFIX, body: budgetBody({ scopeType: 'user', scopeId: 'u1', parentId: root.id }) })).json()
  const archived = (await admin({ method: 'POST', url: PREFIX, body: budgetBody({ scopeId: 'gone' }) })).json()
  t.equal((await admin({ method: 'DELETE', url: `${PREFIX}/${archived.id}` })).statusCode, 204)
  const before = await snapshotTables(sql)
  const nobody = randomUUID()
  const requests = [
    { method: 'GET', url: `${PREFIX}/hierarchy/team/${'x'.repeat(5000)}` },
    { method: 'GET', url: `${PREFIX}/hierarchy/team/%00` },
    { method: 'GET', url: `${PREFIX}/hierarchy/nope/team-a` },
    { method: 'DELETE', url: `${PREFIX}/${nobody}?cascade=true` },
    { method: 'DELETE', url: `${PREFIX}/${archived.id}?cascade=true` },
    { method: 'DELETE', url: `${PREFIX}/not-a-uuid?cascade=true` },
    { method: 'DELETE', url: `${PREFIX}/${root.id}` },
    { method: 'POST', url: PREFIX, body: budgetBody({ parentId: nobody }) },
    { method: 'POST', url: PREFIX, body: budgetBody({ parentId: archived.id }) },
    { method: 'POST', url: PREFIX, body: budgetBody({ parentId: 'not-a-uuid' }) },
    { method: 'PUT', url: `${PREFIX}/${child.id}`, body: { parentId: child.id } },
    { method: 'PUT', url: `${PREFIX}/${root.id}`, body: { parentId: child.id } },
    { method: 'PUT', url: `${PREFIX}/${child.id}`, body: { parentId: archived.id } },
    { method: 'POST', url: `${PREFIX}/${child.id}/usage`, body: { amount: '1', currency: 'USD', source: 's', alsoCountsToward: [nobody] } },
    { method: 'POST', url: `${PREFIX}/${child.id}/usage`, body: { amount: '1', currency: 'USD', source: 's', alsoCountsToward: [archived.id] } },
    { method: 'POST', url: `${PREFIX}/${child.id}/usage`, body: { amount: '1', currency: 'USD', source: 's', alsoCountsToward: ['not-a-uuid'] } },
    { method: 'POST', url: `${PREFIX}/${child.id}/usage`, body: { amount: '1', currency: 'USD', source: 's', alsoCountsToward: Array.from({ length: 500 }, () => randomUUID()) } },
    { method: 'POST', url: `${PREFIX}/${nobody}/usage`, body: { amount: '1', currency: 'USD', source: 's' } },
    { method: 'POST', url: `${PREFIX}/${archived.id}/usage`, body: { amount: '1', currency: 'USD', source: 's' } },
    { method: 'POST', url: `${PREFIX}/${nobody}/refresh-cache` },
    { method: 'POST', url: `${PREFIX}/${archived.id}/refresh-cache` },
    { method: 'GET', url: `${PREFIX}/${nobody}/status` }
  ] as const
  for (const request of requests) {
    const response = await admin(request as never)
    t.ok(response.statusCode >= 400 && response.statusCode < 500, `${request.method} ${request.url.slice(0, 80)} ${JSON.stringify((request as { body?: unknown }).body ?? '').slice(0, 80)}: ${response.statusCode} ${response.body.slice(0, 160)}`)
  }
  t.same(await snapshotTables(sql), before, 'nothing changed')
  const hierarchy = await admin({ method: 'GET', url: `${PREFIX}/hierarchy/team/team-a` })
  t.equal(hierarchy.statusCode, 200)
})

t.test('an update and a delete of one budget at once: each answers 2xx or 4xx, never 5xx', async (t) => {
  const { admin } = await buildApp(t)
  for (let i = 0; i < 10; i++) {
    const budget = (await admin({ method: 'POST', url: PREFIX, body: budgetBody({ scopeId: `t-${i}` }) })).json()
    const [updated, deleted] = await Promise.all([
      admin({ method: 'PUT', url: `${PREFIX}/${budget.id}`, body: { amount: '5' } }),
      admin({ method: 'DELETE', url: `${PREFIX}/${budget.id}` })
    ])
    t.ok(updated.statusCode < 500, `update: ${updated.statusCode} ${updated.body.slice(0, 200)}`)
    t.ok(deleted.statusCode < 500, `delete: ${deleted.statusCode} ${deleted.body.slice(0, 200)}`)
  }
})

t.test('a caller whose scopes name 50 budgets across 50 trees: every one in the line, quickly', async (t) => {
  const { app, admin, sql } = await buildApp(t)
  const ids: string[] = []
  for (let i = 0; i < 50; i++) {
    const root = (await admin({ method: 'POST', url: PREFIX, body: budgetBody({ scopeId: `org-${i}`, scopeType: 'organization' }) })).json()
    const leaf = (await admin({ method: 'POST', url: PREFIX, body: budgetBody({ scopeId: 'team-hot', parentId: root.id }) })).json()
    ids.push(root.id, leaf.id)
  }
  const started = Date.now()
  const rows = await sql`select budget_id::text, scope_matched from budget_line('{team}', '{team-hot}', 'USD', 'gpt-4o', null)`
  const cold = Date.now() - started
  const again = Date.now()
  await sql`select * from budget_line('{team}', '{team-hot}', 'USD', 'gpt-4o', null)`
  const warm = Date.now() - again
  t.same(rows.map((row) => row.budget_id).sort(), [...ids].sort(), 'the 50 leaves and their 50 roots')
  t.equal(rows.filter((row) => row.scope_matched).length, 50)
  t.ok(cold < 3000 && warm < 1000, `cold ${cold} ms, warm ${warm} ms`)
  const status = await app.inject({ method: 'GET', url: `${PREFIX}/${ids[1]}/status`, headers: { authorization: `Bearer ${(await import('./fixtures/app.js')).ADMIN_TOKEN}` } })
  t.equal(status.statusCode, 200)
})
