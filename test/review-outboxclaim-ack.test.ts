// Review of 280874c (acknowledge: the budget's root read first, `least(acknowledged_at, now())`, the alert read back
// after): the first acknowledger and its time stand, one audit entry, 404 for a wrong pair, approvals audited once.
import Fastify from 'fastify'
import postgres from 'postgres'
import t from 'tap'
import budgets from '../lib/index.js'
import { PREFIX, snapshotTables } from './fixtures/app.js'
import { createTestDatabase } from './fixtures/database.js'

interface Teardown { teardown: (fn: () => unknown) => void }

/** An app (a process) on `url`: its connections carry `name` in pg_stat_activity; the actor is the x-actor header. */
async function startApp (t: Teardown, url: string, name: string) {
  const sql = postgres(url, { max: 10, onnotice: () => {}, connection: { application_name: name } })
  const app = Fastify()
  await app.register(budgets, {
    database: sql,
    authorize: (request) => (request.headers['x-actor'] as string | undefined) ?? true,
    notifications: { channels: { email: { type: 'log' } }, intervalMs: 0 }
  })
  await app.ready()
  t.teardown(async () => { await app.close(); await sql.end({ timeout: 1 }) })
  return { app, sql }
}

type App = Awaited<ReturnType<typeof startApp>>['app']

/** A budget of 1 USD spent to 0.6: its 50% alert crossed. */
async function crossed (app: App, team: string) {
  const budget = await app.budgetRegistry.createBudget({
    name: team, scopeType: 'team', scopeId: team, amount: '1', currency: 'USD', period: 'monthly', startDate: '2024-01-01',
    alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['email'] }, { threshold: 95, actions: ['require-approval'], notificationChannels: [] }]
  })
  await app.budgetTracker.recordUsage({ budgetId: budget.id, amount: '0.6', currency: 'USD' })
  const [alert] = await app.budgetAlerts.listAlerts(budget.id)
  return { budgetId: budget.id, alertId: alert!.id }
}

const ack = async (app: App, budgetId: string, alertId: string, actor: string) =>
  await app.inject({ method: 'POST', url: `${PREFIX}/${budgetId}/alerts/${alertId}/acknowledge`, headers: { 'x-actor': actor } })

async function waitFor (check: () => Promise<boolean>, what: string) {
  for (let i = 0; i < 200; i++) {
    if (await check()) return
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  throw new Error(`timed out waiting for ${what}`)
}

t.test('an acknowledgement whose statement started first but reached the row second does not rewrite the first acknowledger\'s time', async (t) => {
  const url = await createTestDatabase(t)
  const slow = await startApp(t, url, 'review-ack-slow')
  const fast = await startApp(t, url, 'review-ack-fast')
  const { budgetId, alertId } = await crossed(fast.app, 'platform')
  // The slow process's statements on the alert history are held 400 ms after they start, before they reach a row:
  // what a busy server's scheduler, or a wait on a relation lock, does to a statement.
  await fast.sql.unsafe(`
    create function review_slow_statement() returns trigger language plpgsql as $$
    begin
      if current_setting('application_name') = 'review-ack-slow' then perform pg_sleep(0.4); end if;
      return null;
    end $$;
    create trigger review_slow_statement before update on budget_alert_history for each statement execute function review_slow_statement();`)

  const second = ack(slow.app, budgetId, alertId, 'started-first')
  await waitFor(async () => (await fast.sql`select 1 from pg_stat_activity where application_name = 'review-ack-slow' and wait_event = 'PgSleep'`).length > 0, 'the slow statement')
  const first = await ack(fast.app, budgetId, alertId, 'reached-first')
  t.equal(first.statusCode, 200)
  const firstBody = first.json()
  t.equal(firstBody.acknowledgedBy, 'reached-first', 'the fast acknowledgement is the first: its response says so')
  const late = await second
  t.equal(late.statusCode, 200)
  const [stored] = await fast.app.budgetAlerts.listAlerts(budgetId)
  t.same({ by: stored!.acknowledgedBy, at: stored!.acknowledgedAt }, { by: firstBody.acknowledgedBy, at: firstBody.acknowledgedAt },
    'the first acknowledger and the time its response gave stand')
  t.same({ by: late.json().acknowledgedBy, at: late.json().acknowledgedAt }, { by: firstBody.acknowledgedBy, at: firstBody.acknowledgedAt },
    'the late acknowledger is answered with the first one\'s acknowledgement')
})

t.test('two acknowledgements at once: exactly one audit entry', async (t) => {
  const url = await createTestDatabase(t)
  const { app, sql } = await startApp(t, url, 'review-ack-one')
  const { budgetId, alertId } = await crossed(app, 'platform')
  // A third party holds the alert's row (as a crossing's transaction does when it resolves or re-reads it), so both
  // acknowledgements are under way when it lets go.
  const holder = postgres(url, { max: 1, onnotice: () => {} })
  t.teardown(async () => await holder.end({ timeout: 1 }))
  let release: () => void = () => {}
  const released = new Promise<void>((resolve) => { release = resolve })
  let locked: () => void = () => {}
  const isLocked = new Promise<void>((resolve) => { locked = resolve })
  const holding = holder.begin(async (tx) => {
    await tx`select id from budget_alert_history where id = ${alertId} for update`
    locked()
    await released
  })
  await isLocked
  const answers = [ack(app, budgetId, alertId, 'alice'), ack(app, budgetId, alertId, 'bob')]
  await waitFor(async () => (await sql`select 1 from pg_stat_activity where application_name = 'review-ack-one' and wait_event_type = 'Lock'`).length === 2, 'both acknowledgements to wait')
  release()
  await holding
  const responses = await Promise.all(answers)
  t.same(responses.map((response) => response.statusCode), [200, 200])
  const audited = await sql<Array<{ actor: string }>>`select actor from budget_audit_log where action = 'acknowledge' order by id`
  t.equal(audited.length, 1, `one audit entry 'acknowledge' (got: ${JSON.stringify(audited.map((row) => row.actor))})`)
  const [stored] = await app.budgetAlerts.listAlerts(budgetId)
  t.equal(audited[0]?.actor, stored!.acknowledgedBy, 'the entry names the acknowledger that stands')
})

t.test('many acknowledgers at once on many alerts: answers and row agree on one acknowledger and time, one audit entry per alert', async (t) => {
  const url = await createTestDatabase(t)
  const { app, sql } = await startApp(t, url, 'review-ack-many')
  const alerts = []
  for (let i = 0; i < 12; i++) alerts.push(await crossed(app, `team-${i}`))
  const disagreements: string[] = []
  for (const { budgetId, alertId } of alerts) {
    const responses = await Promise.all(Array.from({ length: 8 }, async (_, i) => await ack(app, budgetId, alertId, `actor-${i}`)))
    t.same([...new Set(responses.map((response) => response.statusCode))], [200])
    const [stored] = await app.budgetAlerts.listAlerts(budgetId)
    const seen = new Set(responses.map((response) => `${response.json().acknowledgedBy as string}@${response.json().acknowledgedAt as string}`))
    seen.add(`${stored!.acknowledgedBy!}@${stored!.acknowledgedAt!}`)
    if (seen.size !== 1) disagreements.push([...seen].join(' / '))
  }
  t.same(disagreements, [], 'each alert: one acknowledger and one time, in every answer and in the row')
  const entries = await sql<Array<{ n: number }>>`select count(*)::int as n from budget_audit_log where action = 'acknowledge' group by after->>'alertId'`
  t.same(entries.filter((row) => row.n !== 1).length, 0, `one audit entry per acknowledged alert (counts: ${JSON.stringify(entries.map((row) => row.n))})`)
})

t.test('a wrong budget/alert pair is 404 BUDGET_ERR_ALERT_NOT_FOUND and writes nothing', async (t) => {
  const url = await createTestDatabase(t)
  const { app, sql } = await startApp(t, url, 'review-ack-404')
  const a = await crossed(app, 'team-a')
  const b = await crossed(app, 'team-b')
  // a child in a's tree: same root, another budget
  const child = await app.budgetRegistry.createBudget({ name: 'child', scopeType: 'user', scopeId: 'u1', amount: '1', currency: 'USD', period: 'monthly', startDate: '2024-01-01', parentId: a.budgetId })
    const before = await snapshotTables(sql)
  const pairs: Array<[string, string, string]> = [
    [a.budgetId, b.alertId, 'another tree\'s alert'],
    [child.id, a.alertId, 'the same tree, another budget'],
    ['00000000-0000-4000-8000-000000000000', a.alertId, 'no such budget'],
    [a.budgetId, '00000000-0000-4000-8000-000000000000', 'no such alert'],
    ['not-a-uuid', a.alertId, 'a budget id that is no uuid'],
    [a.budgetId, 'not-a-uuid', 'an alert id that is no uuid'],
    [a.budgetId.toUpperCase(), b.alertId, 'another tree\'s alert, the budget in capitals']
  ]
  for (const [budgetId, alertId, what] of pairs) {
    const response = await ack(app, budgetId, alertId, 'mallory')
    t.same({ status: response.statusCode, code: response.json().code }, { status: 404, code: 'BUDGET_ERR_ALERT_NOT_FOUND' }, what)
  }
  t.same(await snapshotTables(sql), before, 'nothing written')
  const upper = await ack(app, a.budgetId.toUpperCase(), a.alertId.toUpperCase(), 'carol')
  t.same({ status: upper.statusCode, by: upper.json().acknowledgedBy }, { status: 200, by: 'carol' }, 'the right pair in capitals acknowledges')
})

t.test('approvals: each audited once with the budget\'s root; bad input is 4xx and writes nothing', async (t) => {
  const url = await createTestDatabase(t)
  const { app, sql } = await startApp(t, url, 'review-approve')
  const root = await crossed(app, 'team-a')
  const child = await app.budgetRegistry.createBudget({ name: 'child', scopeType: 'user', scopeId: 'u1', amount: '1', currency: 'USD', period: 'monthly', startDate: '2024-01-01', parentId: root.budgetId })
  const approve = async (budgetId: string, body: unknown) => await app.inject({ method: 'POST', url: `${PREFIX}/${budgetId}/approvals`, headers: { 'x-actor': 'approver' }, payload: body as Record<string, unknown> })
  const made = await Promise.all([
    approve(root.budgetId, { amount: '0.5' }), approve(child.id, { amount: '0.25' }), approve(child.id.toUpperCase(), { amount: '0.125' }), approve(root.budgetId, { amount: '1' })
  ])
  t.same(made.map((response) => response.statusCode), [201, 201, 201, 201], made.map((response) => response.body).join('\n'))
  const rows = await sql<Array<{ id: string, rootId: string, budgetId: string, audits: number, auditRoot: string | null }>>`
    select a.id, a.root_id as "rootId", a.budget_id as "budgetId",
           (select count(*)::int from budget_audit_log l where l.action = 'approve' and l.after->>'approvalId' = a.id::text) as audits,
           (select l.root_id::text from budget_audit_log l where l.action = 'approve' and l.after->>'approvalId' = a.id::text limit 1) as "auditRoot"
    from budget_approvals a`
  t.equal(rows.length, 4)
  for (const row of rows) {
    t.same({ root: row.rootId, audits: row.audits, auditRoot: row.auditRoot }, { root: root.budgetId, audits: 1, auditRoot: root.budgetId }, `approval of ${row.budgetId === root.budgetId ? 'the root' : 'the child'}`)
  }
  const before = await snapshotTables(sql)
  const bad: Array<[string, unknown]> = [
    [root.budgetId, { amount: '0' }], [root.budgetId, { amount: '-1' }], [root.budgetId, { amount: 'abc' }], [root.budgetId, { amount: '1e400' }],
    [root.budgetId, { amount: '1', expiresAt: '2000-01-01T00:00:00Z' }], [root.budgetId, { amount: '1', expiresAt: 'tomorrow' }],
    [root.budgetId, { amount: '1', reason: 'x'.repeat(100_000) }], [root.budgetId, { amount: '1', reason: 'nul\u0000byte' }],
    ['00000000-0000-4000-8000-000000000000', { amount: '1' }], ['not-a-uuid', { amount: '1' }], [root.budgetId, {}],
    [root.budgetId, { amount: '99999999999999999999999999999999999999' }]
  ]
  const statuses: string[] = []
  for (const [budgetId, body] of bad) {
    const response = await approve(budgetId, body)
    if (response.statusCode < 400 || response.statusCode >= 500) statuses.push(`${JSON.stringify(body).slice(0, 60)} -> ${response.statusCode} ${response.body.slice(0, 200)}`)
  }
  t.same(statuses, [], 'every bad approval is a 4xx')
  t.same(await snapshotTables(sql), before, 'and wrote nothing')
})
