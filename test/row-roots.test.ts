// Every row that belongs to a budget carries its tree's root, and every key includes it
// (sql/migrations/010_row_roots.sql): filled in place on an existing database, kept by every writer, checked by
// the keys; on plain PostgreSQL the keys one database alone can hold stay beside them (*_across_trees).
import { randomUUID } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import t from 'tap'
import { distributeOnCitus } from '../lib/kernel/database/citus.js'
import { migrate } from '../lib/kernel/database/migrate.js'
import { PREFIX, budgetRequest, buildApp, snapshotTables } from './fixtures/app.js'
import { misrootedRows, sqlBeforeMigration } from './fixtures/budget-roots.js'
import { createTestSql } from './fixtures/database.js'

const NIL = '00000000-0000-0000-0000-000000000000'

t.test('the migration fills every row\'s root in place from its budget (the nil root for a row of no budget), and runs again harmlessly', async (t) => {
  const { sql } = await createTestSql(t, { max: 1 })
  await migrate(sql, await sqlBeforeMigration(t, 10))
  // an older database: no function files, so no trigger fills a budget's root
  const budget = async (name: string, parent: { id: string, root_id: string } | null) => {
    const id = randomUUID()
    await sql`insert into budget_definitions (id, root_id, name, scope_type, scope_id, amount, currency, period, start_date, parent_id)
              values (${id}, ${parent?.root_id ?? id}, ${name}, 'team', ${name}, 100, 'USD', 'monthly', '2024-01-01', ${parent?.id ?? null})`
    return { id, root_id: parent?.root_id ?? id }
  }
  const org = await budget('org', null)
  const team = await budget('team', org)
  const lone = await budget('lone', null)
  const start = '2024-01-01T00:00:00Z'
  const [record] = await sql`insert into budget_usage_records (budget_id, amount, currency) values (${team.id}, 1, 'USD') returning id`
  await sql`insert into budget_usage_records (budget_id, amount, currency, idempotency_key) values (null, 2, 'USD', 'unbudgeted-1')`
  await sql`insert into budget_usage_allocations (budget_id, usage_id, amount, occurred_at) values (${team.id}, ${record!.id}, 1, now()), (${org.id}, ${record!.id}, 1, now())`
  await sql`insert into budget_status_cache (budget_id, period_start, period_end) values (${lone.id}, ${start}, '2024-02-01T00:00:00Z')`
  await sql`insert into budget_reservations (id, budget_id, period_start, amount, scope_matched, scope_rank, currency, request_id, expires_at)
            values (gen_random_uuid(), ${team.id}, ${start}, 1, true, 1, 'USD', 'r-1', now())`
  const [alert] = await sql`insert into budget_alert_history (budget_id, period_start, threshold, basis, actions, spent, limit_amount)
                            values (${team.id}, ${start}, 50, 'current', '{notify}', 50, 100) returning id`
  await sql`insert into budget_notification_outbox (alert_id, channel) values (${alert!.id}, 'email')`
  await sql`insert into budget_audit_log (budget_id, action, actor) values (${lone.id}, 'create', 'a'), (null, 'set-exchange-rate', 'a')`
  await sql`insert into budget_decision_log (at, request_id, api, outcome, code, model, estimate, currency, budget_id, budget_name)
            values (now(), 'd-1', 'chat', 'refused', 'budget_exceeded', 'm', 1, 'USD', ${team.id}, 'team'),
                   (now(), 'd-2', 'chat', 'refused', 'budget_exceeded', 'm', 1, 'USD', ${NIL}, 'a budget not there'),
                   (now(), 'd-3', 'chat', 'refused', 'rate_limited', 'm', 1, 'USD', null, null)`

  t.ok((await migrate(sql)).versions.includes(10), 'the roots of rows migration runs')
  const roots = async (table: string) => (await sql.unsafe<Array<{ budget_id: string | null, root_id: string }>>(
    `select budget_id, root_id from ${table} order by budget_id nulls last, root_id`)).map((row) => [row.budget_id, row.root_id])
  t.same(await roots('budget_usage_records'), [[team.id, org.root_id], [null, NIL]].sort((a, b) => a[0] === null ? 1 : b[0] === null ? -1 : 0))
  t.same((await roots('budget_usage_allocations')).map(([, root]) => root), [org.root_id, org.root_id], 'a tree\'s allocations')
  t.same(await roots('budget_status_cache'), [[lone.id, lone.id]], 'a lone root\'s window')
  t.same(await roots('budget_reservations'), [[team.id, org.id]])
  t.same((await sql`select root_id from budget_notification_outbox`).map((row) => row.root_id), [org.id], 'a notification: its alert\'s root')
  t.same(await sql`select budget_id, root_id from budget_audit_log order by id`, [{ budget_id: lone.id, root_id: lone.id }, { budget_id: null, root_id: NIL }],
    'the audit log: filled though it refuses updates, and its guard is back')
  await t.rejects(sql`update budget_audit_log set actor = 'b'`, { message: /append-only/ })
  t.same((await sql`select request_id, root_id from budget_decision_log order by request_id`).map((row) => [row.request_id, row.root_id]),
    [['d-1', org.id], ['d-2', NIL], ['d-3', NIL]], 'the decision log: a budget not there gets the nil root')
  const [nullable] = await sql`select count(*)::int as count from information_schema.columns where column_name = 'root_id' and is_nullable = 'YES'
                               and table_schema = current_schema()`
  t.equal(nullable!.count, 0, 'root_id is never null')
  t.same(await misrootedRows(sql), [])

  const before = await snapshotTables(sql)
  const text = await readFile(new URL('../sql/migrations/010_row_roots.sql', import.meta.url), 'utf8')
  await sql.begin(async (tx) => { await tx.unsafe(text) })
  t.same(await snapshotTables(sql), before, 'run again, it changes nothing')
})

t.test('the keys: a row cannot name another tree\'s root; the plain PostgreSQL keys across trees still hold', async (t) => {
  const { sql } = await createTestSql(t, { max: 1 })
  await migrate(sql)
  const budget = async (name: string) => (await sql`
    insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date)
    values (${name}, 'team', ${name}, 100, 'USD', 'monthly', '2024-01-01') returning id`)[0]!.id as string
  const a = await budget('a')
  const b = await budget('b')
  await t.rejects(sql`insert into budget_status_cache (budget_id, root_id, period_start, period_end) values (${a}, ${b}, now(), now() + interval '1 day')`,
    { code: '23503' }, 'a window row naming another tree\'s root')
  await t.rejects(sql`insert into budget_usage_records (budget_id, root_id, amount, currency) values (null, ${a}, 1, 'USD')`,
    { code: '23514' }, 'a record of no budget naming a root')
  await t.rejects(sql`insert into budget_usage_records (budget_id, root_id, amount, currency) values (${a}, ${NIL}, 1, 'USD')`,
    { code: '23503' }, 'a budget\'s record naming the nil root')

  // an idempotency key names one record across every budget, as before
  const fingerprint = 'f'
  await sql`insert into budget_usage_records (budget_id, amount, currency, idempotency_key, request_fingerprint) values (${a}, 1, 'USD', 'k', ${fingerprint})`
  await t.rejects(sql`insert into budget_usage_records (budget_id, amount, currency, idempotency_key, request_fingerprint) values (${b}, 1, 'USD', 'k', ${fingerprint})`,
    { code: '23505', constraint_name: 'budget_usage_records_key_across_trees' }, 'the same key in another tree')
  await t.rejects(sql`insert into budget_usage_allocations (budget_id, usage_id, amount, occurred_at) values (${a}, gen_random_uuid(), 1, now())`,
    { code: '23503', constraint_name: 'budget_usage_allocations_usage_across_trees' }, 'an allocation of no record')
  await t.rejects(distributeOnCitus(sql), { code: 'BUDGET_ERR_MIGRATION', message: /no citus extension/ }, 'no distribution step without Citus')
})

t.test('after budgets, usage, alerts and audit entries made through the admin API, every row carries its budget\'s root', async (t) => {
  const { admin, sql } = await buildApp(t)
  const create = async (body: Record<string, unknown>) => {
    const response = await admin({ method: 'POST', url: PREFIX, payload: budgetRequest(body) })
    t.equal(response.statusCode, 201, response.body)
    return response.json<{ id: string, rootId: string }>()
  }
  const org = await create({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '100' })
  const team = await create({ name: 'team', scopeId: 'team-a', amount: '10', parentId: org.id, alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['email'] }] })
  const lone = await create({ name: 'lone', scopeType: 'user', scopeId: 'u1', amount: '10' })
  for (const [budgetId, amount] of [[team.id, '6'], [lone.id, '1'], [org.id, '2']] as const) {
    const response = await admin({ method: 'POST', url: `${PREFIX}/${budgetId}/usage`, headers: { 'idempotency-key': `k-${budgetId}` }, payload: { amount, currency: 'USD' } })
    t.equal(response.statusCode, 201, response.body)
  }
  t.same(await misrootedRows(sql), [])
  const [counts] = await sql`select (select count(*)::int from budget_usage_allocations) as allocations, (select count(*)::int from budget_alert_history) as alerts,
                                    (select count(*)::int from budget_audit_log) as audit, (select count(*)::int from budget_status_cache) as windows`
  // the team's record counts on the team and the organization; the team's 60% crosses its 50% alert
  t.same(counts, { allocations: 4, alerts: 1, audit: 3, windows: 3 }, 'the rows written')
})
