// Adversarial review of shadow budgets: a shadow budget must never refuse a call nor leave a hard budget
// over its limit, and its as-if ledger must stay its own.
import t from 'tap'
import { PREFIX, ADMIN_TOKEN } from './fixtures/app.js'
import { buildGateway, spendTo } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'
import { startUpstream } from './fixtures/upstream.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }

t.test('a shadow budget without an exchange rate into its currency does not refuse a call its hard sibling admits', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  await gateway.createBudget({ amount: '1000', currency: 'EUR', enforcement: 'shadow' })
  const hard = await gateway.createBudget({ scopeType: 'organization', scopeId: 'org-a', amount: '1' })
  const answer = await gateway.call({ team: 'team-a', organization: 'org-a' }, { model: 'gpt-4o-mini', max_tokens: 20 })
  t.equal(answer.statusCode, 200, `a shadow budget never refuses (got ${answer.statusCode} ${answer.body})`)
  await gateway.settled()
  t.ok((await gateway.status(hard.id)).currentAmount !== '0', 'the hard budget was charged')
  await checkInvariants(t, gateway.sql)
})

t.test('switching a shadow budget away from shadow with a hold it would have refused in flight: to hard is refused (409), to soft leaves no excluded spend', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const budget = await gateway.createBudget({ amount: '0.001', enforcement: 'shadow' })
  const release = upstream.hold()
  const pending = gateway.call({ team: 'team-a' }, { model: 'gpt-4o', max_tokens: 4000 })
  await upstream.waitForCalls(1)
  const [marked] = await gateway.sql`select count(*)::int as n from budget_reservations where budget_id = ${budget.id} and as_if_excluded`
  t.equal(marked!.n, 1, 'the in-flight hold is marked as one a hard twin would have refused')
  const refused = await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: AUTH, body: { enforcement: 'hard' } })
  t.equal(refused.statusCode, 409, 'held past its amount: a hard budget would start over its limit')
  t.equal(refused.json().code, 'BUDGET_ERR_ENFORCEMENT_OVER_LIMIT')
  const put = await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: AUTH, body: { enforcement: 'soft' } })
  t.equal(put.statusCode, 200, put.body)
  release()
  t.equal((await pending).statusCode, 200)
  await gateway.settled()
  t.same(await gateway.sql`select s.budget_id from budget_shadow_windows s join budget_definitions d on d.id = s.budget_id
                   where d.enforcement <> 'shadow' and s.excluded_amount > 0`, [], 'only a shadow budget excludes spend')
  await checkInvariants(t, gateway.sql)
})

t.test('a hard parent above a shadow child is never overspent by concurrent calls', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json-worst-case' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const parent = await gateway.createBudget({ scopeType: 'organization', scopeId: 'org-a', amount: '0.002' })
  await gateway.createBudget({ amount: '0.001', enforcement: 'shadow', parentId: parent.id })
  await gateway.createBudget({ scopeType: 'team', scopeId: 'team-b', amount: '0.001', enforcement: 'shadow', parentId: parent.id })
  const answers = await Promise.all(Array.from({ length: 40 }, async (_, i) =>
    await gateway.call({ team: i % 2 === 0 ? 'team-a' : 'team-b', organization: 'org-a' }, { model: 'gpt-4o', max_tokens: 40 })))
  const served = answers.filter((answer) => answer.statusCode === 200).length
  t.ok(served > 0 && served < 40, `some served, some refused by the hard parent (${served})`)
  t.ok(answers.every((answer) => answer.statusCode === 200 || answer.statusCode === 402), 'no 5xx')
  await gateway.settled()
  await checkInvariants(t, gateway.sql)
})

t.test('one call clamped by a hard sibling is counted once by a shadow budget that would have refused it', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const shadow = await gateway.createBudget({ amount: '0.001', enforcement: 'shadow' })
  const hard = await gateway.createBudget({ scopeType: 'organization', scopeId: 'org-a', amount: '0.01', nearLimit: 'clamp' })
  await spendTo(gateway.app, hard.id, '0.009')
  const answer = await gateway.call({ team: 'team-a', organization: 'org-a' }, { model: 'gpt-4o', max_tokens: 4000 })
  t.equal(answer.statusCode, 200, answer.body)
  t.ok(answer.headers['x-budget-clamped-max-tokens'] !== undefined, 'the hard sibling clamped the call')
  await gateway.settled()
  const counts = await gateway.sql`select code, outcome, calls::int from budget_shadow_counts where budget_id = ${shadow.id}`
  t.same(counts.map((row) => row.calls).reduce((a: number, b: number) => a + b, 0), 1, `one call, one verdict counted: ${JSON.stringify(counts)}`)
  await checkInvariants(t, gateway.sql)
})

t.test('a hard budget switched to shadow while a process holds a lease on it: calls its hard twin would refuse are served and counted', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url })
  const budget = await gateway.createBudget({ amount: '0.02' })
  for (let i = 0; i < 8; i++) t.equal((await gateway.call({ team: 'team-a' })).statusCode, 200)
  const leases = async () => (await gateway.sql`select count(distinct id)::int as count from budget_reservations where lease`)[0]!.count as number
  t.ok(await leases() > 0, 'the line is hot: a lease holds a slice of it')
  const put = await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: AUTH, body: { enforcement: 'shadow', amount: '0.00001' } })
  t.equal(put.statusCode, 200, put.body)
  const answer = await gateway.call({ team: 'team-a' })
  t.equal(answer.statusCode, 200, 'a shadow budget never refuses')
  t.equal(answer.headers['x-budget-shadow'], `${budget.id};code=budget_exceeded;outcome=refused`, 'the call its hard twin would refuse is named')
  await gateway.settled()
  const counts = await gateway.sql`select calls::int from budget_shadow_counts where budget_id = ${budget.id}`
  t.same(counts.map((row) => row.calls), [1], 'and counted')
  await checkInvariants(t, gateway.sql)
})

t.test('a marked hold on an upstream 500 or a cut stream: released or settled once, excluded spend equal to what it cost', async (t) => {
  const upstream = await startUpstream(t, { mode: 'error-500' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const budget = await gateway.createBudget({ amount: '0.001', enforcement: 'shadow' })
  const failed = await gateway.call({ team: 'team-a' }, { model: 'gpt-4o', max_tokens: 4000 })
  t.ok(failed.statusCode >= 500, 'the upstream failed')
  await gateway.settled()
  upstream.setMode('sse-cut')
  const cut = await gateway.call({ team: 'team-a' }, { model: 'gpt-4o', max_tokens: 4000, stream: true })
  t.equal(cut.statusCode, 200)
  await gateway.settled()
  const [row] = await gateway.sql`select c.current_amount::text as current, coalesce(s.excluded_amount, 0)::text as excluded
    from budget_status_cache c left join budget_shadow_windows s using (budget_id, period_start) where c.budget_id = ${budget.id}`
  t.equal(row!.excluded, row!.current, 'both calls would have been refused: all of the real spend is excluded, once')
  await checkInvariants(t, gateway.sql)
})

t.test('under concurrent calls, a shadow budget\'s as-if spend stays within its limit, as its hard twin\'s would', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json-worst-case' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const budget = await gateway.createBudget({ amount: '0.002', enforcement: 'shadow' })
  const answers = await Promise.all(Array.from({ length: 40 }, async () => await gateway.call({ team: 'team-a' }, { model: 'gpt-4o', max_tokens: 40 })))
  t.ok(answers.every((answer) => answer.statusCode === 200), 'all served')
  const named = answers.filter((answer) => answer.headers['x-budget-shadow'] !== undefined).length
  t.ok(named > 0 && named < 40, `some would have been refused (${named})`)
  await gateway.settled()
  const [row] = await gateway.sql`select (c.current_amount - coalesce(s.excluded_amount, 0))::text as asif, d.amount::text as limit,
    c.current_amount - coalesce(s.excluded_amount, 0) <= d.amount as within
    from budget_status_cache c join budget_definitions d on d.id = c.budget_id
    left join budget_shadow_windows s using (budget_id, period_start) where c.budget_id = ${budget.id}`
  t.ok(row!.within, `as-if spend ${row!.asif} within ${row!.limit}`)
  const [counted] = await gateway.sql`select coalesce(sum(calls), 0)::int as n from budget_shadow_counts where budget_id = ${budget.id}`
  t.equal(counted!.n, named, 'each named call counted once')
  await checkInvariants(t, gateway.sql)
})
