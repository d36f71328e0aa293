// What-if replay (POST {prefix}/simulate): a recorded period replayed against the budgets really in force
// gives exactly the refusals and crossings that really happened; a tighter proposal refuses more; a replay
// changes nothing but its own audit entry; a client that hangs up cancels the replay in PostgreSQL.
import { request as httpRequest } from 'node:http'
import t from 'tap'
import { NIL_ROOT } from '../lib/kernel/database/db.js'
import { ADMIN_TOKEN, PREFIX, snapshotTables } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }
type Gateway = Awaited<ReturnType<typeof buildGateway>>

async function simulate (gateway: Gateway, body: Record<string, unknown>) {
  const response = await gateway.app.inject({ method: 'POST', url: `${PREFIX}/simulate`, headers: AUTH, body })
  if (response.statusCode !== 200) throw new Error(`${response.statusCode} ${response.body}`)
  return response.json() as { events: number, budgets: Array<Record<string, any>>, unknowns: string[] }
}

/**
 * A period recorded through the real gate: small and large gpt-4o calls, one after another, on a hard budget
 * with alerts, until it refuses the large ones and then every call.
 */
async function recordPeriod (t: Parameters<typeof buildGateway>[0], amount = '0.004') {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const budget = await gateway.createBudget({
    name: 'team a', amount, alerts: [{ threshold: 50, actions: ['notify'] }, { threshold: 80, actions: ['notify'] }]
  })
  const from = new Date(Date.now() - 1000)
  const answers: number[] = []
  for (let call = 0; call < 40; call++) {
    const response = await gateway.call({ team: 'team-a', user: `user-${call % 3}` }, { model: 'gpt-4o', max_tokens: call % 4 === 3 ? 300 : 20 })
    answers.push(response.statusCode)
    await gateway.settled()
  }
  await gateway.app.budgetDecisions.flush()
  const to = new Date(Date.now() + 1000)
  return { gateway, budget, from, to, answers }
}

t.test('a replay of a recorded period against the budgets in force: exactly the refusals and crossings that happened', async (t) => {
  const { gateway, budget, from, to, answers } = await recordPeriod(t)
  const refusedCalls = answers.filter((status) => status === 402).length
  t.ok(refusedCalls > 0 && refusedCalls < answers.length, `the period has both admitted and refused calls (${refusedCalls} refused of ${answers.length})`)

  const decisions = await gateway.sql<Array<{ code: string, count: number, first: Date, cost: string }>>`
    select code, count(*)::int as count, min(at) as first, sum(estimate)::text as cost from budget_decision_log
    where outcome = 'refused' and budget_id = ${budget.id} group by code order by code`
  const crossings = await gateway.sql<Array<{ threshold: string, spent: string }>>`
    select threshold::text, spent::text from budget_alert_history where budget_id = ${budget.id} and basis = 'current' order by threshold`
  const [spent] = await gateway.sql<Array<{ total: string, calls: number }>>`
    select coalesce(sum(amount), 0)::text as total, count(*)::int as calls from budget_usage_allocations where budget_id = ${budget.id}`
  t.equal(crossings.length, 2, 'both thresholds were crossed in reality')

  const result = await simulate(gateway, { from: from.toISOString(), to: to.toISOString() })
  t.equal(result.events, answers.length, 'every call of the range, admitted or refused, was replayed')
  const [replayed] = result.budgets
  t.equal(result.budgets.length, 1)
  t.equal(replayed!.budgetId, budget.id)
  t.same(replayed!.refused.map((outcome: any) => ({ code: outcome.code, count: outcome.count, first: outcome.firstAt, cost: outcome.cost })),
    decisions.map((row) => ({ code: row.code, count: row.count, first: row.first.toISOString(), cost: String(Number(row.cost)) })),
    'the same refusals: code, count, first instant, estimated cost')
  t.same(replayed!.crossings.map((crossing: any) => ({ threshold: crossing.threshold, spent: crossing.spent })),
    crossings.map((row) => ({ threshold: String(Number(row.threshold)), spent: String(Number(row.spent)) })),
    'the same crossings, each at the spend that crossed it')
  t.equal(replayed!.periods.length, 1)
  t.equal(replayed!.periods[0].spent, String(Number(spent!.total)), 'the same spend')
  t.equal(replayed!.periods[0].calls, spent!.calls, 'the same calls counted')
  t.equal(replayed!.avoidedSpend, '0', 'a call refused in reality never ran: no spend avoided')
  t.same(replayed!.downgraded, [])
})

t.test('a crossing\'s block-all refuses the very caller the replay admitted just before', async (t) => {
  // One caller, one estimate: the replay keeps a caller's admission while nothing changes, and must drop it
  // when a crossing brings an action, not only when the spend runs out. Ten calls of 0.1 recorded as the gate
  // records them, on a soft budget of 1 that blocks at 50%: five go ahead, the fifth crosses, five are blocked.
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const budget = await gateway.createBudget({ name: 'team a', amount: '1', enforcement: 'soft', alerts: [{ threshold: 50, actions: ['block-all'] }] })
  const from = new Date(Date.now() - 60_000)
  await gateway.sql`
    insert into budget_usage_records (root_id, amount, currency, source, metadata, occurred_at, allocated_by_settlement)
    select ${NIL_ROOT}::uuid, 0.1, 'USD', 'gateway', jsonb_build_object('modelId', 'gpt-4o', 'estimatedCost', '0.1', 'teamId', 'team-a', 'userId', 'user-0'),
           ${from} + i * interval '1 millisecond', true
    from generate_series(1, 10) i`
  // one slice (a twentieth of the range) holds them all, so one replay statement sees them one after another
  const result = await simulate(gateway, { from: from.toISOString(), to: new Date(from.getTime() + 20_000).toISOString() })
  const [replayed] = result.budgets
  t.equal(replayed!.budgetId, budget.id)
  t.same(replayed!.refused.map((outcome: any) => [outcome.code, outcome.count, outcome.firstAt]),
    [['budget_blocked', 5, new Date(from.getTime() + 6).toISOString()]], 'the five calls after the crossing are blocked')
  t.same(replayed!.crossings.map((crossing: any) => [crossing.threshold, crossing.spent]), [['50', '0.5']], 'at the fifth call')
  t.equal(replayed!.periods[0].spent, '0.5')
})

t.test('a call the replay downgrades is priced at the cheaper model\'s rates from the usage it reported', async (t) => {
  // gpt-4o calls recorded through the gate on a roomy budget; the proposal makes the budget small and soft with
  // auto-downgrade at 10%: the calls after the crossing go to gpt-4o-mini (the gate's default downgrade), each
  // priced at its list rates (0.15 and 0.6 per 1M tokens) from the tokens the gpt-4o call reported.
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const budget = await gateway.createBudget({ name: 'team a', amount: '100' })
  const from = new Date(Date.now() - 1000)
  for (let call = 0; call < 8; call++) {
    t.equal((await gateway.call({ team: 'team-a' }, { model: 'gpt-4o', max_tokens: 20 })).statusCode, 200)
    await gateway.settled()
  }
  const to = new Date(Date.now() + 1000)
  const records = await gateway.sql<Array<{ amount: string, input: number, output: number }>>`
    select amount::text, (metadata ->> 'inputTokens')::int as input, (metadata ->> 'outputTokens')::int as output
    from budget_usage_records where metadata ->> 'modelId' = 'gpt-4o' order by occurred_at, id`
  t.equal(records.length, 8)
  const toUnits10 = (decimal: string) => { const [whole, fraction = ''] = decimal.split('.'); return BigInt(whole!) * 10_000_000_000n + BigInt(fraction.padEnd(10, '0')) }
  // The proposal: 10% of an amount the first two calls reach; every later call is downgraded.
  const amount = toUnits10(records[0]!.amount) + toUnits10(records[1]!.amount)
  const decimal = (value: bigint) => `${value / 10_000_000_000n}.${(value % 10_000_000_000n).toString().padStart(10, '0')}`
  const proposal = { update: [{ id: budget.id, changes: { amount: decimal(amount * 10n), enforcement: 'soft', alerts: [{ threshold: 10, actions: ['auto-downgrade'] }] } }] }
  const result = await simulate(gateway, { from: from.toISOString(), to: to.toISOString(), proposal })
  const [replayed] = result.budgets
  let expected = 0n
  for (const [index, record] of records.entries()) {
    // units of 10^-10: (tokens x rate per 1M) / 10^6, rounded up once
    const cheaper = (BigInt(record.input) * 1_500_000_000n + BigInt(record.output) * 6_000_000_000n + 999_999n) / 1_000_000n
    expected += index < 2 ? toUnits10(record.amount) : cheaper
  }
  t.same(replayed!.downgraded.map((outcome: any) => [outcome.code, outcome.count]), [['auto_downgrade', 6]], 'six calls downgraded')
  t.equal(replayed!.periods[0].spent, String(Number(decimal(expected))), 'each priced at gpt-4o-mini\'s rates from its own tokens')
  t.ok(result.unknowns.some((line) => /priced at the cheaper model's rates/.test(line)), 'and the answer says how')
  t.notOk(result.unknowns.some((line) => /counted at its recorded cost\./.test(line)))
})

t.test('a tree replayed: each refusal on the budget that really bound it, each crossing on its budget', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const org = await gateway.createBudget({ name: 'org', scopeType: 'organization', scopeId: 'org-1', amount: '0.005', alerts: [{ threshold: 60, actions: ['notify'] }] })
  const teams = [
    await gateway.createBudget({ name: 'team a', scopeId: 'team-a', parentId: org.id, amount: '0.003', alerts: [{ threshold: 50, actions: ['notify'] }] }),
    await gateway.createBudget({ name: 'team b', scopeId: 'team-b', parentId: org.id, amount: '0.004' })
  ]
  const from = new Date(Date.now() - 1000)
  const answers: number[] = []
  for (let call = 0; call < 48; call++) {
    const response = await gateway.call({ organization: 'org-1', team: call % 2 === 0 ? 'team-a' : 'team-b' }, { model: 'gpt-4o', max_tokens: call % 5 === 4 ? 300 : 20 })
    answers.push(response.statusCode)
    await gateway.settled()
  }
  await gateway.app.budgetDecisions.flush()
  const to = new Date(Date.now() + 1000)
  const decisions = await gateway.sql<Array<{ budget: string, code: string, count: number, first: Date }>>`
    select budget_id::text as budget, code, count(*)::int as count, min(at) as first from budget_decision_log
    where outcome = 'refused' group by budget_id, code order by budget_id, code`
  t.ok(new Set(decisions.map((row) => row.budget)).size >= 2, `refusals bound by more than one budget of the tree (${JSON.stringify(decisions.map((row) => row.budget))})`)
  const crossings = await gateway.sql<Array<{ budget: string, threshold: string, spent: string }>>`
    select budget_id::text as budget, threshold::text, spent::text from budget_alert_history where basis = 'current' order by budget_id, threshold`
  t.ok(crossings.length >= 2, 'thresholds were crossed in reality')

  const result = await simulate(gateway, { from: from.toISOString(), to: to.toISOString() })
  t.equal(result.events, answers.length)
  const ids = [org.id, ...teams.map((team) => team.id)]
  t.same(result.budgets.map((budget) => budget.budgetId).sort(), [...ids].sort(), 'the replay met the three budgets')
  const replayedRefusals = result.budgets.flatMap((budget) => budget.refused.map((outcome: any) => ({ budget: budget.budgetId, code: outcome.code, count: outcome.count, first: outcome.firstAt })))
    .sort((a, b) => `${a.budget}|${a.code}`.localeCompare(`${b.budget}|${b.code}`))
  t.same(replayedRefusals, decisions.map((row) => ({ budget: row.budget, code: row.code, count: row.count, first: row.first.toISOString() })),
    'the same refusals on the same binding budgets')
  const replayedCrossings = result.budgets.flatMap((budget) => budget.crossings.map((crossing: any) => ({ budget: budget.budgetId, threshold: crossing.threshold, spent: crossing.spent })))
    .sort((a, b) => `${a.budget}|${a.threshold}`.localeCompare(`${b.budget}|${b.threshold}`))
  t.same(replayedCrossings, crossings.map((row) => ({ budget: row.budget, threshold: String(Number(row.threshold)), spent: String(Number(row.spent)) })),
    'the same crossings on the same budgets')
})

t.test('a proposal of half the amount refuses more, earlier, and names the spend that would not have happened', async (t) => {
  const { gateway, budget, from, to } = await recordPeriod(t)
  const asIs = await simulate(gateway, { from: from.toISOString(), to: to.toISOString() })
  const halved = await simulate(gateway, { from: from.toISOString(), to: to.toISOString(), proposal: { update: [{ id: budget.id, changes: { amount: '0.002' } }] } })
  const count = (result: typeof asIs) => result.budgets[0]!.refused.reduce((sum: number, outcome: any) => sum + outcome.count, 0)
  t.ok(count(halved) > count(asIs), `more refusals (${count(halved)} > ${count(asIs)})`)
  t.ok(halved.budgets[0]!.refused[0].firstAt <= asIs.budgets[0]!.refused[0].firstAt, 'the first refusal no later')
  t.equal(halved.budgets[0]!.proposed, true)
  t.ok(Number(halved.budgets[0]!.avoidedSpend) > 0, `spend that would not have happened: ${halved.budgets[0]!.avoidedSpend as string}`)
  t.ok(Number(halved.budgets[0]!.periods[0].spent) <= 0.002, 'a hard budget never spends past its amount in the replay')
  const [row] = await gateway.sql<Array<{ amount: string }>>`select amount::text from budget_definitions where id = ${budget.id}`
  t.equal(Number(row!.amount), 0.004, 'the budget is as it was')

  // a new budget for one user, tighter still: it binds that user's refusals, and is gone afterwards
  const user = await simulate(gateway, {
    from: from.toISOString(), to: to.toISOString(),
    proposal: { create: [{ name: 'user 0', scopeType: 'user', scopeId: 'user-0', amount: '0.0005', currency: 'USD', period: 'monthly', startDate: '2024-01-01' }] }
  })
  const proposedUser = user.budgets.find((entry) => entry.name === 'user 0')
  t.match(proposedUser, { proposed: true, refused: [{ code: 'budget_exceeded' }] }, 'the proposed budget refuses its user\'s calls')
  t.ok(Number(proposedUser!.periods[0].spent) <= 0.0005)
  t.equal(await gateway.sql`select 1 from budget_definitions where name = 'user 0'`.then((rows) => rows.length), 0, 'the proposed budget is gone')

  // a proposal the registry refuses is a 400 and changes nothing
  const before = await snapshotTables(gateway.sql)
  const bad = await gateway.app.inject({ method: 'POST', url: `${PREFIX}/simulate`, headers: AUTH, body: { from: from.toISOString(), to: to.toISOString(), proposal: { update: [{ id: budget.id, changes: { amount: '-1' } }] } } })
  t.equal(bad.statusCode, 400)
  t.same(await snapshotTables(gateway.sql), before, 'a refused simulation changes nothing, not even the audit log')
})

t.test('a replay changes nothing but its own audit entry: no alert, notification, cache row or budget', async (t) => {
  const { gateway, budget, from, to } = await recordPeriod(t)
  const before = await snapshotTables(gateway.sql) as Record<string, string[]>
  // a proposal that would cross thresholds and block, on a budget and a new one
  await simulate(gateway, {
    from: from.toISOString(), to: to.toISOString(),
    proposal: {
      update: [{ id: budget.id, changes: { amount: '0.001', alerts: [{ threshold: 10, actions: ['notify', 'block-all'], notificationChannels: ['email'] }] } }],
      create: [{ name: 'user budget', scopeType: 'user', scopeId: 'user-1', amount: '0.0005', currency: 'USD', period: 'daily', startDate: '2024-01-01', alerts: [{ threshold: 50, actions: ['notify'] }] }]
    }
  })
  const after = await snapshotTables(gateway.sql) as Record<string, string[]>
  for (const table of Object.keys(before)) {
    if (table === 'budget_audit_log') continue
    t.same(after[table], before[table], `${table} unchanged`)
  }
  t.equal(after.budget_audit_log!.length, before.budget_audit_log!.length + 1, 'one audit entry more')
  const [entry] = await gateway.sql`select action, budget_id, actor, after from budget_audit_log order by id desc limit 1`
  t.match(entry, { action: 'simulate', budget_id: null, actor: 'admin' })
  t.equal(entry!.after.from, from.toISOString())
})

t.test('NDJSON: progress lines then the result; a client that hangs up cancels the replay', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  await gateway.createBudget({ name: 'team a', amount: '1000' })
  // Many recorded calls, written as the gate writes them (allocations aside, which the replay of gated calls does not
  // read; so no budget, and the nil root, which Citus places a row of no budget by).
  await gateway.sql`
    insert into budget_usage_records (root_id, amount, currency, source, metadata, occurred_at, allocated_by_settlement)
    select ${NIL_ROOT}::uuid, 0.001, 'USD', 'gate', jsonb_build_object('modelId', 'gpt-4o', 'estimatedCost', '0.002', 'teamId', 'team-a', 'userId', 'u' || (i % 50)),
           now() - interval '1 hour' + i * interval '1 millisecond', true
    from generate_series(1, 300000) i`
  const address = await gateway.app.listen({ port: 0, host: '127.0.0.1' })
  const body = JSON.stringify({ from: new Date(Date.now() - 2 * 3600_000).toISOString(), to: new Date().toISOString() })

  // a short range runs to its end: progress lines, then the result
  const short = await gateway.app.inject({
    method: 'POST', url: `${PREFIX}/simulate`, headers: { ...AUTH, accept: 'application/x-ndjson' },
    body: { from: new Date(Date.now() - 3600_000 - 1000).toISOString(), to: new Date(Date.now() - 3600_000 + 1000).toISOString() }
  })
  t.equal(short.statusCode, 200)
  t.match(short.headers['content-type'], /application\/x-ndjson/)
  const lines = short.body.trim().split('\n').map((line) => JSON.parse(line))
  t.ok(lines.length >= 2)
  t.ok(lines.slice(0, -1).every((line) => line.type === 'progress'), 'progress lines first')
  t.equal(lines.at(-1).type, 'result', 'the result last')
  t.ok(lines.at(-1).events > 0)

  // the whole hour: hang up at the first progress line
  const auditBefore = await gateway.sql`select count(*)::int as n from budget_audit_log where action = 'simulate'`
  await new Promise<void>((resolve) => {
    const request = httpRequest(`${address}${PREFIX}/simulate`, { method: 'POST', headers: { ...AUTH, accept: 'application/x-ndjson', 'content-type': 'application/json' } }, (response) => {
      response.once('data', () => { request.destroy(); resolve() })
      response.once('error', () => {})
    })
    request.once('error', () => {})
    request.once('close', () => resolve())
    request.end(body)
  })
  // the statement is cancelled within moments: no replay runs on, and no audit entry is written
  const deadline = Date.now() + 5000
  let running = 1
  while (Date.now() < deadline) {
    const [row] = await gateway.sql`select count(*)::int as n from pg_stat_activity where query like '%budget_simulate_slice%' and state = 'active' and pid <> pg_backend_pid()`
    running = row!.n
    if (running === 0) break
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  t.equal(running, 0, 'the replay\'s statement was cancelled')
  const auditAfter = await gateway.sql`select count(*)::int as n from budget_audit_log where action = 'simulate'`
  t.equal(auditAfter[0]!.n, auditBefore[0]!.n, 'a cancelled replay is not audited as run')
})

t.test('bad input is a 400 and changes nothing', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const before = await snapshotTables(gateway.sql)
  for (const body of [{}, { from: 'yesterday', to: '2024-01-02' }, { from: '2024-01-02', to: '2024-01-01' }, { from: '2024-01-01', to: '2024-01-02', extra: 1 },
    { from: '2024-01-01', to: '2024-01-02', proposal: { update: [{ id: 'not-a-budget', changes: { amount: '5' } }] } }]) {
    const response = await gateway.app.inject({ method: 'POST', url: `${PREFIX}/simulate`, headers: AUTH, body })
    t.ok(response.statusCode >= 400 && response.statusCode < 500, `${JSON.stringify(body)}: ${response.statusCode}`)
  }
  // streamed: a bad request is still a 4xx with the API's error body, before any line
  const streamed = await gateway.app.inject({ method: 'POST', url: `${PREFIX}/simulate`, headers: { ...AUTH, accept: 'application/x-ndjson' }, body: { from: '2024-01-02', to: '2024-01-01' } })
  t.equal(streamed.statusCode, 400)
  t.match(streamed.json(), { code: 'BUDGET_ERR_VALIDATION', field: 'to' })
  t.same(await snapshotTables(gateway.sql), before)
})
