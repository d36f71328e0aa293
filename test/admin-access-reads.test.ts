// Scoped admin access on the reads over many budgets (docs/access.md): a team lead's spend report, metrics,
// decision log and usage batches hold its own team's budgets and usage, made by real gated calls, and
// nothing of the sibling team or of the organization above.
import t from 'tap'
import type { LightMyRequestResponse } from 'fastify'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway, spendTo } from './fixtures/gateway.js'

const LEAD = 'lead-a-token'
const LEAD_PRINCIPAL = { actor: 'lead-a', role: 'editor', scopes: [{ scopeType: 'team', scopeId: 'team-a' }] }

t.test('a team lead reads its team\'s report, gauges and decisions, and batches usage onto its team only', async (t) => {
  const gateway = await buildGateway(t, {
    authorize: (request) => {
      const token = /^Bearer (\S+)$/.exec(request.headers.authorization ?? '')?.[1]
      return token === ADMIN_TOKEN ? 'admin' : token === LEAD ? LEAD_PRINCIPAL as never : false
    }
  })
  const { app, sql } = gateway
  const as = (token: string) => async (url: string, method: 'GET' | 'POST' = 'GET', body?: Record<string, unknown>): Promise<LightMyRequestResponse> =>
    await app.inject({ method, url, headers: { authorization: `Bearer ${token}` }, ...(body === undefined ? {} : { body }) })
  const lead = as(LEAD)
  const admin = as(ADMIN_TOKEN)
  const org = await gateway.createBudget({ name: 'acme', scopeType: 'organization', scopeId: 'acme', amount: '100', metrics: true })
  const teamA = await gateway.createBudget({ name: 'team a', scopeId: 'team-a', parentId: org.id, amount: '0.001', metrics: true })
  const teamB = await gateway.createBudget({ name: 'team b', scopeId: 'team-b', parentId: org.id, amount: '0.001', metrics: true })
  const alice = await gateway.createBudget({ name: 'alice', scopeType: 'user', scopeId: 'alice', parentId: teamA.id, amount: '0.001', metrics: true })

  // Each team's calls: one served, then the team is brought near its limit and a call is refused.
  for (const team of ['team-a', 'team-b']) t.equal((await gateway.call({ organization: 'acme', team })).statusCode, 200)
  await gateway.settled()
  await spendTo(app, teamA.id, '0.0009999')
  await spendTo(app, teamB.id, '0.0009999')
  for (const team of ['team-a', 'team-b']) t.equal((await gateway.call({ organization: 'acme', team })).statusCode, 402)
  await app.budgetDecisions.flush()

  // The decision log: its team's refusal, not the sibling's.
  const everyDecision = (await admin(`${PREFIX}/decisions`)).json().decisions
  t.same(everyDecision.map((d: { budget: { id: string } }) => d.budget.id).sort(), [teamA.id, teamB.id].sort(), 'the platform admin sees both refusals')
  const leadDecisions = await lead(`${PREFIX}/decisions`)
  t.equal(leadDecisions.statusCode, 200)
  t.same(leadDecisions.json().decisions.map((d: { budget: { id: string } }) => d.budget.id), [teamA.id], 'the lead sees its team\'s refusal alone')
  t.same((await lead(`${PREFIX}/decisions?budgetId=${teamB.id}`)).json().decisions, [], 'asking for the sibling\'s by id finds nothing')

  // The spend report: the usage counted toward its team, grouped by budget and by team.
  const everyTotal = async (url: string, as: typeof lead) => Object.fromEntries((await as(url)).json().groups.map((g: { key: string | null, total: string }) => [g.key, g.total]))
  // (spendTo's records name no caller: grouped by team, they fall under no key)
  const adminByTeam = await everyTotal(`${PREFIX}/reports/spend?groupBy=team`, admin)
  t.same(Object.keys(adminByTeam).sort(), ['null', 'team-a', 'team-b'], 'the admin\'s report holds both teams')
  const leadByTeam = await everyTotal(`${PREFIX}/reports/spend?groupBy=team`, lead)
  t.same(Object.keys(leadByTeam).sort(), ['null', 'team-a'], 'the lead\'s holds its team')
  t.equal(leadByTeam['team-a'], adminByTeam['team-a'], 'with the same total for it')
  const leadByBudget = await everyTotal(`${PREFIX}/reports/spend?groupBy=scope`, lead)
  t.same(leadByBudget, { 'team:team-a': (await gateway.status(teamA.id)).currentAmount }, 'grouped by budget: its team alone, at its budget\'s spend')
  const csv = await app.inject({ url: `${PREFIX}/reports/spend?groupBy=team`, headers: { authorization: `Bearer ${LEAD}`, accept: 'text/csv' } })
  t.notOk(csv.body.includes('team-b'), 'the CSV form holds no sibling either')
  t.ok(csv.body.includes('team-a'))

  // The metrics: the gauges of its budgets, no gate series, nothing of the sibling or the organization.
  const metrics = await lead(`${PREFIX}/metrics`)
  t.equal(metrics.statusCode, 200)
  const series = metrics.body.split('\n').filter((line) => line !== '' && !line.startsWith('#'))
  const labelled = new Set(series.map((line) => /budget_id="([^"]+)"/.exec(line)?.[1]))
  t.same([...labelled].sort(), [teamA.id, alice.id].sort(), 'every series names its team or the user below it')
  t.ok(series.every((line) => /^relaycore_budget_(spend|reserved|limit|remaining|blocked|seconds_to_reset)\{/.test(line)), 'the budget gauges alone')
  t.ok((await admin(`${PREFIX}/metrics`)).body.includes(teamB.id), 'the admin\'s scrape shows the sibling')

  // A usage batch: a record on its user is stored; the sibling's, the organization's and a record by scopes are refused, alone.
  const before = (await sql`select count(*)::int as count from budget_usage_records`)[0]!.count as number
  const batch = await lead(`${PREFIX}/usage/batch`, 'POST', {
    records: [
      { budgetId: alice.id, amount: '0.0001', currency: 'USD' },
      { budgetId: teamB.id, amount: '0.0001', currency: 'USD' },
      { budgetId: org.id, amount: '0.0001', currency: 'USD' },
      { scopes: { team: 'team-a' }, amount: '0.0001', currency: 'USD' }
    ]
  })
  t.equal(batch.statusCode, 200)
  t.same(batch.json().results.map((r: { status: string, error?: { code: string, field?: string } }) => r.status === 'refused' ? `${r.error!.code} ${r.error!.field}` : r.status),
    ['created', 'BUDGET_ERR_OUT_OF_SCOPE budgetId', 'BUDGET_ERR_OUT_OF_SCOPE budgetId', 'BUDGET_ERR_OUT_OF_SCOPE scopes'])
  t.equal((await sql`select count(*)::int as count from budget_usage_records`)[0]!.count, before + 1, 'one record stored')

  // A key another request used, on the sibling's budget: the conflict names neither that budget nor its amount.
  await admin(`${PREFIX}/${teamB.id}/usage`, 'POST', { amount: '0.00005', currency: 'USD', metadata: { requestId: 'req-b-1' } })
  const conflict = (await lead(`${PREFIX}/usage/batch`, 'POST', { records: [{ budgetId: alice.id, amount: '0.0002', currency: 'USD', metadata: { requestId: 'req-b-1' } }] })).json().results[0]
  t.equal(conflict.error.code, 'BUDGET_ERR_IDEMPOTENCY_CONFLICT')
  t.notOk(conflict.error.message.includes(teamB.id) || conflict.error.message.includes('0.00005'), conflict.error.message)
})
