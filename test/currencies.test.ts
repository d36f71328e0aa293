// Several currencies (sql/functions/money.sql, exchange-rates.sql): exchange rates that admins set, usage and gated calls counted toward
// every applicable budget in its own currency at the rate in force (rounded up, the rate stored with
// the allocation), and a missing rate that refuses, naming the pair, instead of converting at 1.
import t from 'tap'
import { ADMIN_TOKEN, PREFIX, snapshotTables } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'

const auth = { authorization: `Bearer ${ADMIN_TOKEN}` }
type Gateway = Awaited<ReturnType<typeof buildGateway>>

async function setRate (gateway: Gateway, from: string, to: string, body: Record<string, unknown>) {
  return await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/exchange-rates/${from}/${to}`, headers: auth, body })
}

async function record (gateway: Gateway, budgetId: string, body: Record<string, unknown>) {
  return await gateway.app.inject({ method: 'POST', url: `${PREFIX}/${budgetId}/usage`, headers: auth, body: { source: 'test', ...body } })
}

t.test('exchange rates: set, replaced at the same instant, listed newest first; bad input is a 400 that changes nothing', async (t) => {
  const gateway = await buildGateway(t)
  const first = await setRate(gateway, 'USD', 'EUR', { rate: '0.9200', effectiveFrom: '2024-01-01T00:00:00Z' })
  t.equal(first.statusCode, 201)
  t.match(first.json(), { from: 'USD', to: 'EUR', rate: '0.92', effectiveFrom: '2024-01-01T00:00:00.000Z', setBy: 'admin' })
  t.equal((await setRate(gateway, 'USD', 'EUR', { rate: '0.93', effectiveFrom: '2024-01-01' })).statusCode, 200, 'the same pair and instant: replaced')
  t.equal((await setRate(gateway, 'USD', 'EUR', { rate: 0.95, effectiveFrom: '2025-01-01T00:00:00Z' })).statusCode, 201)
  t.equal((await setRate(gateway, 'EUR', 'USD', { rate: '1.087000000000000001' })).statusCode, 201, '18 decimals kept exactly')
  const list = (await gateway.app.inject({ url: `${PREFIX}/exchange-rates`, headers: auth })).json()
  t.same(list.rates.map((rate: { from: string, to: string, rate: string }) => `${rate.from}/${rate.to} ${rate.rate}`), ['EUR/USD 1.087000000000000001', 'USD/EUR 0.95', 'USD/EUR 0.93', 'USD/EUR 0.92'],
    'the replaced rate stays listed')
  t.equal((await gateway.app.inject({ url: `${PREFIX}/exchange-rates?from=EUR`, headers: auth })).json().rates.length, 1)

  const before = await snapshotTables(gateway.sql)
  for (const [from, to, body, field] of [
    ['USD', 'EUR', { rate: '0' }, 'rate'], ['USD', 'EUR', { rate: '-1' }, 'rate'], ['USD', 'EUR', { rate: 'abc' }, 'rate'],
    ['USD', 'EUR', { rate: '1e3' }, 'rate'], ['USD', 'EUR', { rate: 1e-20 }, 'rate'], ['USD', 'EUR', { rate: '0.1234567890123456789' }, 'rate'],
    ['USD', 'USD', { rate: '1' }, 'to'], ['usd', 'EUR', { rate: '1' }, undefined], ['USD', 'EUR', { rate: '1', effectiveFrom: 'yesterday' }, 'effectiveFrom'],
    ['USD', 'EUR', {}, undefined]
  ] as Array<[string, string, Record<string, unknown>, string | undefined]>) {
    const response = await setRate(gateway, from, to, body)
    t.equal(response.statusCode, 400, `${from}/${to} ${JSON.stringify(body)}`)
    if (field !== undefined) t.equal(response.json().field, field)
  }
  t.same(await snapshotTables(gateway.sql), before, 'nothing changed')
  t.equal((await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/exchange-rates/USD/EUR`, body: { rate: '1' } })).statusCode, 401)
})

t.test('recorded usage counts toward a budget in another currency at the rate in force, rounded up, and keeps that rate', async (t) => {
  const gateway = await buildGateway(t)
  const budget = await gateway.createBudget({ name: 'euro team', currency: 'EUR', amount: '100' })

  const refused = await record(gateway, budget.id, { amount: '10', currency: 'USD', metadata: { requestId: 'r-1' } })
  t.equal(refused.statusCode, 400, 'no rate: refused, never converted at 1')
  t.match(refused.json(), { code: 'BUDGET_ERR_EXCHANGE_RATE_MISSING', field: 'currency', message: /USD to EUR/ })
  t.equal((await gateway.sql`select count(*)::int as n from budget_usage_records`)[0]!.n, 0, 'nothing stored')

  t.equal((await setRate(gateway, 'USD', 'EUR', { rate: '0.92', effectiveFrom: '2024-01-01' })).statusCode, 201)
  t.equal((await setRate(gateway, 'USD', 'EUR', { rate: '5', effectiveFrom: '2099-01-01' })).statusCode, 201, 'a rate not yet in force')
  t.equal((await record(gateway, budget.id, { amount: '10', currency: 'USD', metadata: { requestId: 'r-1' } })).statusCode, 201)
  t.equal((await record(gateway, budget.id, { amount: '3', currency: 'EUR', metadata: { requestId: 'r-2' } })).statusCode, 201, 'in its own currency, as before')
  t.equal((await gateway.status(budget.id)).currentAmount, '12.2', '10 USD at 0.92 is 9.2 EUR, plus 3 EUR')

  // A new rate changes nothing recorded: the allocation keeps the rate it was converted at.
  t.equal((await setRate(gateway, 'USD', 'EUR', { rate: '0.5' })).statusCode, 201)
  t.equal((await gateway.app.inject({ method: 'POST', url: `${PREFIX}/${budget.id}/refresh-cache`, headers: auth })).json().currentAmount, '12.2', 'recomputed from the allocations: unchanged')
  const allocations = await gateway.sql`select amount::text as amount, exchange_rate::text as rate from budget_usage_allocations order by amount desc`
  t.same(allocations.map((row) => [row.amount, Number(row.rate)]), [['9.2000000000', 0.92], ['3.0000000000', 1]])
  t.equal((await record(gateway, budget.id, { amount: '0.0000000003', currency: 'USD', metadata: { requestId: 'r-3' } })).statusCode, 201)
  t.equal((await gateway.status(budget.id)).currentAmount, '12.2000000002', '0.0000000003 x 0.5 = 0.00000000015, rounded up to 0.0000000002')
  t.equal((await record(gateway, budget.id, { amount: '10', currency: 'USD', metadata: { requestId: 'r-1' } })).statusCode, 200, 'a retry is a replay, stored once')
  t.equal((await record(gateway, budget.id, { amount: '10', currency: 'EUR', metadata: { requestId: 'r-1' } })).statusCode, 409, 'the same key in another currency is a conflict')
})

t.test('a record counts toward ancestors and other budgets in their currencies; one missing rate refuses the whole record', async (t) => {
  const gateway = await buildGateway(t)
  const organization = await gateway.createBudget({ name: 'org', scopeType: 'organization', scopeId: 'acme', currency: 'GBP', amount: '1000' })
  const team = await gateway.createBudget({ name: 'team', scopeId: 'team-a', currency: 'GBP', amount: '100', parentId: organization.id })
  await setRate(gateway, 'JPY', 'GBP', { rate: '0.0052', effectiveFrom: '2024-01-01' })
  t.equal((await record(gateway, team.id, { amount: '1500', currency: 'JPY' })).statusCode, 201)
  t.equal((await gateway.status(team.id)).currentAmount, '7.8')
  t.equal((await gateway.status(organization.id)).currentAmount, '7.8', 'the parent, in the same currency, at the same rate')
  const refused = await record(gateway, team.id, { amount: '1', currency: 'CHF' })
  t.equal(refused.statusCode, 400)
  t.match(refused.json().message, /CHF to GBP/)
})

t.test('the gate holds a budget in another currency at the rate in force, rounded up, and settles at the hold\'s rate', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 }, mockTokenDelayMs: 20 })
  const euro = await gateway.createBudget({ name: 'euro team', currency: 'EUR', amount: '50' })
  const dollar = await gateway.createBudget({ name: 'dollar org', scopeType: 'organization', scopeId: 'acme', currency: 'USD', amount: '50' })

  const missing = await gateway.call({ team: 'team-a', organization: 'acme' })
  t.equal(missing.statusCode, 503, 'no USD/EUR rate: refused')
  t.equal(missing.headers['x-should-retry'], 'false')
  t.match(missing.json().error, { code: 'exchange_rate_missing', message: /into EUR .*euro team/ })
  t.equal((await gateway.sql`select count(*)::int as n from budget_reservations`)[0]!.n, 0, 'nothing held')

  await setRate(gateway, 'USD', 'EUR', { rate: '0.9', effectiveFrom: '2024-01-01' })
  // The rate changes while the call streams: its hold was taken at 0.9, and it settles at 0.9.
  const call = gateway.call({ team: 'team-a', organization: 'acme' }, { stream: true, max_tokens: 40 })
  await new Promise((resolve) => setTimeout(resolve, 100))
  const [held] = await gateway.sql`select exchange_rate::text as rate, call_amount::text as call, amount::text as amount from budget_reservations where budget_id = ${euro.id}`
  t.equal(Number(held!.rate), 0.9, 'the hold on the euro budget is at 0.9')
  await setRate(gateway, 'USD', 'EUR', { rate: '2' })
  const response = await call
  t.equal(response.statusCode, 200)
  await gateway.settled()
  const [usage] = await gateway.sql`select amount::text as amount, currency from budget_usage_records`
  t.equal(usage!.currency, 'USD', 'the call is recorded in the gate\'s currency')
  const allocations = await gateway.sql`select budget_id as "budgetId", amount::text as amount, exchange_rate::text as rate from budget_usage_allocations`
  const euroAllocation = allocations.find((row) => row.budgetId === euro.id)!
  const [expected] = await gateway.sql`select budget_convert(${usage!.amount}::numeric, 0.9)::text as amount`
  t.equal(euroAllocation.amount, expected!.amount, 'the euro budget is charged the actual cost at the hold\'s rate, rounded up')
  t.equal(Number(euroAllocation.rate), 0.9)
  t.equal(allocations.find((row) => row.budgetId === dollar.id)!.amount, usage!.amount, 'the dollar budget, as it is')

  const next = await gateway.call({ team: 'team-a', organization: 'acme' })
  t.equal(next.statusCode, 200)
  t.ok(['EUR', 'USD'].includes(next.headers['x-budget-currency'] as string), 'the remaining is in the binding budget\'s currency')
  await gateway.settled()
  await checkInvariants(t, gateway.sql)
})

t.test('a hard budget in another currency is never overspent by concurrent calls', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  await setRate(gateway, 'USD', 'JPY', { rate: '151.37', effectiveFrom: '2024-01-01' })
  // A worst case of about 0.0000125 USD a call (20 output tokens of gpt-4o-mini): some 0.0019 JPY.
  const yen = await gateway.createBudget({ name: 'yen team', currency: 'JPY', amount: '0.05' })
  const responses = await Promise.all(Array.from({ length: 60 }, async () => await gateway.call({ team: 'team-a' })))
  const served = responses.filter((response) => response.statusCode === 200).length
  const refused = responses.filter((response) => response.statusCode === 402).length
  t.equal(served + refused, 60, 'each call served or refused for want of room')
  t.ok(served > 0 && refused > 0, `some served (${served}), some refused (${refused})`)
  await gateway.settled()
  const [over] = await gateway.sql`select current_amount <= ${'0.05'}::numeric as within, current_amount::text as spent from budget_status_cache where budget_id = ${yen.id}`
  t.ok(over!.within, `spent ${over!.spent} JPY of 0.05`)
  await checkInvariants(t, gateway.sql)
})

t.test('check-constraints reads a caller\'s budgets in their currencies', async (t) => {
  const gateway = await buildGateway(t)
  const euro = await gateway.createBudget({ name: 'euro team', currency: 'EUR', amount: '1' })
  const check = async () => await gateway.app.budgetIntegration.checkCaller({ team: 'team-a' }, '2')
  t.match(await check(), { canProceed: false, code: 'exchange_rate_missing' })
  await setRate(gateway, 'USD', 'EUR', { rate: '0.4', effectiveFrom: '2024-01-01' })
  t.match(await check(), { canProceed: true, bindingBudgetId: euro.id, currency: 'EUR', bindingEstimate: '0.8' }, '2 USD is 0.8 EUR: it fits')
  await setRate(gateway, 'USD', 'EUR', { rate: '0.6' })
  t.match(await check(), { canProceed: false, code: 'budget_exceeded', reason: /less than the estimated cost 1.2 EUR/ })
})

// About 2.1 USD of worst case: 8 choices of 32,768 output tokens of gpt-4.1.
const HUGE_CALL = { model: 'gpt-4.1', max_tokens: 32_768, n: 8 }
const EXTREME_RATE = '999999999999999999'

t.test('a hold whose conversion overflows is a coded refusal at the gate, holds nothing, and leaves the other calls alone', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  await setRate(gateway, 'USD', 'JPY', { rate: EXTREME_RATE, effectiveFrom: '2024-01-01' })
  const hard = await gateway.createBudget({ name: 'yen team', currency: 'JPY', amount: '100000000000000000' })
  await gateway.createBudget({ name: 'yen org', scopeType: 'organization', scopeId: 'acme', currency: 'JPY', amount: '1', enforcement: 'soft' })

  const refused = await gateway.call({ team: 'team-a', organization: 'acme' }, HUGE_CALL)
  t.equal(refused.statusCode, 402, refused.body.slice(0, 300))
  t.match(refused.json().error, { type: 'insufficient_quota', code: 'estimate_out_of_range', message: /yen (team|org).*10\^18/ })
  t.equal((await gateway.sql`select count(*)::int as n from budget_reservations`)[0]!.n, 0, 'nothing held')
  t.same((await gateway.sql`select reserved_amount::text as r from budget_status_cache`).map((row) => row.r), ['0.0000000000', '0.0000000000'])

  // Calls alongside it: each served or refused on its own numbers, none failed by the one that overflows.
  const responses = await Promise.all([
    ...Array.from({ length: 6 }, async () => await gateway.call({ team: 'team-a', organization: 'acme' })),
    gateway.call({ team: 'team-a', organization: 'acme' }, HUGE_CALL),
    ...Array.from({ length: 6 }, async () => await gateway.call({ team: 'team-a', organization: 'acme' }))
  ])
  t.same(responses.map((response) => response.statusCode), [200, 200, 200, 200, 200, 200, 402, 200, 200, 200, 200, 200, 200])
  await gateway.settled()
  t.equal((await gateway.sql`select count(*)::int as n from budget_usage_allocations where budget_id = ${hard.id}`)[0]!.n, 12, 'the twelve served calls are charged')
  await checkInvariants(t, gateway.sql)

  // check-constraints reads the same refusal.
  t.match(await gateway.app.budgetIntegration.checkCaller({ team: 'team-a' }, '2'), { canProceed: false, code: 'estimate_out_of_range', bindingBudgetId: hard.id })
  t.match(await gateway.app.budgetIntegration.checkCaller({ team: 'team-a' }, '0.01'), { canProceed: true })
})

t.test('budget_hold_batch: one call\'s overflow is that call\'s refusal; the others of its batch are held', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  await setRate(gateway, 'USD', 'JPY', { rate: EXTREME_RATE, effectiveFrom: '2024-01-01' })
  const yen = await gateway.createBudget({ name: 'yen soft', currency: 'JPY', amount: '1', enforcement: 'soft' })
  const dollar = await gateway.createBudget({ name: 'dollar org', scopeType: 'organization', scopeId: 'acme', amount: '100' })
  await gateway.call({ team: 'team-a', organization: 'acme' }) // makes both windows' cache rows
  await gateway.settled()
  const windows = await gateway.sql<Array<{ budgetId: string, start: Date, end: Date }>>`
    select budget_id as "budgetId", period_start as start, period_end as "end" from budget_status_cache order by budget_id`
  const ids = [1, 2, 3, 4].map((n) => `00000000-0000-4000-8000-00000000000${n}`)
  const calls = [1, 2, 3, 4]
  // Four calls on the same line. The second's estimate (2 USD) is past 10^18 JPY; the others' are not, but the
  // fourth would take the soft budget's reserved amount past what it can hold (0.5 + 0.25 + 0.5 USD at the rate).
  const rows = await gateway.sql<Array<{ call: number, budgetId: string, reserved: boolean, held: string | null, outOfRange: boolean }>>`
    select call_index as call, budget_id as "budgetId", is_reserved as reserved, held::text as held, out_of_range as "outOfRange"
    from budget_hold_batch(${ids}::text[]::uuid[], ${['0.5', '2', '0.25', '0.5']}::text[]::numeric[], ${['a', 'b', 'c', 'd']}::text[], 'USD', '1 minute'::interval,
      ${calls.flatMap((call) => [String(call), String(call)])}::text[]::integer[], ${calls.flatMap(() => windows.map((w) => w.budgetId))}::text[]::uuid[],
      ${calls.flatMap(() => windows.map((w) => w.start.toISOString()))}::text[]::timestamptz[], ${calls.flatMap(() => windows.map((w) => w.end.toISOString()))}::text[]::timestamptz[],
      ${calls.flatMap(() => windows.map((w) => String(w.budgetId === yen.id)))}::text[]::boolean[],
      ${calls.flatMap(() => windows.map((w) => w.budgetId === yen.id ? '1' : '2'))}::text[]::integer[], false, false)
    order by call_index, budget_id`
  const byCall = (call: number, budgetId: string) => rows.find((row) => row.call === call && row.budgetId === budgetId)!
  t.match(byCall(1, yen.id), { reserved: true, outOfRange: false, held: '499999999999999999.5000000000' }, 'the first call is held (0.5 USD at the rate, exactly)')
  t.match(byCall(1, dollar.id), { reserved: true, outOfRange: false })
  t.match(byCall(2, yen.id), { reserved: false, outOfRange: true, held: null }, 'the second cannot be converted into JPY: refused, nothing held')
  t.match(byCall(2, dollar.id), { reserved: false, outOfRange: false })
  t.match(byCall(3, yen.id), { reserved: true, outOfRange: false, held: '249999999999999999.7500000000' }, 'the third, after it in the same batch, is held')
  t.match(byCall(4, yen.id), { reserved: false, outOfRange: true }, 'the fourth would take the reserved amount past 10^18: refused')
  const held = await gateway.sql`select id::text as id, budget_id as "budgetId" from budget_reservations order by id, budget_id`
  t.same(held.map((row) => row.id), [ids[0], ids[0], ids[2], ids[2]], 'only the first and third calls hold')
  t.same((await gateway.sql`select reserved_amount::text as r from budget_status_cache where budget_id = ${yen.id}`).map((row) => row.r), ['749999999999999999.2500000000'])
})

t.test('every rate change is audited, with its actor and request, and a replaced rate stays in the history', async (t) => {
  const gateway = await buildGateway(t)
  const first = await setRate(gateway, 'USD', 'EUR', { rate: '0.92', effectiveFrom: '2024-01-01' })
  const replaced = await setRate(gateway, 'USD', 'EUR', { rate: '0.93', effectiveFrom: '2024-01-01' })
  t.equal(replaced.statusCode, 200, 'the same pair and instant: a replacement')
  const feed = (await gateway.app.inject({ url: `${PREFIX}/audit`, headers: auth })).json()
  t.match(feed.entries, [
    { budgetId: null, action: 'set-exchange-rate', changes: ['rate'], actor: 'admin', requestId: String,
      before: { from: 'USD', to: 'EUR', rate: '0.92', effectiveFrom: '2024-01-01T00:00:00.000Z' }, after: { from: 'USD', to: 'EUR', rate: '0.93' } },
    { budgetId: null, action: 'set-exchange-rate', changes: ['rate'], actor: 'admin', before: null, after: { from: 'USD', to: 'EUR', rate: '0.92', effectiveFrom: '2024-01-01T00:00:00.000Z' } }
  ], 'both changes, newest first, before and after')
  t.not(feed.entries[0].requestId, feed.entries[1].requestId, 'each with its own request')
  t.equal(first.statusCode, 201)

  const history = (await gateway.app.inject({ url: `${PREFIX}/exchange-rates`, headers: auth })).json()
  t.match(history.rates, [{ rate: '0.93', replaced: false }, { rate: '0.92', replaced: true, effectiveFrom: '2024-01-01T00:00:00.000Z' }], 'the replaced rate is still listed, marked')
  const [inForce] = await gateway.sql`select budget_exchange_rate('USD', 'EUR', now())::text as rate`
  t.equal(Number(inForce!.rate), 0.93, 'the rate in force is the latest set for that instant')
  // A refused change writes no audit entry.
  t.equal((await setRate(gateway, 'USD', 'EUR', { rate: '-1' })).statusCode, 400)
  t.equal((await gateway.app.inject({ url: `${PREFIX}/audit`, headers: auth })).json().entries.length, 2)
})

t.test('GET /exchange-rates pages with a keyset cursor instead of stopping at 10,000 rows', async (t) => {
  const gateway = await buildGateway(t)
  // 10,050 rates of one pair, straight into the table (the route would take minutes), one set twice.
  await gateway.sql`
    insert into budget_exchange_rates (from_currency, to_currency, rate, effective_from, set_by)
    select 'USD', 'EUR', 1 + i / 100000.0, timestamptz '2000-01-01' + i * interval '1 hour', 'seed' from generate_series(1, 10050) i`
  await setRate(gateway, 'USD', 'EUR', { rate: '7', effectiveFrom: '2000-01-01T05:00:00Z' })
  await setRate(gateway, 'GBP', 'EUR', { rate: '1.1', effectiveFrom: '2024-01-01' })
  const seen: Array<{ from: string, to: string, rate: string, effectiveFrom: string }> = []
  let cursor: string | null = null
  let pages = 0
  do {
    const query: string = cursor === null ? '' : `&cursor=${cursor}`
    const response = await gateway.app.inject({ url: `${PREFIX}/exchange-rates?limit=500${query}`, headers: auth })
    t.equal(response.statusCode, 200)
    const page = response.json() as { rates: typeof seen, nextCursor: string | null }
    seen.push(...page.rates)
    cursor = page.nextCursor
    pages++
  } while (cursor !== null && pages < 30)
  t.equal(seen.length, 10052, 'every rate, the replaced one included, once')
  t.equal(pages, 21)
  t.equal(new Set(seen.map((rate) => `${rate.from}${rate.to}${rate.effectiveFrom}${rate.rate}`)).size, 10052)
  t.same(seen.slice(0, 2).map((rate) => `${rate.from}/${rate.to} ${rate.rate}`), ['GBP/EUR 1.1', 'USD/EUR 1.1005'], 'by pair, then newest first')
  const defaults = (await gateway.app.inject({ url: `${PREFIX}/exchange-rates`, headers: auth })).json()
  t.equal(defaults.rates.length, 100, 'a page of 100 by default')
  t.type(defaults.nextCursor, 'string')
  for (const query of ['limit=0', 'limit=501', 'cursor=abc', 'cursor=-1', `cursor=${'9'.repeat(30)}`]) {
    const refused = await gateway.app.inject({ url: `${PREFIX}/exchange-rates?${query}`, headers: auth })
    t.equal(refused.statusCode, 400, query)
  }
})
