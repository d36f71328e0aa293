// Adversarial review (second round) of shadow budgets: a shadow budget that cannot convert the estimate holds
// nothing, and a switch away from shadow unmarks its holds. Each call's spend must be recorded exactly once.
import t from 'tap'
import { PREFIX, ADMIN_TOKEN } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'
import { startUpstream } from './fixtures/upstream.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }

async function until (check: () => Promise<boolean>, timeoutMs = 5_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await check()) return true
    if (Date.now() > deadline) return false
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

t.test('a line whose only budget is a shadow one without a rate: a 500 records nothing, a cut stream and a served call once each', async (t) => {
  const upstream = await startUpstream(t, { mode: 'error-500' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  await gateway.createBudget({ amount: '1000', currency: 'EUR', enforcement: 'shadow' })
  const unbudgeted = async () => (await gateway.sql`select count(*)::int as n from budget_usage_records where budget_id is null`)[0]!.n as number
  const failed = await gateway.call({ team: 'team-a' })
  t.ok(failed.statusCode >= 500, 'the upstream failed')
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.equal(await unbudgeted(), 0, 'a failed call records nothing')
  upstream.setMode('sse-cut')
  const cut = await gateway.call({ team: 'team-a' }, { stream: true })
  t.equal(cut.statusCode, 200)
  t.ok(await until(async () => await unbudgeted() >= 1), 'the cut stream is recorded')
  upstream.setMode('json')
  const served = await gateway.call({ team: 'team-a' })
  t.equal(served.statusCode, 200)
  t.ok(await until(async () => await unbudgeted() >= 2), 'the served call is recorded')
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.equal(await unbudgeted(), 2, 'each recorded once')
  t.same(await gateway.sql`select count(*)::int as n from budget_reservations`, [{ n: 0 }], 'no hold left behind')
  await checkInvariants(t, gateway.sql)
})

t.test('a shadow budget without a rate beside a hot hard budget (leases): every served call recorded once on the hard budget', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url })
  await gateway.createBudget({ amount: '1000', currency: 'EUR', enforcement: 'shadow' })
  const hard = await gateway.createBudget({ scopeType: 'organization', scopeId: 'org-a', amount: '10' })
  let served = 0
  for (let i = 0; i < 16; i++) if ((await gateway.call({ team: 'team-a', organization: 'org-a' })).statusCode === 200) served++
  t.equal(served, 16, 'all served')
  await gateway.app.close()
  const records = async () => (await gateway.sql`select count(*)::int as n, count(*) filter (where budget_id is null)::int as loose
    from budget_usage_records`)[0]!
  t.ok(await until(async () => (await records()).n >= 16), 'every call recorded')
  t.same(await records(), { n: 16, loose: 0 }, 'each once, all on the hard budget')
  const [alloc] = await gateway.sql`select count(distinct usage_id)::int as n from budget_usage_allocations where budget_id = ${hard.id}`
  t.equal(alloc!.n, 16, 'the hard budget counts each call')
  await checkInvariants(t, gateway.sql)
})

t.test('flipping a budget between shadow and hard while calls settle: no deadlock, no 5xx, a refused switch a 409', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json-worst-case' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const budget = await gateway.createBudget({ amount: '0.002', enforcement: 'shadow' })
  await gateway.createBudget({ scopeType: 'organization', scopeId: 'org-a', amount: '100' })
  const calls = Promise.all(Array.from({ length: 40 }, async () => await gateway.call({ team: 'team-a', organization: 'org-a' }, { model: 'gpt-4o', max_tokens: 40 })))
  const flips: number[] = []
  for (let i = 0; i < 13; i++) {
    const put = await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: AUTH, body: { enforcement: i % 2 === 0 ? 'hard' : 'shadow' } })
    flips.push(put.statusCode)
  }
  const answers = await calls
  // To hard is refused (409) while its spend and holds pass its amount; to shadow is always allowed.
  t.ok(flips.every((code, i) => code === 200 || (code === 409 && i % 2 === 0)), `every switch answered 200, or 409 to hard (${flips.join(',')})`)
  t.ok(answers.every((answer) => answer.statusCode === 200 || answer.statusCode === 402), `no 5xx (${answers.map((a) => a.statusCode).join(',')})`)
  await gateway.settled()
  const [definition] = await gateway.sql`select enforcement from budget_definitions where id = ${budget.id}`
  t.equal(definition!.enforcement, flips[flips.length - 1] === 200 ? 'hard' : 'shadow', 'the last switch decided, or a refused one left it shadow')
  await checkInvariants(t, gateway.sql)
})

t.test('calls a shadow budget took in flight when it is switched to hard: the switch is refused (409), the budget stays shadow', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json-worst-case' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const budget = await gateway.createBudget({ amount: '0.002', enforcement: 'shadow' })
  const release = upstream.hold()
  const pending = Promise.all(Array.from({ length: 6 }, async () => await gateway.call({ team: 'team-a' }, { model: 'gpt-4o', max_tokens: 400 })))
  await upstream.waitForCalls(6)
  const before = await gateway.sql`select * from budget_definitions where id = ${budget.id}`
  const put = await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: AUTH, body: { enforcement: 'hard' } })
  t.equal(put.statusCode, 409, put.body)
  t.equal(put.json().code, 'BUDGET_ERR_ENFORCEMENT_OVER_LIMIT')
  t.match(put.json().message, /spent and .* held, more than its amount 0\.002\. Raise the amount, wait for the holds to settle or the next period, or switch it to soft/)
  t.same(await gateway.sql`select * from budget_definitions where id = ${budget.id}`, before, 'a refused switch changes nothing')
  release()
  t.ok((await pending).every((answer) => answer.statusCode === 200), 'all served')
  await gateway.settled()
  await checkInvariants(t, gateway.sql)
})

t.test('a shadow budget with nothing in flight and its spend under its amount switches to hard (200)', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const budget = await gateway.createBudget({ amount: '1000', enforcement: 'shadow' })
  t.equal((await gateway.call({ team: 'team-a' })).statusCode, 200)
  await gateway.settled()
  const [window] = await gateway.sql`select current_amount::text as spent, reserved_amount::text as held from budget_status_cache where budget_id = ${budget.id}`
  t.ok(window !== undefined && Number(window.spent) > 0 && Number(window.held) === 0, 'some spend, nothing held')
  const put = await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: AUTH, body: { enforcement: 'hard' } })
  t.equal(put.statusCode, 200, put.body)
  t.equal(put.json().enforcement, 'hard')
  await checkInvariants(t, gateway.sql)
})

t.test('a shadow budget without a rate, alone on its line with a token rate limit: upstream 500s give their tokens back', async (t) => {
  const upstream = await startUpstream(t, { mode: 'error-500' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  await gateway.createBudget({ amount: '1000', currency: 'EUR', enforcement: 'shadow', rateLimits: { tokensPerMinute: 200 } })
  const codes: number[] = []
  for (let i = 0; i < 12; i++) codes.push((await gateway.call({ team: 'team-a' })).statusCode)
  t.ok(codes.every((code) => code >= 500 && code !== 429), `a call that used no tokens takes none of the allowance (${codes.join(',')})`)
  await checkInvariants(t, gateway.sql)
})

t.test('control: the same with a rate into its currency (a hold is made): upstream 500s give their tokens back', async (t) => {
  const upstream = await startUpstream(t, { mode: 'error-500' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  await gateway.createBudget({ amount: '1000', enforcement: 'shadow', rateLimits: { tokensPerMinute: 200 } })
  const codes: number[] = []
  for (let i = 0; i < 12; i++) codes.push((await gateway.call({ team: 'team-a' })).statusCode)
  t.ok(codes.every((code) => code >= 500 && code !== 429), `a call that used no tokens takes none of the allowance (${codes.join(',')})`)
  await gateway.settled()
  await checkInvariants(t, gateway.sql)
})

t.test('a shadow-only line without a rate: a client that hangs up mid-stream has its call recorded once, as a held call\'s is', async (t) => {
  const upstream = await startUpstream(t, { mode: 'sse' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  await gateway.createBudget({ amount: '1000', currency: 'EUR', enforcement: 'shadow' })
  const held = await gateway.createBudget({ scopeType: 'team', scopeId: 'team-b', amount: '1000', enforcement: 'shadow' })
  const address = await gateway.app.listen({ port: 0, host: '127.0.0.1' })
  const leave = async (team: string) => {
    const abort = new AbortController()
    const response = await fetch(`${address}/v1/chat/completions`, {
      method: 'POST', signal: abort.signal, headers: { 'content-type': 'application/json', 'x-relay-team-id': team },
      body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 200, stream: true })
    })
    const reader = response.body!.getReader()
    await reader.read()
    abort.abort()
    await reader.cancel().catch(() => {})
  }
  await leave('team-b')
  await leave('team-a')
  await gateway.settled()
  const counts = async () => (await gateway.sql`select count(*) filter (where budget_id is null)::int as loose,
    count(*) filter (where budget_id = ${held.id})::int as held from budget_usage_records`)[0]!
  await until(async () => { const c = await counts(); return c.loose >= 1 && c.held >= 1 })
  await new Promise((resolve) => setTimeout(resolve, 300))
  const c = await counts()
  t.equal(c.loose, c.held, `the call with no hold is recorded as the held one is (${JSON.stringify(c)})`)
  t.ok(c.loose <= 1, 'never twice')
  await checkInvariants(t, gateway.sql)
})

t.test('a shadow budget without a rate beside a hard one, the hold swept on expiry before the call ends: its spend counted once', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 100, reservationTtlMs: 1000 } })
  await gateway.createBudget({ amount: '1000', currency: 'EUR', enforcement: 'shadow' })
  const hard = await gateway.createBudget({ scopeType: 'organization', scopeId: 'org-a', amount: '1000' })
  const release = upstream.hold()
  const pending = gateway.call({ team: 'team-a', organization: 'org-a' })
  await upstream.waitForCalls(1)
  t.ok(await until(async () => (await gateway.sql`select count(*)::int as n from budget_reservations`)[0]!.n === 0, 8000), 'the hold is swept')
  release()
  t.equal((await pending).statusCode, 200)
  await new Promise((resolve) => setTimeout(resolve, 500))
  const rows = await gateway.sql`select budget_id from budget_usage_records`
  t.same(rows.map((row) => row.budget_id), [hard.id], 'one record, on the hard budget (at its estimate), none without a budget')
  await checkInvariants(t, gateway.sql)
})

t.test('the record of a call no budget holds, sent again with the same request id (sequential and concurrent), is stored once', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  await gateway.createBudget({ amount: '1000', currency: 'EUR', enforcement: 'shadow' })
  const integration = gateway.app.budgetIntegration
  const held = await integration.reserveCall({ team: 'team-a' } as never, '0.01' as never, { requestId: 'retried-call' })
  t.equal(held.reservationId, null, 'a line of only a shadow budget without a rate holds nothing')
  t.ok(held.check.canProceed)
  await integration.recordUnbudgetedCall('0.01', { requestId: 'retried-call' })
  await Promise.all([integration.recordUnbudgetedCall('0.01', { requestId: 'retried-call' }), integration.recordUnbudgetedCall('0.01', { requestId: 'retried-call' })])
  const rows = await gateway.sql`select amount::text from budget_usage_records where budget_id is null`
  t.equal(rows.length, 1, 'stored once')
  await checkInvariants(t, gateway.sql)
})
