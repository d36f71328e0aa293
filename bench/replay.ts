// What-if replay: BENCH_CALLS (1,000,000 by default) recorded gated calls over a day, replayed through
// POST {prefix}/simulate against a 3-level tree (an organization, 4 teams, 5 users in each), the team budgets
// halved by the proposal so the replay refuses and crosses thresholds. The target: at most 10 s.
// The calls are written straight into budget_usage_records as the gate writes them (metadata with the
// caller's scopes, the model and estimatedCost), without allocations: the replay of gated calls reads none.
import Fastify from 'fastify'
import postgres from 'postgres'
import budgets from '../lib/index.js'
import { BENCH_ADMIN_TOKEN } from './gateway-server.js'
import { benchDatabase, fmt, timed } from './harness.js'

const CALLS = Number(process.env.BENCH_CALLS ?? 1_000_000)
const database = await benchDatabase()
process.stdout.write(`replay benchmark on PostgreSQL from ${database.source}: ${fmt(CALLS)} recorded calls\n`)
const app = Fastify({ logger: false })
await app.register(budgets, { database: database.url, adminToken: BENCH_ADMIN_TOKEN })
await app.ready()

// Amounts in proportion to the calls: a team spends CALLS x 0.0015 / 4 in the day; its budget is 3/4 of
// that (it refuses late in the day), the proposal 1/2 (it refuses from midday); the organization crosses 50%.
const teamSpend = CALLS * 0.0015 / 4
const start = '2024-03-01'
const definition = { currency: 'USD', period: 'daily' as const, startDate: start }
const org = await app.budgetRegistry.createBudget({ ...definition, name: 'org', scopeType: 'organization', scopeId: 'acme', amount: String(Math.ceil(teamSpend * 4 * 1.1)), alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: [] }, { threshold: 90, actions: ['notify'], notificationChannels: [] }] })
const teams: Array<{ id: string }> = []
for (let team = 0; team < 4; team++) {
  const created = await app.budgetRegistry.createBudget({ ...definition, name: `team ${team}`, scopeType: 'team', scopeId: `team-${team}`, parentId: org.id, amount: String(Math.ceil(teamSpend * 0.75)), alerts: [{ threshold: 80, actions: ['notify'], notificationChannels: [] }] })
  teams.push(created)
  for (let user = 0; user < 5; user++) {
    await app.budgetRegistry.createBudget({ ...definition, scopeType: 'user' as const, name: `user ${team}.${user}`, scopeId: `user-${team}-${user}`, parentId: created.id, amount: String(Math.ceil(teamSpend / 5 * 1.2)) })
  }
}

const sql = postgres(database.url, { onnotice: () => {} })
const written = await timed(async () => {
  await sql`
    insert into budget_usage_records (amount, currency, source, metadata, occurred_at, allocated_by_settlement)
    select 0.0015, 'USD', 'bench', jsonb_build_object('modelId', 'gpt-4o', 'estimatedCost', '0.0021', 'organizationId', 'acme',
             'teamId', 'team-' || (i % 4), 'userId', 'user-' || (i % 4) || '-' || (i / 4 % 5)),
           timestamptz '2024-03-01' + (i * (86400.0 / ${CALLS})) * interval '1 second', true
    from generate_series(0, ${CALLS - 1}) i`
  await sql`analyze budget_usage_records`
})
process.stdout.write(`${fmt(CALLS)} calls written in ${fmt(written / 1000)} s\n`)

const body = { from: '2024-03-01T00:00:00Z', to: '2024-03-02T00:00:00Z', proposal: { update: teams.map((team) => ({ id: team.id, changes: { amount: String(Math.ceil(teamSpend / 2)) } })) } }
let answer: { events: number, budgets: Array<{ refused: Array<{ count: number }>, crossings: unknown[] }> } | undefined
let status = 0
const elapsed = await timed(async () => {
  const response = await app.inject({ method: 'POST', url: '/api/v1/budgets/simulate', headers: { authorization: `Bearer ${BENCH_ADMIN_TOKEN}` }, body })
  status = response.statusCode
  answer = response.json()
})
if (status !== 200 || answer === undefined) {
  process.stdout.write(`the replay answered ${status}: ${JSON.stringify(answer)}\n`)
  process.exitCode = 1
} else {
  const refused = answer.budgets.reduce((sum, budget) => sum + budget.refused.reduce((inner, outcome) => inner + outcome.count, 0), 0)
  const crossings = answer.budgets.reduce((sum, budget) => sum + budget.crossings.length, 0)
  process.stdout.write(`replayed ${fmt(answer.events)} calls against ${answer.budgets.length} budgets in ${fmt(elapsed / 1000)} s ` +
    `(${fmt(elapsed * 1000 / answer.events)} us a call): ${fmt(refused)} refused, ${crossings} crossings; target <= 10 s: ${elapsed <= 10_000 ? 'met' : 'NOT met'}\n`)
}
await sql.end()
await app.close()
await database.close()
