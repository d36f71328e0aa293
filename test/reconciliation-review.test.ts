// Adversarial review of reconciliation with the provider's bill: each test here reproduces a defect found
// (it fails until the defect is fixed), against real PostgreSQL.
import t from 'tap'
import { buildApp, PREFIX, type TestApp } from './fixtures/app.js'
import { YESTERDAY, importCsv, ok } from './fixtures/reconciliation.js'

async function budget (app: TestApp, overrides: Record<string, unknown> = {}): Promise<string> {
  const created = await ok<{ id: string }>(app, 'POST', '', {
    name: 'Team budget', scopeType: 'team', scopeId: 'team-a', amount: '1000', currency: 'USD', period: 'monthly', startDate: '2024-01-01', ...overrides
  }, 201)
  return created.id
}

async function counted (app: TestApp, budgetId: string, day: string): Promise<string> {
  const [row] = await app.sql<Array<{ total: string }>>`
    select coalesce(sum(amount), 0)::numeric(28,10)::text as total from budget_usage_allocations
    where budget_id = ${budgetId} and occurred_at >= ${`${day}T00:00:00Z`}::timestamptz and occurred_at < ${`${day}T00:00:00Z`}::timestamptz + interval '1 day'`
  return row!.total
}

t.test('a child trued up and its parent trued up to the same bill: the parent counts the invoice once', async (t) => {
  const app = await buildApp(t)
  const org = await budget(app, { name: 'Org', scopeType: 'organization', scopeId: 'acme' })
  const team = await budget(app, { parentId: org })
  // The org is compared with the whole account, the team with its project: both are the same 10 USD.
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'account', value: 'acme', budgetId: org, trueUp: true }, 201)
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: team, trueUp: true }, 201)
  await ok(app, 'POST', `/${team}/usage`, { amount: '8', currency: 'USD', occurredAt: `${YESTERDAY}T00:00:00Z`, metadata: { requestId: 'a' } }, 201)
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,10,USD`])

  await ok(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: team })
  t.equal(await counted(app, team, YESTERDAY), '10.0000000000', 'the team is at its invoice')
  t.equal(await counted(app, org, YESTERDAY), '10.0000000000', 'the org saw the team\'s correction once, and is at the invoice')
  // The org's report line still says 2 is missing (it leaves every correction out, its children's too) ...
  const { lines } = await ok<{ lines: Array<{ budgetId: string, difference: string | null }> }>(app, 'GET', `/reconciliation?from=${YESTERDAY}&to=${YESTERDAY}&budgetId=${org}`)
  t.same(lines.map((line) => line.difference), ['0.0000000000'], 'the org\'s line shows no drift left once its child\'s correction reached it')
  // ... and so its true-up writes the 2 again.
  await ok(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: org })
  t.equal(await counted(app, org, YESTERDAY), '10.0000000000', 'the org counts the 10 USD invoice once, not 12')
})

t.test('CSV: a budget name a spreadsheet runs as a formula, beginning with - and a digit, is neutralised', async (t) => {
  const app = await buildApp(t)
  const name = '-1+1+cmd|\' /C calc\'!A0'
  const team = await budget(app, { name })
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: team }, 201)
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,10,USD`])
  const csv = await app.admin({ method: 'GET', url: `${PREFIX}/reconciliation?from=${YESTERDAY}&to=${YESTERDAY}&format=csv` })
  t.equal(csv.statusCode, 200)
  const fields = csv.body.split('\r\n')[1]!.split(',')
  t.equal(fields[3], `'${name}`, 'the name is prefixed with \' as one beginning with = is')
})

t.test('drift check: one budget\'s bill past numeric(28,10) does not stop every other budget\'s drift alert', async (t) => {
  const app = await buildApp(t)
  const alerts = [{ threshold: 50, actions: ['notify'], notificationChannels: ['ops'] }]
  const small = await budget(app, { alerts })
  const huge = await budget(app, { name: 'Huge', scopeId: 'team-b', alerts })
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: small }, 201)
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_b', budgetId: huge }, 201)
  // Each bucket fits numeric(28,10) (the import takes both); their sum for one budget and day does not.
  await importCsv(app, [
    `${YESTERDAY},mistral,acme,proj_a,10,USD`,
    `${YESTERDAY},mistral,acme,proj_b,999999999999999999,USD`,
    `${YESTERDAY},mistral,other,proj_b,999999999999999999,USD`
  ])
  const response = await app.admin({ method: 'POST', url: `${PREFIX}/reconciliation/evaluate` })
  t.equal(response.statusCode, 200, `the drift check answers (a body-less POST is no bad request): ${response.body}`)
  const drifts = await app.sql<Array<{ budgetId: string }>>`select budget_id as "budgetId" from budget_recon_drifts`
  t.ok(drifts.some((drift) => drift.budgetId === small), 'the small budget\'s 10 USD drift is alerted')
  const report = await app.admin({ method: 'GET', url: `${PREFIX}/reconciliation?from=${YESTERDAY}&to=${YESTERDAY}` })
  t.equal(report.statusCode, 200, `the report answers with the oversized line in it: ${report.body}`)
  const csv = await app.admin({ method: 'GET', url: `${PREFIX}/reconciliation?from=${YESTERDAY}&to=${YESTERDAY}&format=csv` })
  t.equal(csv.statusCode, 200, 'so does its CSV')
})

t.test('report: a valid to in year 1 with from left to its default is answered, not refused as an unstorable request', async (t) => {
  const app = await buildApp(t)
  const response = await app.admin({ method: 'GET', url: `${PREFIX}/reconciliation?to=0001-01-15` })
  t.equal(response.statusCode, 200, `from defaults to a day PostgreSQL can store: ${response.body}`)
})

t.test('true-up: a day on which the mapped dimension has no bucket (a mistyped mapping value) is a 404, and nothing changes', async (t) => {
  const app = await buildApp(t)
  const team = await budget(app)
  // The provider reported the day, but for proj_a; the mapping names proj_typo.
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_typo', budgetId: team, trueUp: true }, 201)
  await ok(app, 'POST', `/${team}/usage`, { amount: '8', currency: 'USD', occurredAt: `${YESTERDAY}T00:00:00Z`, metadata: { requestId: 'a' } }, 201)
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,10,USD`])
  const response = await app.admin({ method: 'POST', url: `${PREFIX}/reconciliation/true-up`, body: { provider: 'mistral', day: YESTERDAY, budgetId: team } })
  t.equal(response.statusCode, 404, response.body)
  t.equal(response.json().code, 'BUDGET_ERR_COST_REPORT_MISSING')
  t.equal(await counted(app, team, YESTERDAY), '8.0000000000', 'the day\'s recorded spend is not wiped out')
  const [corrections] = await app.sql<Array<{ n: number }>>`select count(*)::int as n from budget_recon_corrections`
  t.equal(corrections!.n, 0, 'no correction is stored')
})

t.test('a parent trued up before its child is trued up again by the child\'s true-up: the invoice counts once', async (t) => {
  const app = await buildApp(t)
  const org = await budget(app, { name: 'Org', scopeType: 'organization', scopeId: 'acme' })
  const team = await budget(app, { parentId: org })
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'account', value: 'acme', budgetId: org, trueUp: true }, 201)
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: team, trueUp: true }, 201)
  await ok(app, 'POST', `/${team}/usage`, { amount: '8', currency: 'USD', occurredAt: `${YESTERDAY}T00:00:00Z`, metadata: { requestId: 'a' } }, 201)
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,10,USD`])

  await ok(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: org })
  t.equal(await counted(app, org, YESTERDAY), '10.0000000000', 'the org trued up first has its own correction of 2')
  await ok(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: team })
  t.equal(await counted(app, org, YESTERDAY), '10.0000000000', 'the team\'s correction moved the org\'s to 0 in the same true-up')
  const { lines } = await ok<{ lines: Array<{ correction: string | null, difference: string | null }> }>(app, 'GET', `/reconciliation?from=${YESTERDAY}&to=${YESTERDAY}&budgetId=${org}`)
  t.same(lines.map((line) => [line.correction, line.difference]), [['0.0000000000', '0.0000000000']], 'its line shows its correction at its difference')
  const audits = await app.sql<Array<{ after: { amount: string } }>>`select after from budget_audit_log where budget_id = ${org} and action = 'true-up' order by id`
  t.same(audits.map((row) => row.after.amount), ['2.0000000000', '0.0000000000'], 'the org\'s correction moved by the team\'s true-up is audited on the org')
  const again = await ok<{ status: string, amount: string }>(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: org })
  t.same([again.status, again.amount], ['unchanged', '0.0000000000'], 'running the org\'s true-up again changes nothing')
  t.equal(await counted(app, org, YESTERDAY), '10.0000000000', 'the org counts the invoice once')
  t.equal(await counted(app, team, YESTERDAY), '10.0000000000')
})

t.test('a mapping deleted after a true-up: refused while it alone keeps the corrections adjustable, allowed while another mapping of the pair remains', async (t) => {
  const app = await buildApp(t)
  const team = await budget(app)
  const first = await ok<{ id: string }>(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: team, trueUp: true }, 201)
  const second = await ok<{ id: string }>(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_b', budgetId: team, trueUp: true }, 201)
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,10,USD`, `${YESTERDAY},mistral,acme,proj_b,5,USD`])
  await ok(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: team })
  await ok(app, 'DELETE', `/provider-costs/mappings/${second.id}`, undefined, 204)
  const again = await ok<{ status: string, amount: string }>(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: team })
  t.same([again.status, again.amount], ['adjusted', '10.0000000000'], 'the remaining mapping moves the correction to its bill')
  const refused = await app.admin({ method: 'DELETE', url: `${PREFIX}/provider-costs/mappings/${first.id}` })
  t.equal(refused.statusCode, 409, refused.body)
  t.equal(refused.json<{ code: string }>().code, 'BUDGET_ERR_COST_MAPPING_CONFLICT')
  t.match(refused.json<{ message: string }>().message, YESTERDAY, 'the message names the day of the correction')
  t.same((await ok<{ mappings: Array<{ id: string }> }>(app, 'GET', '/provider-costs/mappings')).mappings.map((m) => m.id), [first.id], 'the mapping stays')
})
