// Shadow budgets: evaluated on every call as a hard budget would be, never refusing, clamping, downgrading
// or holding room, and recording what the hard one would have done. The twin test drives the same traffic
// through a gateway with a hard budget and through another with its shadow twin, call by call.
import type { Sql } from 'postgres'
import t from 'tap'
import { PREFIX, ADMIN_TOKEN } from './fixtures/app.js'
import { buildGateway, spendTo } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'
import { startUpstream } from './fixtures/upstream.js'
import { toUnits } from '../lib/kernel/money.js'
import { alertEmail, type AlertEvent } from '../lib/alerts/notifications.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }

// A deterministic sequence: output limits from small to large, so that some calls fit and some do not, and
// the spend climbs past a block-all threshold part way.
const SEQUENCE = Array.from({ length: 36 }, (_, i) => ({
  model: 'gpt-4o',
  messages: [{ role: 'user', content: `Request number ${i}: say something` }],
  max_tokens: [40, 300, 90, 600, 25, 180, 1200, 60][i % 8]!
}))

/** A budget as the twin test makes it: 0.01 USD, block-all at 90 %, with the given enforcement. */
const twin = (enforcement: 'hard' | 'shadow') => ({
  amount: '0.01', enforcement, alerts: [{ threshold: 90, actions: ['notify', 'block-all'], notificationChannels: [] }]
})

async function metric (app: { inject: (options: { url: string, headers: Record<string, string> }) => Promise<{ body: string }> }, sample: string): Promise<number | undefined> {
  const text = (await app.inject({ url: `${PREFIX}/metrics`, headers: AUTH })).body
  const line = text.split('\n').find((row) => row.startsWith(`${sample} `))
  return line === undefined ? undefined : Number(line.slice(sample.length + 1))
}

t.test('the twin test: what the hard budget refused, its shadow twin counted with the same code, and refused nothing', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json' })
  const hard = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const shadow = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const hardBudget = await hard.createBudget(twin('hard'))
  const shadowBudget = await shadow.createBudget(twin('shadow'))
  await spendTo(hard.app, hardBudget.id, '0.0075')
  await spendTo(shadow.app, shadowBudget.id, '0.0075')

  const refusedByHard = new Map<string, number>()
  for (const [index, body] of SEQUENCE.entries()) {
    const hardAnswer = await hard.call({ team: 'team-a' }, body)
    const shadowAnswer = await shadow.call({ team: 'team-a' }, body)
    t.equal(shadowAnswer.statusCode, 200, `call ${index}: the shadow budget refused nothing`)
    const header = shadowAnswer.headers['x-budget-shadow']
    if (hardAnswer.statusCode === 200) {
      t.equal(header, undefined, `call ${index}: the hard budget let it through, the shadow one counted nothing`)
    } else {
      t.equal(hardAnswer.statusCode, 402, `call ${index}: refused by the hard budget`)
      const code = hardAnswer.json().error.code as string
      refusedByHard.set(code, (refusedByHard.get(code) ?? 0) + 1)
      t.equal(header, `${shadowBudget.id};code=${code};outcome=refused`, `call ${index}: the shadow twin names the same refusal (${code})`)
    }
    // One call at a time, each settled: the as-if ledger and the hard one see the same history.
    await hard.settled()
    await shadow.settled()
  }
  t.ok((refusedByHard.get('budget_exceeded') ?? 0) > 0 && (refusedByHard.get('budget_blocked') ?? 0) > 0,
    `the sequence meets both refusals for room and for an action: ${JSON.stringify([...refusedByHard])}`)
  t.ok([...refusedByHard.values()].reduce((a, b) => a + b, 0) < SEQUENCE.length, 'and lets some calls through')

  // The ledgers: the shadow budget's as-if spend is the hard budget's spend, to the unit.
  const hardStatus = await hard.status(hardBudget.id)
  const [window] = await shadow.sql`select c.current_amount::text as current, coalesce(s.excluded_amount, 0)::text as excluded
    from budget_status_cache c left join budget_shadow_windows s using (budget_id, period_start) where c.budget_id = ${shadowBudget.id}`
  t.equal(toUnits(window!.current) - toUnits(window!.excluded), toUnits(hardStatus.currentAmount), 'as-if spend = the hard twin\'s spend')
  t.ok(toUnits(window!.current) > toUnits(hardStatus.currentAmount), 'while the shadow budget really spent more')
  const counts = await shadow.sql`select code, outcome, calls::int from budget_shadow_counts where budget_id = ${shadowBudget.id} order by code`
  t.same(counts.map((row) => [row.code, row.outcome, row.calls]), [...refusedByHard].sort().map(([code, calls]) => [code, 'refused', calls]), 'counted per code and outcome')
  await checkInvariants(t, hard.sql)
  await checkInvariants(t, shadow.sql)
  t.same(await shadow.sql`select id from budget_reservations`, [], 'no live hold left')
  await checkShadowLedger(t, shadow.sql)
})

/** The as-if ledger's own rules: it never excludes more than was spent, and only shadow budgets mark holds or exclude spend. */
async function checkShadowLedger (t: { same: (found: unknown, wanted: unknown, message: string) => unknown }, sql: Sql): Promise<void> {
  t.same(await sql`select s.budget_id from budget_shadow_windows s join budget_status_cache c using (budget_id, period_start)
                   where s.excluded_amount > c.current_amount`, [], 'no window excludes more than it spent')
  t.same(await sql`select r.id from budget_reservations r join budget_definitions d on d.id = r.budget_id
                   where r.as_if_excluded and d.enforcement <> 'shadow'`, [], 'only a shadow budget\'s holds are marked')
  t.same(await sql`select s.budget_id from budget_shadow_windows s join budget_definitions d on d.id = s.budget_id
                   where d.enforcement <> 'shadow' and s.excluded_amount > 0`, [], 'only a shadow budget excludes spend')
}

t.test('a shadow verdict is named on the response, kept on the usage record, counted in the metrics and the status', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const budget = await gateway.createBudget({ amount: '0.001', enforcement: 'shadow' })
  const answer = await gateway.call({ team: 'team-a' }, { model: 'gpt-4o', max_tokens: 4000 })
  t.equal(answer.statusCode, 200, 'served: a shadow budget never refuses')
  t.equal(answer.headers['x-budget-shadow'], `${budget.id};code=budget_exceeded;outcome=refused`)
  t.equal(answer.headers['x-budget-clamped-max-tokens'], undefined, 'nor clamps')
  t.equal(upstream.calls.at(-1)!.body.max_tokens, 4000, 'the upstream was asked what the caller asked')
  await gateway.settled()
  const [record] = await gateway.sql`select metadata from budget_usage_records where source = 'gateway'`
  const [shadow] = record!.metadata.shadow
  t.match(shadow, { budgetId: budget.id, code: 'budget_exceeded', outcome: 'refused', limit: '0.001', currency: 'USD', reason: /has 0\.001 left/ })
  t.equal(await metric(gateway.app, 'relaycore_budget_shadow_decisions_total{code="budget_exceeded",outcome="refused"}'), 1)

  const small = await gateway.call({ team: 'team-a' }, { model: 'gpt-4o-mini', max_tokens: 10 })
  t.equal(small.statusCode, 200)
  t.equal(small.headers['x-budget-shadow'], undefined, 'a call the hard twin would take is not named')
  await gateway.settled()
  const status = await gateway.status(budget.id)
  t.equal(status.enforcement, 'shadow')
  t.match(status.shadow, { counts: [{ code: 'budget_exceeded', outcome: 'refused', calls: 1 }] })
  t.equal(toUnits(status.shadow.asIfCurrentAmount), toUnits(status.currentAmount) - toUnits(status.shadow.excludedAmount), 'as-if spend = spend less what it would have refused')
  t.ok(toUnits(status.shadow.excludedAmount) > 0n, 'the refused call\'s real cost is excluded')
  await checkInvariants(t, gateway.sql)
  await checkShadowLedger(t, gateway.sql)
})

t.test('a shadow budget whose hard twin would clamp counts a clamp, and never clamps', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const budget = await gateway.createBudget({ amount: '0.01', enforcement: 'shadow', nearLimit: 'clamp' })
  await spendTo(gateway.app, budget.id, '0.009')
  const answer = await gateway.call({ team: 'team-a' }, { model: 'gpt-4o', max_tokens: 4000 })
  t.equal(answer.statusCode, 200)
  t.equal(answer.headers['x-budget-shadow'], `${budget.id};code=budget_exceeded;outcome=clamped`)
  t.equal(upstream.calls.at(-1)!.body.max_tokens, 4000, 'not clamped')
  await gateway.settled()
  const [window] = await gateway.sql`select coalesce((select excluded_amount from budget_shadow_windows where budget_id = ${budget.id}), 0)::text as excluded`
  t.equal(toUnits(window!.excluded), 0n, 'a clamped call stays in the as-if ledger at its real cost (the limit the docs state)')
  await checkInvariants(t, gateway.sql)
  await checkShadowLedger(t, gateway.sql)
})

t.test('a shadow budget holds no room: a hard budget beside it decides alone, and no lease is taken on its line', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const shadow = await gateway.createBudget({ amount: '0.0001', enforcement: 'shadow' })
  const hard = await gateway.createBudget({ scopeType: 'organization', scopeId: 'org-a', amount: '1' })
  for (let i = 0; i < 5; i++) {
    const answer = await gateway.call({ team: 'team-a', organization: 'org-a' }, { model: 'gpt-4o', max_tokens: 500 })
    t.equal(answer.statusCode, 200, `call ${i}: the hard budget has room`)
    t.equal(answer.headers['x-budget-id'] ?? hard.id, hard.id)
  }
  await gateway.settled()
  t.same(await gateway.sql`select id from budget_reservations where lease`, [], 'no lease on a line with a shadow budget')
  const counts = await gateway.sql`select calls::int from budget_shadow_counts where budget_id = ${shadow.id}`
  t.same(counts.map((row) => row.calls), [5], 'each call counted by the shadow budget')
  await checkInvariants(t, gateway.sql)
  await checkShadowLedger(t, gateway.sql)
})

t.test('a shadow budget that cannot convert the estimate holds nothing, records none of its spend, and never refuses', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const shadow = await gateway.createBudget({ amount: '1000', currency: 'EUR', enforcement: 'shadow' })
  // Its line's only budget: no rate into EUR, nothing decides, and the call is recorded as one no budget covers.
  const alone = await gateway.call({ team: 'team-a' }, { model: 'gpt-4o-mini', max_tokens: 20 })
  t.equal(alone.statusCode, 200, alone.body)
  t.equal(alone.headers['x-budget-shadow'], `${shadow.id};code=exchange_rate_missing;outcome=refused`)
  // No hold to wait for: its record commits after the response, in the settlements' next batch.
  const unbudgeted = async () => (await gateway.sql`select count(*)::int as n from budget_usage_records where budget_id is null`)[0]!.n as number
  for (const deadline = Date.now() + 10_000; await unbudgeted() === 0 && Date.now() < deadline;) await new Promise((resolve) => setTimeout(resolve, 20))
  t.equal(await unbudgeted(), 1, 'its spend is recorded, without a budget')
  // Beside a hard budget, past what it can hold at an extreme rate: the hard budget decides and takes the spend.
  const rate = await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/exchange-rates/USD/EUR`, headers: AUTH, body: { rate: '999999999999999999', effectiveFrom: '2024-01-01' } })
  t.equal(rate.statusCode, 201, rate.body)
  const hard = await gateway.createBudget({ scopeType: 'organization', scopeId: 'org-a', amount: '1000' })
  // about 2 USD at worst: past 10^18 EUR at that rate
  const beside = await gateway.call({ team: 'team-a', organization: 'org-a' }, { model: 'gpt-4.1', max_tokens: 32_768, n: 8 })
  t.equal(beside.statusCode, 200, beside.body)
  t.equal(beside.headers['x-budget-shadow'], `${shadow.id};code=estimate_out_of_range;outcome=refused`)
  await gateway.settled()
  t.not((await gateway.status(hard.id)).currentAmount, '0', 'the hard budget was charged')
  t.equal((await gateway.status(shadow.id)).currentAmount, '0', 'the shadow budget took none of either call')
  const counts = await gateway.sql`select code, outcome, calls::int from budget_shadow_counts where budget_id = ${shadow.id} order by code`
  t.same(counts.map((row) => [row.code, row.outcome, row.calls]), [['estimate_out_of_range', 'refused', 1], ['exchange_rate_missing', 'refused', 1]], 'each verdict counted')
  await checkInvariants(t, gateway.sql)
  await checkShadowLedger(t, gateway.sql)
})

t.test('switching a shadow budget to hard is one update, audited; the enforcement takes only the three values', async (t) => {
  const gateway = await buildGateway(t)
  const budget = await gateway.createBudget({ amount: '0.001', enforcement: 'shadow' })
  const changed = await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: AUTH, body: { enforcement: 'hard' } })
  t.equal(changed.statusCode, 200)
  t.equal(changed.json().enforcement, 'hard')
  const entries = await gateway.sql`select action, before, after from budget_audit_log where budget_id = ${budget.id} order by at`
  const update = entries.find((entry) => entry.action === 'budget.updated' || entry.action === 'update')
  t.ok(update !== undefined, `the update is in the audit log (${entries.map((entry) => entry.action).join(', ')})`)
  t.equal(update!.before.enforcement, 'shadow')
  t.equal(update!.after.enforcement, 'hard')
  t.equal((await gateway.call({ team: 'team-a' }, { model: 'gpt-4o', max_tokens: 4000 })).statusCode, 402, 'now it refuses')

  for (const enforcement of ['Shadow', 'shadowed', '', null, 1]) {
    const refused = await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: AUTH, body: { enforcement } })
    t.equal(refused.statusCode, 400, `enforcement ${JSON.stringify(enforcement)} is refused`)
  }
  t.equal((await gateway.status(budget.id)).enforcement, 'hard', 'and changed nothing')
})

t.test('a shadow budget\'s crossings are marked shadow in the history, the webhook event, the email; nothing is in force', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json' })
  const delivered: AlertEvent[] = []
  const gateway = await buildGateway(t, {
    upstreamServer: upstream.url,
    gate: { sweepIntervalMs: 0 },
    notifications: { channels: { hook: { deliver: async (event) => { if (event.type === 'budget.threshold_crossed') delivered.push(event) } } } }
  })
  const budget = await gateway.createBudget({ amount: '0.01', enforcement: 'shadow', alerts: [{ threshold: 50, actions: ['notify', 'block-all'], notificationChannels: ['hook'] }] })
  const hard = await gateway.createBudget({ scopeId: 'team-b', amount: '0.01', alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['hook'] }] })
  await spendTo(gateway.app, budget.id, '0.006')
  await spendTo(gateway.app, hard.id, '0.006')
  await gateway.app.budgetNotifications.deliverDue()

  const alerts = (await gateway.app.inject({ url: `${PREFIX}/${budget.id}/alerts`, headers: AUTH })).json().alerts
  t.match(alerts, [{ threshold: 50, shadow: true }], 'the history marks the crossing shadow')
  t.match((await gateway.app.inject({ url: `${PREFIX}/${hard.id}/alerts`, headers: AUTH })).json().alerts, [{ threshold: 50, shadow: false }], 'a hard budget\'s is not')
  const event = delivered.find((each) => each.budget.id === budget.id)
  t.equal(event?.shadow, true, 'the webhook event says shadow')
  t.match(event?.text, /^\[shadow\] /)
  t.equal(delivered.find((each) => each.budget.id === hard.id)?.shadow, false)
  const email = alertEmail(event!)
  t.match(email.subject, /^\[shadow\] Budget /, 'the email\'s subject says shadow')
  t.match(email.text, /nothing is in force/)
  t.not((await gateway.status(budget.id)).status, 'blocked', 'its status is not blocked: nothing is in force')

  // block-all crossed on the shadow budget: nothing is blocked, the call is named as one a hard budget would block.
  const answer = await gateway.call({ team: 'team-a' }, { model: 'gpt-4o-mini', max_tokens: 10 })
  t.equal(answer.statusCode, 200)
  t.equal(answer.headers['x-budget-shadow'], `${budget.id};code=budget_blocked;outcome=refused`)
  await gateway.settled()
  await checkInvariants(t, gateway.sql)
  await checkShadowLedger(t, gateway.sql)
})

t.test('a hold a shadow budget would have refused, left to expire, is swept into its excluded spend at its estimate', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const budget = await gateway.createBudget({ amount: '1', enforcement: 'shadow' })
  const integration = gateway.app.budgetIntegration
  const fits = await integration.reserveCall({ team: 'team-a' }, '0.6')
  t.same(fits.check.shadow, [], 'the first call fits')
  const over = await integration.reserveCall({ team: 'team-a' }, '0.5')
  t.ok(over.reservationId !== null, 'held: a shadow budget refuses nothing')
  t.match(over.check.shadow, [{ budgetId: budget.id, code: 'budget_exceeded', outcome: 'refused' }], 'a hard twin would have: 0.6 held, 0.5 more is past 1')
  const marked = await gateway.sql`select id::text, as_if_excluded from budget_reservations order by amount desc`
  t.same(marked.map((row) => row.as_if_excluded), [false, true], 'the hold it would have refused is marked')
  await integration.settleCall(fits.reservationId!, '0.6')
  await gateway.sql`update budget_reservations set expires_at = now() - interval '1 second'`
  t.equal(await integration.sweepExpiredReservations(), 1)
  const [window] = await gateway.sql`select c.current_amount::text as current, s.excluded_amount::text as excluded
    from budget_status_cache c join budget_shadow_windows s using (budget_id, period_start) where c.budget_id = ${budget.id}`
  t.same(window, { current: '1.1000000000', excluded: '0.5000000000' }, 'spent 1.1 for real; the as-if ledger 0.6')
  t.match((await gateway.status(budget.id)).shadow, { asIfCurrentAmount: '0.6', excludedAmount: '0.5' })
  await checkInvariants(t, gateway.sql)
  await checkShadowLedger(t, gateway.sql)
})
