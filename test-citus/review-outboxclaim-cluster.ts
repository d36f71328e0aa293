// Review of 280874c on the cluster (`npm run test:citus -- test-citus/review-outboxclaim-cluster.ts`): two processes
// deliver crossings of several trees (more due rows than one read of 16) through a flaky webhook and a custom channel,
// each once per channel; a dead claim's late outcome writes nothing; acknowledgements and approvals name their tree.
import Fastify from 'fastify'
import postgres from 'postgres'
import t, { type Test } from 'tap'
import budgets, { type BudgetEvent } from '../lib/index.js'
import { createAlertRepository } from '../lib/alerts/alert-repository.js'
import { distributeOnCitus } from '../lib/kernel/database/citus.js'
import { migrate } from '../lib/kernel/database/migrate.js'
import { createTestSql } from '../test/fixtures/database.js'
import { PREFIX, snapshotTables } from '../test/fixtures/app.js'

/** A webhook receiver that refuses every third request (503), recording each. */
async function startHook (t: Test) {
  const requests: Array<{ eventId: string, ok: boolean }> = []
  const hook = Fastify()
  hook.post('/hook', async (request, reply) => {
    const ok = requests.length % 3 !== 1
    requests.push({ eventId: request.headers['x-budget-event-id'] as string, ok })
    return ok ? { ok: true } : await reply.code(503).send({ down: true })
  })
  const url = `${await hook.listen({ port: 0, host: '127.0.0.1' })}/hook`
  t.teardown(async () => { hook.server.closeAllConnections(); await hook.close() })
  return { url, requests }
}

/** A database distributed on the cluster, and `n` processes on it with the webhook and a custom channel. */
async function cluster (t: Test, n: number, hookUrl: string) {
  const { url, sql } = await createTestSql(t, { max: 4 })
  await migrate(sql)
  await distributeOnCitus(sql)
  const seen: string[] = []
  const apps = []
  for (let i = 0; i < n; i++) {
    const client = postgres(url, { max: 4, onnotice: () => {} })
    const app = Fastify()
    await app.register(budgets, {
      database: client,
      authorize: (request) => (request.headers['x-actor'] as string | undefined) ?? true,
      notifications: {
        channels: { hook: { type: 'webhook', url: hookUrl }, pager: { deliver: async (event: BudgetEvent) => { seen.push((event as { alertId: string }).alertId) } } },
        intervalMs: 0,
        backoffMs: 1,
        maxAttempts: 50
      }
    })
    await app.ready()
    t.teardown(async () => { await app.close(); await client.end({ timeout: 1 }) })
    apps.push(app)
  }
  return { sql, apps, seen }
}

type App = Awaited<ReturnType<typeof cluster>>['apps'][number]

/** A tree of an org and a team, the team's 50% alert crossed: one row per channel, in the org's tree. */
async function crossedTree (app: App, name: string) {
  const org = await app.budgetRegistry.createBudget({ name, scopeType: 'organization', scopeId: name, amount: '100', currency: 'USD', period: 'monthly', startDate: '2024-01-01' })
  const team = await app.budgetRegistry.createBudget({
    name: `${name}-team`, scopeType: 'team', scopeId: `${name}-team`, amount: '1', currency: 'USD', period: 'monthly', startDate: '2024-01-01', parentId: org.id,
    alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['hook', 'pager'] }, { threshold: 95, actions: ['require-approval'], notificationChannels: [] }]
  })
  await app.budgetTracker.recordUsage({ budgetId: team.id, amount: '0.6', currency: 'USD' })
  const [alert] = await app.budgetAlerts.listAlerts(team.id)
  return { rootId: org.id, budgetId: team.id, alertId: alert!.id }
}

t.test('on the cluster: two processes deliver each crossing of ten trees once per channel, through failures and retries', async (t) => {
  const hook = await startHook(t)
  const { sql, apps, seen } = await cluster(t, 2, hook.url)
  const trees = []
  for (let i = 0; i < 10; i++) trees.push(await crossedTree(apps[i % 2]!, `tree-${i}`))
  const [due] = await sql<Array<{ n: number, roots: number }>>`select count(*)::int as n, count(distinct root_id)::int as roots from budget_notification_outbox where status = 'pending'`
  t.same(due, { n: 20, roots: 10 }, 'twenty rows due in ten trees')
  for (let round = 0; round < 60; round++) {
    await Promise.all([apps[0]!.budgetNotifications.deliverDue(4), apps[1]!.budgetNotifications.deliverDue(4)])
    const [left] = await sql<Array<{ n: number }>>`select count(*)::int as n from budget_notification_outbox where status <> 'delivered'`
    if (left!.n === 0) break
  }
  const alertIds = trees.map((tree) => tree.alertId).sort()
  t.same(hook.requests.filter((request) => request.ok).map((request) => request.eventId).sort(), alertIds, 'the webhook answered 2xx once per crossing')
  t.same([...seen].sort(), alertIds, 'the custom channel got each crossing once')
  const rows = await sql<Array<{ alertId: string, channel: string, status: string, attempts: number, claimed: boolean }>>`
    select alert_id as "alertId", channel, status, attempts, claim_id is not null as claimed from budget_notification_outbox`
  t.same(rows.filter((row) => row.status !== 'delivered' || row.claimed), [], 'every row delivered, its claim cleared')
  const hookRows = rows.filter((row) => row.channel === 'hook')
  t.same(hookRows.map((row) => [row.alertId, row.attempts]).sort(),
    alertIds.map((id) => [id, hook.requests.filter((request) => request.eventId === id).length]).sort(), 'each webhook row\'s attempts are the requests made for it')
})

t.test('on the cluster: a dead claim is re-claimed after its deadline and delivered once; its late outcome writes nothing', async (t) => {
  const hook = await startHook(t)
  const { sql, apps, seen } = await cluster(t, 1, hook.url)
  const tree = await crossedTree(apps[0]!, 'solo')
  const repository = createAlertRepository(sql)
  const dead = await sql.begin(async (tx) => await createAlertRepository(tx).claimDueNotification(300))
  t.ok(dead, 'the dead process claimed a row')
  t.equal(dead!.rootId, tree.rootId, 'in the tree of the crossing')
  await new Promise((resolve) => setTimeout(resolve, 400))
  let delivered = 0
  for (let round = 0; round < 10; round++) {
    delivered += (await apps[0]!.budgetNotifications.deliverDue()).delivered
    const [left] = await sql<Array<{ n: number }>>`select count(*)::int as n from budget_notification_outbox where status <> 'delivered'`
    if (left!.n === 0) break
  }
  t.equal(delivered, 2, 'both rows delivered')
  t.equal(await repository.markAttemptFailed(dead!, 'the dead process woke up', 0), false, 'the late failure is refused')
  t.equal(await repository.markDelivered(dead!), false, 'and the late success')
  const rows = await sql<Array<{ status: string, attempts: number, lastError: string | null }>>`select status, attempts, last_error as "lastError" from budget_notification_outbox`
  t.same(rows, [{ status: 'delivered', attempts: 1, lastError: null }, { status: 'delivered', attempts: 1, lastError: null }].slice(0, rows.length))
  t.equal(rows.length, 2)
  t.same(seen, [tree.alertId], 'the custom channel once')
})

t.test('on the cluster: approvals are audited once in their tree; a wrong acknowledgement pair and a bad approval are 4xx and write nothing', async (t) => {
  const hook = await startHook(t)
  const { sql, apps } = await cluster(t, 2, hook.url)
  const a = await crossedTree(apps[0]!, 'tree-a')
  const b = await crossedTree(apps[1]!, 'tree-b')
  const ack = async (app: App, budgetId: string, alertId: string, actor: string) =>
    await app.inject({ method: 'POST', url: `${PREFIX}/${budgetId}/alerts/${alertId}/acknowledge`, headers: { 'x-actor': actor } })

  const before = await snapshotTables(sql)
  for (const [budgetId, alertId, what] of [[a.budgetId, b.alertId, 'another tree\'s alert'], [a.rootId, a.alertId, 'the tree\'s root, not the alert\'s budget'],
    ['00000000-0000-4000-8000-000000000000', a.alertId, 'no such budget']] as const) {
    const response = await ack(apps[0]!, budgetId, alertId, 'mallory')
    t.same({ status: response.statusCode, code: response.json().code }, { status: 404, code: 'BUDGET_ERR_ALERT_NOT_FOUND' }, `${what}: ${response.body.slice(0, 300)}`)
  }
  t.same(await snapshotTables(sql), before, 'wrong pairs wrote nothing')

  const approved = await Promise.all([
    apps[0]!.inject({ method: 'POST', url: `${PREFIX}/${b.budgetId}/approvals`, headers: { 'x-actor': 'approver' }, payload: { amount: '0.5', reason: 'release' } }),
    apps[1]!.inject({ method: 'POST', url: `${PREFIX}/${b.rootId.toUpperCase()}/approvals`, headers: { 'x-actor': 'approver' }, payload: { amount: '2' } })
  ])
  t.same(approved.map((response) => response.statusCode), [201, 201], approved.map((response) => response.body).join('\n'))
  const approvals = await sql<Array<{ id: string, rootId: string }>>`select id, root_id as "rootId" from budget_approvals order by id`
  const approveAudits = await sql<Array<{ approvalId: string, rootId: string }>>`
    select after->>'approvalId' as "approvalId", root_id as "rootId" from budget_audit_log where action = 'approve'`
  t.same(approvals.map((approval) => ({ rootId: approval.rootId, audits: approveAudits.filter((entry) => entry.approvalId === approval.id).map((entry) => entry.rootId) })),
    [{ rootId: b.rootId, audits: [b.rootId] }, { rootId: b.rootId, audits: [b.rootId] }], 'each approval in its tree, audited once there')
  const snapshot = await snapshotTables(sql)
  const bad = await Promise.all([
    apps[0]!.inject({ method: 'POST', url: `${PREFIX}/${b.budgetId}/approvals`, headers: { 'x-actor': 'approver' }, payload: { amount: '0' } }),
    apps[0]!.inject({ method: 'POST', url: `${PREFIX}/00000000-0000-4000-8000-000000000000/approvals`, headers: { 'x-actor': 'approver' }, payload: { amount: '1' } }),
    apps[0]!.inject({ method: 'POST', url: `${PREFIX}/${b.budgetId}/approvals`, headers: { 'x-actor': 'approver' }, payload: { amount: '1', expiresAt: '2001-01-01T00:00:00Z' } })
  ])
  t.same(bad.map((response) => response.statusCode >= 400 && response.statusCode < 500), [true, true, true], bad.map((response) => `${response.statusCode} ${response.body.slice(0, 200)}`).join('\n'))
  t.same(await snapshotTables(sql), snapshot, 'refused approvals wrote nothing')
})

t.test('on the cluster: an acknowledgement stands and is audited once, in its tree', async (t) => {
  const hook = await startHook(t)
  const { sql, apps } = await cluster(t, 2, hook.url)
  const a = await crossedTree(apps[0]!, 'tree-a')
  const ack = async (app: App, budgetId: string, alertId: string, actor: string) =>
    await app.inject({ method: 'POST', url: `${PREFIX}/${budgetId}/alerts/${alertId}/acknowledge`, headers: { 'x-actor': actor } })
  const first = await ack(apps[0]!, a.budgetId, a.alertId, 'alice')
  t.equal(first.statusCode, 200, first.body)
  const again = await ack(apps[1]!, a.budgetId, a.alertId, 'bob')
  t.equal(again.statusCode, 200, again.body)
  t.same({ by: again.json().acknowledgedBy, at: again.json().acknowledgedAt }, { by: 'alice', at: first.json().acknowledgedAt }, 'the first acknowledgement stands')
  const audits = await sql<Array<{ rootId: string, actor: string }>>`select root_id as "rootId", actor from budget_audit_log where action = 'acknowledge'`
  t.same(audits, [{ rootId: a.rootId, actor: 'alice' }], 'one audit entry, in the tree')

})
