// Reconciliation with the provider's bill (lib/reconciliation/), against real PostgreSQL: the mappings (one
// provider per budget, audited), the report's exact amounts in JSON and CSV, the drift alert once per day and
// scope, the true-up exact and idempotent, a correction in an ended period that fires no alert, and the drift
// check after a collection from a local server that speaks OpenAI's Costs API.
import t from 'tap'
import { buildApp, PREFIX, TEST_CHANNELS, type TestApp } from './fixtures/app.js'
import type { BudgetEvent, DriftEvent } from '../lib/index.js'
import { checkInvariants } from './fixtures/invariants.js'
import { openAiPage, startCostReportServer } from './fixtures/cost-report-server.js'

const DAY_MS = 86_400_000
const dayBefore = (days: number): string => new Date(Date.now() - days * DAY_MS).toISOString().slice(0, 10)
const YESTERDAY = dayBefore(1)
const TWO_DAYS_AGO = dayBefore(2)
const TODAY = dayBefore(0)

async function ok<T> (app: TestApp, method: 'GET' | 'POST' | 'PUT' | 'DELETE', url: string, body?: unknown, status = 200): Promise<T> {
  const response = await app.admin({ method, url: `${PREFIX}${url}`, ...(body === undefined ? {} : { body: body as Record<string, unknown> }) })
  if (response.statusCode !== status) throw new Error(`${method} ${url} answered ${response.statusCode}: ${response.body}`)
  return (response.body === '' ? undefined : response.json()) as T
}

async function budget (app: TestApp, overrides: Record<string, unknown> = {}): Promise<string> {
  const created = await ok<{ id: string }>(app, 'POST', '', {
    name: 'Team budget', scopeType: 'team', scopeId: 'team-a', amount: '1000', currency: 'USD', period: 'monthly', startDate: '2024-01-01',
    alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['ops'] }], ...overrides
  }, 201)
  return created.id
}

async function spend (app: TestApp, budgetId: string, amount: string, day: string, key: string): Promise<void> {
  await ok(app, 'POST', `/${budgetId}/usage`, { amount, currency: 'USD', occurredAt: `${day}T00:00:00Z`, metadata: { requestId: key } }, 201)
}

async function importCsv (app: TestApp, lines: string[]): Promise<void> {
  const response = await app.admin({ method: 'POST', url: `${PREFIX}/provider-costs/import`, headers: { 'content-type': 'text/csv' }, payload: ['date,provider,account,project,amount,currency', ...lines].join('\n') })
  if (response.statusCode !== 200) throw new Error(`import answered ${response.statusCode}: ${response.body}`)
}

interface Line { day: string, provider: string, budgetId: string, providerAmount: string | null, recordedAmount: string, correction: string | null, difference: string | null, ratio: string | null, drift: boolean, missingRate: string | null }
/** The named fields of each line, compared whole (t.match would take a string as a substring). */
const pick = <T extends object>(rows: T[], keys: Array<keyof T>) => rows.map((row) => Object.fromEntries(keys.map((key) => [key, row[key]])))
const report = async (app: TestApp, query = `from=${TWO_DAYS_AGO}&to=${TODAY}`) => await ok<{ tolerance: string, lines: Line[] }>(app, 'GET', `/reconciliation?${query}`)

t.test('mappings: created, changed and deleted through the API, audited; one provider per budget; a dimension once', async (t) => {
  const app = await buildApp(t)
  const team = await budget(app)
  const other = await budget(app, { scopeId: 'team-b' })
  const mapping = await ok<{ id: string, trueUp: boolean }>(app, 'POST', '/provider-costs/mappings', { provider: 'openai', kind: 'project', value: 'proj_a', budgetId: team }, 201)
  t.equal(mapping.trueUp, false, 'trueUp is off unless asked for')
  const again = await app.admin({ method: 'POST', url: `${PREFIX}/provider-costs/mappings`, body: { provider: 'openai', kind: 'project', value: 'proj_a', budgetId: other } })
  t.equal(again.statusCode, 409)
  t.equal(again.json().code, 'BUDGET_ERR_COST_MAPPING_CONFLICT', 'a dimension is mapped once')
  const second = await app.admin({ method: 'POST', url: `${PREFIX}/provider-costs/mappings`, body: { provider: 'anthropic', kind: 'workspace', value: 'wrkspc_1', budgetId: team } })
  t.equal(second.statusCode, 409)
  t.equal(second.json().code, 'BUDGET_ERR_COST_MAPPING_CONFLICT', 'a budget is compared with one provider')
  const missing = await app.admin({ method: 'POST', url: `${PREFIX}/provider-costs/mappings`, body: { provider: 'openai', kind: 'project', value: 'proj_x', budgetId: '00000000-0000-4000-8000-000000000000' } })
  t.equal(missing.statusCode, 404)
  t.equal(missing.json().code, 'BUDGET_ERR_NOT_FOUND')

  const changed = await ok<{ value: string, trueUp: boolean }>(app, 'PUT', `/provider-costs/mappings/${mapping.id}`, { value: 'proj_b', trueUp: true })
  t.match(changed, { value: 'proj_b', trueUp: true })
  t.match((await ok<{ mappings: unknown[] }>(app, 'GET', '/provider-costs/mappings')).mappings, [{ id: mapping.id, provider: 'openai', kind: 'project', value: 'proj_b', budgetId: team, trueUp: true }])
  await ok(app, 'DELETE', `/provider-costs/mappings/${mapping.id}`, undefined, 204)
  const gone = await app.admin({ method: 'DELETE', url: `${PREFIX}/provider-costs/mappings/${mapping.id}` })
  t.equal(gone.statusCode, 404)
  t.equal(gone.json().code, 'BUDGET_ERR_COST_MAPPING_NOT_FOUND')
  t.same((await ok<{ mappings: unknown[] }>(app, 'GET', '/provider-costs/mappings')).mappings, [])

  const audit = await app.sql<Array<{ action: string, budgetId: string, changes: string[], before: unknown, after: unknown }>>`
    select action, budget_id as "budgetId", changes, before, after from budget_audit_log where action like '%cost-mapping' order by id`
  t.match(audit, [
    { action: 'create-cost-mapping', budgetId: team, after: { provider: 'openai', kind: 'project', value: 'proj_a', trueUp: false } },
    { action: 'update-cost-mapping', budgetId: team, changes: ['value', 'trueUp'], before: { value: 'proj_a', trueUp: false }, after: { value: 'proj_b', trueUp: true } },
    { action: 'delete-cost-mapping', budgetId: team, before: { value: 'proj_b' } }
  ])
  t.equal(audit.length, 3, 'the refused requests wrote nothing')
})

t.test('a mapping moved to a budget of another tree keeps its id and creation time, is stored and audited in that tree, and the report follows it', async (t) => {
  const app = await buildApp(t)
  const team = await budget(app)
  const other = await budget(app, { scopeId: 'team-b' })
  const child = await budget(app, { scopeId: 'team-b-child', parentId: other, amount: '100' })
  const created = await ok<{ id: string, createdAt: string }>(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_m', budgetId: team }, 201)
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_m,4.25,USD`])
  const where = async () => await app.sql<Array<{ id: string, rootId: string, budgetId: string }>>`
    select id::text as id, root_id as "rootId", budget_id as "budgetId" from budget_recon_mappings`
  t.same(await where(), [{ id: created.id, rootId: team, budgetId: team }], 'stored in its budget\'s tree')

  const moved = await ok<{ id: string, budgetId: string, createdAt: string, updatedAt: string }>(app, 'PUT', `/provider-costs/mappings/${created.id}`, { budgetId: other, trueUp: true })
  t.match(moved, { id: created.id, budgetId: other, createdAt: created.createdAt, trueUp: true }, 'the same mapping, moved')
  t.same(await where(), [{ id: created.id, rootId: other, budgetId: other }], 'stored in the other tree now, and only there')
  t.same(pick((await report(app)).lines, ['day', 'budgetId', 'providerAmount']), [{ day: YESTERDAY, budgetId: other, providerAmount: '4.2500000000' }])

  await ok(app, 'PUT', `/provider-costs/mappings/${created.id}`, { budgetId: child })
  t.same(await where(), [{ id: created.id, rootId: other, budgetId: child }], 'a move within the tree stays in it')
  const trueUp = await ok<{ status: string, amount: string }>(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: child })
  t.match(trueUp, { status: 'created', amount: '4.2500000000' })

  const audit = await app.sql<Array<{ action: string, budgetId: string, rootId: string, changes: string[] }>>`
    select action, budget_id as "budgetId", root_id as "rootId", changes from budget_audit_log
    where action like '%cost-mapping' or action = 'true-up' order by id`
  t.same(audit, [
    { action: 'create-cost-mapping', budgetId: team, rootId: team, changes: [] },
    { action: 'update-cost-mapping', budgetId: other, rootId: other, changes: ['budgetId', 'trueUp'] },
    { action: 'update-cost-mapping', budgetId: child, rootId: other, changes: ['budgetId'] },
    { action: 'true-up', budgetId: child, rootId: other, changes: [] }
  ], 'each entry in the tree of the budget it names')
  // the mapping's id is still its own after the move: a new mapping takes the next one
  const next = await ok<{ id: string }>(app, 'POST', '/provider-costs/mappings', { provider: 'openai', kind: 'project', value: 'proj_n', budgetId: team }, 201)
  t.ok(BigInt(next.id) > BigInt(created.id), 'a new mapping takes a new id')
})

t.test('the report: the provider\'s amount beside the gate\'s, exact, converted at noon UTC, in JSON and CSV', async (t) => {
  const app = await buildApp(t)
  const team = await budget(app)
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: team }, 201)
  await ok(app, 'PUT', '/exchange-rates/EUR/USD', { rate: '1.1', effectiveFrom: `${TWO_DAYS_AGO}T00:00:00Z` }, 201)
  // A rate set after noon of the day is not the day's.
  await ok(app, 'PUT', '/exchange-rates/EUR/USD', { rate: '2', effectiveFrom: `${TWO_DAYS_AGO}T13:00:00Z` }, 201)
  await spend(app, team, '10.0000000001', TWO_DAYS_AGO, 'a')
  await spend(app, team, '0.1', YESTERDAY, 'b')
  await importCsv(app, [
    `${TWO_DAYS_AGO},mistral,acme,proj_a,10.0000000002,EUR`, // 11.00000000022 USD
    `${TWO_DAYS_AGO},mistral,acme,proj_other,99,EUR`, // not mapped
    `${YESTERDAY},mistral,acme,proj_a,0.1,USD`
  ])

  const { tolerance, lines } = await report(app)
  t.equal(tolerance, '0.05')
  t.same(pick(lines, ['day', 'provider', 'budgetId', 'providerAmount', 'recordedAmount', 'correction', 'difference', 'ratio', 'drift', 'missingRate']), [
    { day: TWO_DAYS_AGO, provider: 'mistral', budgetId: team, providerAmount: '11.0000000003', recordedAmount: '10.0000000001', correction: null, difference: '1.0000000002', ratio: '0.100000', drift: true, missingRate: null },
    { day: YESTERDAY, provider: 'mistral', budgetId: team, providerAmount: '0.1000000000', recordedAmount: '0.1000000000', correction: null, difference: '0.0000000000', ratio: '0.000000', drift: false, missingRate: null }
  ], 'EUR at 1.1 (the noon rate), rounded up to the money scale as every conversion; the difference and a 6-place ratio')

  const csv = await app.admin({ method: 'GET', url: `${PREFIX}/reconciliation?from=${TWO_DAYS_AGO}&to=${YESTERDAY}`, headers: { accept: 'text/csv' } })
  t.equal(csv.statusCode, 200)
  t.match(csv.headers['content-type'], /^text\/csv/)
  t.same(csv.body.split('\r\n'), [
    'day,provider,budget_id,budget_name,currency,provider_amount,recorded_amount,correction,difference,ratio,drift,missing_rate',
    `${TWO_DAYS_AGO},mistral,${team},Team budget,USD,11.0000000003,10.0000000001,,1.0000000002,0.100000,true,`,
    `${YESTERDAY},mistral,${team},Team budget,USD,0.1000000000,0.1000000000,,0.0000000000,0.000000,false,`,
    ''
  ])
  const viaFormat = await app.admin({ method: 'GET', url: `${PREFIX}/reconciliation?from=${TWO_DAYS_AGO}&to=${YESTERDAY}&format=csv` })
  t.equal(viaFormat.body, csv.body, 'format=csv is the same CSV')

  const bad = await app.admin({ method: 'GET', url: `${PREFIX}/reconciliation?from=${YESTERDAY}&to=${TWO_DAYS_AGO}` })
  t.equal(bad.statusCode, 400)
  t.equal(bad.json().field, 'to')
})

t.test('a missing rate is named, never guessed', async (t) => {
  const app = await buildApp(t)
  const team = await budget(app)
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'account', value: 'acme', budgetId: team, trueUp: true }, 201)
  await importCsv(app, [`${YESTERDAY},mistral,acme,,5,GBP`])
  t.same(pick((await report(app)).lines, ['providerAmount', 'difference', 'ratio', 'drift', 'missingRate']), [{ providerAmount: null, difference: null, ratio: null, drift: false, missingRate: 'GBP' }])
  const trueUp = await app.admin({ method: 'POST', url: `${PREFIX}/reconciliation/true-up`, body: { provider: 'mistral', day: YESTERDAY, budgetId: team } })
  t.equal(trueUp.statusCode, 400)
  t.equal(trueUp.json().code, 'BUDGET_ERR_EXCHANGE_RATE_MISSING')
})

t.test('the drift alert fires once per day and scope, through the budget\'s channels', async (t) => {
  const delivered: BudgetEvent[] = []
  const app = await buildApp(t, { notifications: { intervalMs: 0, channels: { ...TEST_CHANNELS, ops: { deliver: async (event) => { delivered.push(event) } } } } })
  const team = await budget(app)
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: team }, 201)
  await spend(app, team, '10', TWO_DAYS_AGO, 'a')
  await spend(app, team, '10', YESTERDAY, 'b')
  await spend(app, team, '10', TODAY, 'c')
  await importCsv(app, [
    `${TWO_DAYS_AGO},mistral,acme,proj_a,10.5,USD`, // exactly the tolerance: no drift
    `${YESTERDAY},mistral,acme,proj_a,10.5000000001,USD`, // just past it
    `${TODAY},mistral,acme,proj_a,50,USD` // today is not final: not evaluated
  ])
  const first = await ok<{ drifts: Array<{ provider: string, day: string, budgetId: string }> }>(app, 'POST', '/reconciliation/evaluate')
  t.same(pick(first.drifts, ['provider', 'day', 'budgetId']), [{ provider: 'mistral', day: YESTERDAY, budgetId: team }], 'exactly the tolerance is no drift; today is not evaluated')
  const second = await ok<{ drifts: unknown[] }>(app, 'POST', '/reconciliation/evaluate')
  t.same(second.drifts, [], 'evaluated again: nothing new')
  const outbox = await app.sql`select o.channel, d.day::text as day, d.difference::text as difference, d.ratio::text as ratio
                               from budget_notification_outbox o join budget_recon_drifts d on d.root_id = o.root_id and d.id = o.drift_id`
  t.same(outbox.map((row) => ({ ...row })), [{ channel: 'ops', day: YESTERDAY, difference: '0.5000000001', ratio: '0.050000' }], 'one notification for the one channel')
  for (let round = 0; round < 3; round++) await app.app.budgetNotifications.deliverDue()
  t.equal(delivered.length, 1, 'delivered once')
  t.same(pick(delivered as DriftEvent[], ['type', 'provider', 'day', 'providerAmount', 'recordedAmount', 'difference', 'ratio', 'tolerance']), [{
    type: 'budget.provider_drift', provider: 'mistral', day: YESTERDAY, providerAmount: '10.5000000001', recordedAmount: '10.0000000000', difference: '0.5000000001', ratio: '0.050000', tolerance: '0.05'
  }])
  t.equal((delivered[0] as DriftEvent).budget.id, team)
})

t.test('true-up: one correction at noon UTC, exact; the same twice stores once; a corrected bucket adjusts it', async (t) => {
  const app = await buildApp(t)
  const team = await budget(app, { enforcement: 'hard', amount: '20' })
  const mapping = await ok<{ id: string }>(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: team }, 201)
  await spend(app, team, '10', YESTERDAY, 'a')
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,12.3456789012,USD`])
  const body = { provider: 'mistral', day: YESTERDAY, budgetId: team }

  const refused = await app.admin({ method: 'POST', url: `${PREFIX}/reconciliation/true-up`, body })
  t.equal(refused.statusCode, 409)
  t.equal(refused.json().code, 'BUDGET_ERR_TRUE_UP_REFUSED', 'not without trueUp on the mapping')
  await ok(app, 'PUT', `/provider-costs/mappings/${mapping.id}`, { trueUp: true })
  const today = await app.admin({ method: 'POST', url: `${PREFIX}/reconciliation/true-up`, body: { ...body, day: TODAY } })
  t.equal(today.statusCode, 400, 'today is not final')

  type Outcome = { status: string, usageId: string, amount: string, previous: string | null }
  const trueUp = async () => await ok<Outcome>(app, 'POST', '/reconciliation/true-up', body)
  const created = await trueUp()
  t.same({ ...created, usageId: typeof created.usageId }, { status: 'created', usageId: 'string', amount: '2.3456789012', previous: null })
  t.same(await trueUp(), { status: 'unchanged', usageId: created.usageId, amount: '2.3456789012', previous: '2.3456789012' })
  const records = async () => await app.sql`select amount::text as amount, occurred_at as "occurredAt", correction from budget_usage_records where correction order by recorded_at`
  t.same((await records()).map((row) => ({ ...row })), [{ amount: '2.3456789012', occurredAt: new Date(`${YESTERDAY}T12:00:00Z`), correction: true }], 'one record, at noon UTC')
  const status = async () => (await ok<{ currentAmount: string }>(app, 'GET', `/${team}/status`)).currentAmount
  t.equal(await status(), '12.3456789012', 'the budget reflects the invoice')
  t.same(pick((await report(app)).lines, ['day', 'recordedAmount', 'correction', 'difference']), [{ day: YESTERDAY, recordedAmount: '10.0000000000', correction: '2.3456789012', difference: '2.3456789012' }], 'the report keeps the gate\'s own spend apart')

  // The provider corrects the bucket: past the hard limit, the invoice is the invoice; then below the gate's spend.
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,25,USD`])
  t.same(await trueUp(), { status: 'adjusted', usageId: created.usageId, amount: '15.0000000000', previous: '2.3456789012' })
  t.equal(await status(), '25', 'a correction may take a hard budget past its limit')
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,9.5,USD`])
  t.same(await trueUp(), { status: 'adjusted', usageId: created.usageId, amount: '-0.5000000000', previous: '15.0000000000' })
  t.equal(await status(), '9.5', 'a provider that billed less corrects down')
  t.same((await records()).map((row) => row.amount), ['2.3456789012', '12.6543210988', '-15.5000000000'],
    'each move is one more record for the change, none rewritten')
  const adjusting = await app.sql`select distinct metadata ->> 'adjusts' as adjusts from budget_usage_records where correction and metadata ? 'adjusts'`
  t.same(adjusting.map((row) => row.adjusts), [created.usageId], 'each names the correction it adjusts')
  const listed = await ok<{ records?: Array<{ amount: string, source: string }>, usage?: Array<{ amount: string, source: string }> }>(app, 'GET', `/${team}/usage`)
  t.same((listed.records ?? listed.usage ?? []).filter((record) => record.source === 'reconciliation').map((record) => record.amount).sort(),
    ['-15.5', '12.6543210988', '2.3456789012'], 'the usage list shows the correction\'s records, the negative change too')
  const spendReport = await app.admin({ method: 'GET', url: `${PREFIX}/reports/spend?from=${YESTERDAY}T00:00:00Z&to=${TODAY}T00:00:00Z&groupBy=scope` })
  t.equal(spendReport.statusCode, 200, 'and the spend report reads it')
  await checkInvariants(t, app.sql, 'the windows\' spend is still the sum of their allocations after each adjustment')
  const [allocation] = await app.sql`select sum(a.amount)::text as total from budget_usage_allocations a join budget_usage_records u on u.root_id = a.root_id and u.id = a.usage_id where u.correction`
  t.equal(allocation!.total, '-0.5000000000')
  const audit = await app.sql`select changes, before, after from budget_audit_log where action = 'true-up' order by id`
  const usageId = created.usageId
  const provider = 'mistral'
  t.same(audit.map((row) => ({ ...row })), [
    { changes: [], before: null, after: { provider, day: YESTERDAY, amount: '2.3456789012', usageId } },
    { changes: ['amount'], before: { provider, day: YESTERDAY, amount: '2.3456789012' }, after: { provider, day: YESTERDAY, amount: '15.0000000000', usageId } },
    { changes: ['amount'], before: { provider, day: YESTERDAY, amount: '15.0000000000' }, after: { provider, day: YESTERDAY, amount: '-0.5000000000', usageId } }
  ], 'the unchanged true-up wrote no entry')
})

t.test('true-up is refused on a budget with model or tag filters', async (t) => {
  const app = await buildApp(t)
  const filtered = await budget(app, { filters: { models: ['gpt-4o'] } })
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: filtered, trueUp: true }, 201)
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,3,USD`])
  const response = await app.admin({ method: 'POST', url: `${PREFIX}/reconciliation/true-up`, body: { provider: 'mistral', day: YESTERDAY, budgetId: filtered } })
  t.equal(response.statusCode, 409)
  t.equal(response.json().code, 'BUDGET_ERR_TRUE_UP_REFUSED')
  t.equal((await app.sql`select count(*)::int as n from budget_usage_records where correction`)[0]!.n, 0)
})

t.test('a correction in an ended period fires no alert; one in the current period does', async (t) => {
  const app = await buildApp(t)
  const daily = await budget(app, { period: 'daily', amount: '10' })
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: daily, trueUp: true }, 201)
  await spend(app, daily, '1', YESTERDAY, 'a')
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,9,USD`])
  t.same(pick([await ok<{ status: string, amount: string }>(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: daily })], ['status', 'amount']), [{ status: 'created', amount: '8.0000000000' }])
  const [window] = await app.sql`select current_amount::text as spent from budget_status_cache where budget_id = ${daily} and period_end <= now()`
  t.equal(window!.spent, '9.0000000000', 'the correction counts in its own day')
  t.equal((await app.sql`select count(*)::int as n from budget_alert_history where budget_id = ${daily}`)[0]!.n, 0, 'yesterday\'s 50% alert does not fire today')

  // The same budget's ended window, crossed by ordinary usage recorded late, still alerts as before: only corrections are held back.
  const monthly = await budget(app, { scopeId: 'team-m', amount: '10' })
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'other', kind: 'project', value: 'proj_m', budgetId: monthly, trueUp: true }, 201)
  await importCsv(app, [`${YESTERDAY},other,acme,proj_m,6,USD`])
  await ok(app, 'POST', '/reconciliation/true-up', { provider: 'other', day: YESTERDAY, budgetId: monthly })
  // Yesterday may be in last month's window (on the 1st): then no alert either; otherwise the current window alerts.
  const current = YESTERDAY.slice(0, 7) === TODAY.slice(0, 7)
  t.equal((await app.sql`select count(*)::int as n from budget_alert_history where budget_id = ${monthly}`)[0]!.n, current ? 1 : 0, 'a correction in the current period alerts as any spend')
})

t.test('the drift check runs after each collection', async (t) => {
  const server = await startCostReportServer(t)
  server.pages.set('', openAiPage([{ day: YESTERDAY, results: [{ project: 'proj_a', lineItem: 'gpt-4o, input', value: '7.25' }] }], null))
  const app = await buildApp(t, { providerCosts: { openai: { adminKey: 'sk-admin-test', organization: 'org-test', baseUrl: server.url, intervalMs: 0 } }, reconciliation: { tolerance: 0.1 } })
  const team = await budget(app)
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'openai', kind: 'project', value: 'proj_a', budgetId: team }, 201)
  await spend(app, team, '5', YESTERDAY, 'a')
  t.match(await ok(app, 'POST', '/provider-costs/collect'), { collectors: [{ source: 'openai', status: 'completed' }] })
  const drifts = await app.sql`select provider, day::text as day, provider_amount::text as billed, recorded_amount::text as recorded, ratio::text as ratio, tolerance::text as tolerance from budget_recon_drifts`
  t.same(drifts.map((row) => ({ ...row })), [{ provider: 'openai', day: YESTERDAY, billed: '7.2500000000', recorded: '5.0000000000', ratio: '0.450000', tolerance: '0.1' }])
})

t.test('the tolerance option: a decimal from 0 to 1, checked at registration', async (t) => {
  for (const tolerance of ['-0.1', '1.5', 'abc', '0.1234567890123', '', 0.1 + 0.2, Number.NaN, true]) {
    await t.rejects(buildApp(t, { reconciliation: { tolerance: tolerance as never } }), { code: 'BUDGET_ERR_OPTIONS' }, String(tolerance))
  }
  await t.rejects(buildApp(t, { reconciliation: { window: 3 } as never }), { code: 'BUDGET_ERR_OPTIONS' }, 'an unknown key')
  const app = await buildApp(t, { reconciliation: { tolerance: '0' } })
  t.equal((await report(app)).tolerance, '0', 'a tolerance of 0 is accepted: any difference drifts')
})
