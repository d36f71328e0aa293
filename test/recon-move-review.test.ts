// Adversarial review of budget_recon_move_correction (sql/functions/reconciliation.sql): a moved correction
// writes its change as one more record through budget_record_spend. An earlier form (the old allocations taken
// out and their windows refreshed, then the new amount recorded) failed the first four: an alert fired at an
// intermediate spend, a move that fits refused at one, and a window row made after the rows locked first.
import t from 'tap'
import { buildApp, PREFIX, snapshotTables, type TestApp } from './fixtures/app.js'
import { TWO_DAYS_AGO, YESTERDAY, importCsv, ok } from './fixtures/reconciliation.js'
import { findViolations } from './fixtures/invariants.js'

// A monthly window stepped from two days ago: it holds yesterday's correction and is the window of now.
async function budget (app: TestApp, overrides: Record<string, unknown> = {}): Promise<string> {
  const created = await ok<{ id: string }>(app, 'POST', '', {
    name: 'Team budget', scopeType: 'team', scopeId: 'team-a', amount: '100', currency: 'USD', period: 'monthly', startDate: TWO_DAYS_AGO, ...overrides
  }, 201)
  return created.id
}

t.test('a negative correction moved in the current window fires no alert its spend never reaches', async (t) => {
  const app = await buildApp(t)
  const team = await budget(app)
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: team, trueUp: true }, 201)
  await ok(app, 'POST', `/${team}/usage`, { amount: '85', currency: 'USD', occurredAt: `${YESTERDAY}T01:00:00Z`, metadata: { requestId: 'a' } }, 201)
  // The provider billed 70: a correction of -15, the window at 70.
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,70,USD`])
  t.match(await ok(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: team }), { status: 'created', amount: '-15.0000000000' })
  // An 80% alert that blocks, added now: the window is at 70, so it is not reached and nothing is recorded.
  await ok(app, 'PUT', `/${team}`, { alerts: [{ threshold: 80, actions: ['notify', 'block-all'], notificationChannels: ['ops'] }] })
  t.equal((await app.sql`select count(*)::int as n from budget_alert_history where budget_id = ${team}`)[0]!.n, 0, 'no crossing at 70 of 100')

  // The provider's bill moves to 72: the correction moves from -15 to -13, the window from 70 to 72.
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,72,USD`])
  t.match(await ok(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: team }), { status: 'adjusted', amount: '-13.0000000000' })
  const [window] = await app.sql`select current_amount::text as spent from budget_status_cache where budget_id = ${team}`
  t.equal(window!.spent, '72.0000000000', 'the window is at 72')
  const history = await app.sql`select threshold::text as threshold, spent::text as spent, actions from budget_alert_history where budget_id = ${team}`
  t.same(history.map((row) => ({ ...row })), [], 'no 80% crossing: the spend went from 70 to 72 and never reached 80')
  const outbox = await app.sql`select count(*)::int as n from budget_notification_outbox o join budget_alert_history h on h.id = o.alert_id where h.budget_id = ${team}`
  t.equal(outbox[0]!.n, 0, 'no notification queued')
  t.same(await findViolations(app.sql), [])
})

t.test('a move that fits is made even when the window without the old (negative) correction would not fit numeric(28,10)', async (t) => {
  const app = await buildApp(t)
  const team = await budget(app, { amount: '999999999999999999' })
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: team, trueUp: true }, 201)
  await ok(app, 'POST', `/${team}/usage`, { amount: '900000000000000000', currency: 'USD', occurredAt: `${YESTERDAY}T01:00:00Z`, metadata: { requestId: 'a' } }, 201)
  // Billed 4e17: a correction of -5e17, the window at 4e17.
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,400000000000000000,USD`])
  t.match(await ok(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: team }), { status: 'created', amount: '-500000000000000000.0000000000' })
  // More spend in the same window, today (not the corrected day): the window at 9e17.
  await ok(app, 'POST', `/${team}/usage`, { amount: '500000000000000000', currency: 'USD', metadata: { requestId: 'b' } }, 201)
  // The bill moves to 4.5e17: the correction to -4.5e17, the window to 9.5e17, which fits.
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,450000000000000000,USD`])
  const response = await app.admin({ method: 'POST', url: `${PREFIX}/reconciliation/true-up`, body: { provider: 'mistral', day: YESTERDAY, budgetId: team } })
  t.equal(response.statusCode, 200, `the move to a window of 9.5e17 is made: ${response.body}`)
  const [window] = await app.sql`select current_amount::text as spent from budget_status_cache where budget_id = ${team}`
  t.equal(window!.spent, '950000000000000000.0000000000')
  t.same(await findViolations(app.sql), [])
})

const sleep = async (ms: number) => await new Promise((resolve) => setTimeout(resolve, ms))

async function waitForLockWaiters (app: TestApp, count: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const [row] = await app.sql<Array<{ n: number }>>`select count(*)::int as n from pg_stat_activity
      where datname = current_database() and wait_event_type = 'Lock' and pid <> pg_backend_pid()`
    if (row!.n >= count) return
    await sleep(25)
  }
  throw new Error(`never ${count} sessions waiting on a lock`)
}

t.test('a move after a period change, beside usage that makes the missing window row: no deadlock', async (t) => {
  const app = await buildApp(t)
  const parent = await budget(app, { name: 'Org', scopeType: 'organization', scopeId: 'acme', amount: '1000', period: 'annual' })
  // A child before its parent in the lock order (budget_id): children are made until one is.
  let child = ''
  for (let n = 0; child === '' || child > parent; n++) child = await budget(app, { name: `Team ${n}`, scopeId: `team-${n}`, parentId: parent, amount: '1000' })
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: child, trueUp: true }, 201)
  await ok(app, 'POST', `/${child}/usage`, { amount: '8', currency: 'USD', occurredAt: `${YESTERDAY}T01:00:00Z`, metadata: { requestId: 'a' } }, 201)
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,10,USD`])
  const created = await ok<{ usageId: string }>(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: child })
  // The child becomes daily: its monthly window row goes (window-changes.sql); today's daily row is made
  // (the definition's alerts follow it), yesterday's is not.
  await ok(app, 'PUT', `/${child}`, { period: 'daily' })
  t.same(await findViolations(app.sql), [], 'the tables keep the rule before the move')
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,11,USD`])

  // The move writes its change as one more record through budget_record_spend, which takes the window rows
  // (and makes the missing one) in the lock order, as any usage does. A session holds the correction's row so
  // the move is under way (its advisory lock taken, waiting there) while usage on the child makes yesterday's
  // daily row; then both run on, each locking in the same order.
  const blocker = await app.sql.reserve()
  const usage = await app.sql.reserve()
  t.teardown(() => { blocker.release(); usage.release() })
  await blocker`begin`
  await blocker`select 1 from budget_recon_corrections where usage_id = ${created.usageId} for update`
  const move = app.admin({ method: 'POST', url: `${PREFIX}/reconciliation/true-up`, body: { provider: 'mistral', day: YESTERDAY, budgetId: child } })
  await waitForLockWaiters(app, 1)
  await usage`begin`
  const recorded = usage`insert into budget_usage_records (budget_id, amount, currency, occurred_at, metadata)
                         values (${child}, 1, 'USD', ${`${YESTERDAY}T10:00:00Z`}, '{"requestId":"b"}')`.then(() => null, (error: { code?: string, message: string }) => error)
  await blocker`rollback`
  await sleep(100)
  await recorded
  await usage`commit`
  const [moved, usageError] = await Promise.all([move, recorded])
  t.equal(moved.statusCode, 200, moved.body)
  t.equal(usageError?.code, undefined, `the usage record is not a deadlock victim: ${usageError?.message ?? ''}`)
  t.same(await findViolations(app.sql), [])
})

t.test('the same, through POST /{id}/usage: no deadlock counted by PostgreSQL', async (t) => {
  const app = await buildApp(t)
  const parent = await budget(app, { name: 'Org', scopeType: 'organization', scopeId: 'acme', amount: '1000', period: 'annual' })
  // A child before its parent in the lock order (budget_id): children are made until one is.
  let child = ''
  for (let n = 0; child === '' || child > parent; n++) child = await budget(app, { name: `Team ${n}`, scopeId: `team-${n}`, parentId: parent, amount: '1000' })
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: child, trueUp: true }, 201)
  await ok(app, 'POST', `/${child}/usage`, { amount: '8', currency: 'USD', occurredAt: `${YESTERDAY}T01:00:00Z`, metadata: { requestId: 'a' } }, 201)
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,10,USD`])
  const created = await ok<{ usageId: string }>(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: child })
  // The child becomes daily: its monthly window row goes (window-changes.sql); today's daily row is made
  // (the definition's alerts follow it), yesterday's is not.
  await ok(app, 'PUT', `/${child}`, { period: 'daily' })
  t.same(await findViolations(app.sql), [], 'the tables keep the rule before the move')
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,11,USD`])

  // As above: the move under way, waiting on the correction's row, while the usage is recorded.
  const blocker = await app.sql.reserve()
  t.teardown(() => { blocker.release() })
  await blocker`begin`
  await blocker`select 1 from budget_recon_corrections where usage_id = ${created.usageId} for update`
  const move = app.admin({ method: 'POST', url: `${PREFIX}/reconciliation/true-up`, body: { provider: 'mistral', day: YESTERDAY, budgetId: child } })
  await waitForLockWaiters(app, 1)
  const [deadlocks] = await app.sql<Array<{ n: number }>>`select deadlocks::int as n from pg_stat_database where datname = current_database()`
  const started = Date.now()
  const recorded = app.admin({ method: 'POST', url: `${PREFIX}/${child}/usage`, body: { amount: '1', currency: 'USD', occurredAt: `${YESTERDAY}T10:00:00Z`, metadata: { requestId: 'b' } } })
  await sleep(50)
  await blocker`rollback`
  const [moved, usage201] = await Promise.all([move, recorded])
  const elapsed = Date.now() - started
  t.equal(moved.statusCode, 200, moved.body)
  t.equal(usage201.statusCode, 201, usage201.body)
  let counted = deadlocks!.n
  for (let i = 0; i < 60 && counted === deadlocks!.n; i++) {
    await sleep(250)
    counted = (await app.sql<Array<{ n: number }>>`select deadlocks::int as n from pg_stat_database where datname = current_database()`)[0]!.n
  }
  t.equal(counted, deadlocks!.n, `no deadlock in the database (usage answered after ${elapsed} ms)`)
  t.same(await findViolations(app.sql), [])
})

t.test('moves past the money range, either way, on the budget or its parent: a 4xx that changes nothing', async (t) => {
  const app = await buildApp(t)
  const parent = await budget(app, { name: 'Org', scopeType: 'organization', scopeId: 'acme', amount: '999999999999999999', period: 'annual' })
  const team = await budget(app, { parentId: parent, amount: '999999999999999999' })
  const sibling = await budget(app, { name: 'Sibling', scopeId: 'team-b', parentId: parent, amount: '999999999999999999' })
  // The parent's window holds the sibling's 6e17 today besides the team's spend.
  await ok(app, 'POST', `/${sibling}/usage`, { amount: '600000000000000000', currency: 'USD', metadata: { requestId: 's' } }, 201)
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: team, trueUp: true }, 201)
  await ok(app, 'POST', `/${team}/usage`, { amount: '100000000000000000', currency: 'USD', occurredAt: `${YESTERDAY}T01:00:00Z`, metadata: { requestId: 'a' } }, 201)
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,200000000000000000,USD`])
  t.match(await ok(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: team }), { status: 'created' })
  const bills = [
    ['the team fits, the parent (6e17 more) does not', '450000000000000000'],
    ['the team\'s window past 10^18', '1200000000000000000'],
    ['the correction itself past 10^18', '3000000000000000000'],
    ['the correction below -10^18', '-2000000000000000000'],
  ]
  for (const [label, bill] of bills) {
    await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,${bill},USD`])
    const before = await snapshotTables(app.sql)
    const response = await app.admin({ method: 'POST', url: `${PREFIX}/reconciliation/true-up`, body: { provider: 'mistral', day: YESTERDAY, budgetId: team } })
    t.ok(response.statusCode >= 400 && response.statusCode < 500, `${label}: a 4xx (${response.statusCode} ${response.body})`)
    t.same(await snapshotTables(app.sql), before, `${label}: nothing changed`)
  }
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,0,USD`])
  t.match(await ok(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: team }), { status: 'adjusted', amount: '-100000000000000000.0000000000' })
  t.same(await findViolations(app.sql), [], 'a move to a bill of 0 keeps the rule')
})

t.test('exploratory: a window row deleted before the move (ended daily window, current monthly window) is made again at its sum; no alert in the ended one', async (t) => {
  const app = await buildApp(t)
  const alerts = [{ threshold: 50, actions: ['notify'], notificationChannels: ['ops'] }]
  const parent = await budget(app, { name: 'Org', scopeType: 'organization', scopeId: 'acme', amount: '20', alerts })
  const daily = await budget(app, { parentId: parent, period: 'daily', amount: '10', alerts })
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: daily, trueUp: true }, 201)
  await ok(app, 'POST', `/${daily}/usage`, { amount: '1', currency: 'USD', occurredAt: `${YESTERDAY}T01:00:00Z`, metadata: { requestId: 'a' } }, 201)
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,2,USD`])
  await ok(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: daily })
  await app.sql`delete from budget_status_cache where budget_id in (${daily}, ${parent})`
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,9,USD`])
  t.match(await ok(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: daily }), { status: 'adjusted', amount: '8.0000000000' })
  const rows = await app.sql`select budget_id, current_amount::text as spent, usage_count::int as calls from budget_status_cache order by budget_id = ${parent}`
  // three records each: the usage, the correction and its adjustment
  t.same(rows.map((row) => [row.spent, row.calls]), [['9.0000000000', 3], ['9.0000000000', 3]], 'both rows made again at their sums')
  const history = await app.sql`select budget_id from budget_alert_history`
  t.same(history.map((row) => row.budget_id), [], 'no alert: the parent\'s current window is at 45%, the daily window (90%) has ended')
  t.same(await findViolations(app.sql), [])
})

t.test('exploratory: a child moved to another parent after its correction was written, then its correction moved', async (t) => {
  const app = await buildApp(t)
  const root = await budget(app, { name: 'Root', scopeType: 'organization', scopeId: 'acme', amount: '1000', period: 'annual' })
  const p1 = await budget(app, { name: 'P1', scopeType: 'team', scopeId: 'p1', parentId: root, amount: '1000', period: 'annual' })
  const p2 = await budget(app, { name: 'P2', scopeType: 'team', scopeId: 'p2', parentId: root, amount: '1000', period: 'annual' })
  const team = await budget(app, { name: 'Team', scopeType: 'project', scopeId: 'proj', parentId: p1, amount: '1000' })
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: team, trueUp: true }, 201)
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'account', value: 'acme', budgetId: p2, trueUp: true }, 201)
  await ok(app, 'POST', `/${team}/usage`, { amount: '8', currency: 'USD', occurredAt: `${YESTERDAY}T01:00:00Z`, metadata: { requestId: 'a' } }, 201)
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,10,USD`, `${YESTERDAY},mistral,acme,proj_b,5,USD`])
  await ok(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: team })
  await ok(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: p2 })
  const moved = await app.admin({ method: 'PUT', url: `${PREFIX}/${team}`, body: { parentId: p2 } })
  t.comment(`reparent: ${moved.statusCode}`)
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,12,USD`, `${YESTERDAY},mistral,acme,proj_b,5,USD`])
  const outcome = await ok<{ status: string }>(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: team })
  t.equal(outcome.status, 'adjusted')
  t.same(await findViolations(app.sql), [])
  const lines = (await ok<{ lines: Array<{ budgetId: string, difference: string, correction: string }> }>(app, 'GET', `/reconciliation?from=${YESTERDAY}&to=${YESTERDAY}`)).lines
  t.comment(JSON.stringify(lines.map((l) => [l.budgetId === team ? 'team' : 'p2', l.difference, l.correction])))
})
