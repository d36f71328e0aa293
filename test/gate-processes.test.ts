// Several gateway processes on one database, and one that dies mid-call.
import Fastify from 'fastify'
import postgres from 'postgres'
import t from 'tap'
import { PREFIX } from './fixtures/app.js'
import { createTestDatabase } from './fixtures/database.js'
import { startGatewayProcess, type GatewayProcess } from './fixtures/gateway-process.js'
import { compareMoney, fromUnits, normalizeMoney, toUnits } from '../lib/kernel/money.js'
import { costOf, DEFAULT_PRICES } from '../lib/pricing/pricing.js'
import { worstCaseTokens } from '../lib/pricing/estimate.js'

const ADMIN_TOKEN = 'processes-admin-token-0123456789'
const chat = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Summarise the quarterly report' }], max_tokens: 200 }
const estimate = await (async () => { const { inputTokens, outputTokens } = await worstCaseTokens(chat, DEFAULT_PRICES['gpt-4o-mini']!); return costOf(DEFAULT_PRICES['gpt-4o-mini']!, inputTokens, outputTokens) })()

async function gateways (t: Parameters<typeof createTestDatabase>[0], count: number, env: NodeJS.ProcessEnv = {}) {
  const url = await createTestDatabase(t)
  const sql = postgres(url, { onnotice: () => {} })
  t.teardown(async () => await sql.end())
  const processes: GatewayProcess[] = []
  for (let i = 0; i < count; i++) {
    // One after another: the second must come up on a database the first already migrated, and vice versa in the migrate test.
    const gateway = await startGatewayProcess({ DATABASE_URL: url, ADMIN_TOKEN, ...env })
    processes.push(gateway)
    t.teardown(async () => await gateway.stop())
  }
  return { sql, processes }
}

async function createTeamBudget (gateway: GatewayProcess, amount: string): Promise<string> {
  const response = await fetch(`${gateway.url}${PREFIX}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'team', scopeType: 'team', scopeId: 'platform', amount, currency: 'USD', period: 'monthly', startDate: '2024-01-01' })
  })
  return ((await response.json()) as { id: string }).id
}

async function waitFor (check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!await check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

t.test('two gateway processes, 200 concurrent calls, a team budget for about 20: never over the limit', async (t) => {
  const { sql, processes } = await gateways(t, 2)
  const amount = fromUnits(toUnits(estimate) * 20n)
  const budgetId = await createTeamBudget(processes[0]!, amount)

  const responses = await Promise.all(Array.from({ length: 200 }, async (_, i) => {
    const response = await fetch(`${processes[i % 2]!.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-relay-team-id': 'platform' },
      body: JSON.stringify(chat)
    })
    await response.arrayBuffer()
    return response.status
  }))
  const admitted = responses.filter((status) => status === 200).length
  t.ok(responses.every((status) => status === 200 || status === 402), 'every call was admitted or refused')
  t.ok(admitted >= 20, `${admitted} admitted: at least the 20 the budget holds at their estimate`)
  t.ok(responses.filter((status) => status === 402).length > 0, 'and the rest refused')

  await waitFor(async () => (await sql`select count(*)::int as n from budget_reservations`)[0]!.n === 0, 10_000, 'settlements')
  const [spent] = await sql`select coalesce(sum(amount), 0)::text as total, count(*)::int as records from budget_usage_records where budget_id = ${budgetId}`
  t.ok(compareMoney(spent!.total as string, amount) <= 0, `spent ${normalizeMoney(spent!.total as string)} of ${amount}`)
  t.equal(spent!.records, admitted, 'every admitted call has its usage record')
  const [cache] = await sql`select current_amount::text as current, reserved_amount::text as reserved from budget_status_cache where budget_id = ${budgetId}`
  t.equal(normalizeMoney(cache!.current as string), normalizeMoney(spent!.total as string), 'the status cache agrees with the records')
  t.equal(normalizeMoney(cache!.reserved as string), '0', 'no reservation is left')
})

t.test('a process killed mid-call: after the TTL its holds are swept and counted, nothing left uncounted', async (t) => {
  const { sql, processes: [doomed, survivor] } = await gateways(t, 2, { RESERVATION_TTL_MS: '1500', SWEEP_INTERVAL_MS: '300', MOCK_TOKEN_DELAY_MS: '200' })
  const budgetId = await createTeamBudget(doomed!, '1')
  // Five slow streams on the doomed process, left hanging when it dies. Arriving together, they make the
  // line hot: some or all are admitted from a lease (one reservation for many calls), the rest hold alone.
  const aborts = Array.from({ length: 5 }, () => new AbortController())
  const streams = aborts.map(async (abort) => await fetch(`${doomed!.url}/v1/chat/completions`, {
    method: 'POST',
    signal: abort.signal,
    headers: { 'content-type': 'application/json', 'x-relay-team-id': 'platform' },
    body: JSON.stringify({ ...chat, stream: true })
  }).then(async (response) => await response.arrayBuffer()).catch(() => null))
  const held = async () => (await sql`select coalesce(sum(amount), 0)::text as held from budget_reservations`)[0]!.held as string
  await waitFor(async () => toUnits(await held()) >= toUnits(estimate) * 5n, 10_000, 'five calls held')
  await doomed!.stop('SIGKILL')
  await Promise.all(streams)
  // A statement the dead process sent just before it died (a lease's top-up) still runs to its commit in
  // its backend: what it left held is known once no hold or lease statement is running any more.
  await waitFor(async () => (await sql`select count(*)::int as n from pg_stat_activity
    where state = 'active' and pid <> pg_backend_pid() and (query like '%budget_lease%' or query like '%budget_hold%')`)[0]!.n === 0, 10_000, 'the dead process\'s statements')
  const leftHeld = await held()
  t.ok(toUnits(leftHeld) >= toUnits(estimate) * 5n, `the dead process left ${leftHeld} held, at least the five calls' estimates`)

  // The survivor's sweeper counts every expired hold as spent: a lease whole (an over-count of at most
  // its unused slice), a call's own hold at its estimate. Nothing the dead calls could have cost is lost.
  await waitFor(async () => (await sql`select count(*)::int as n from budget_reservations`)[0]!.n === 0, 15_000, 'the sweep')
  const records = await sql`select amount::text as amount, source, metadata from budget_usage_records where budget_id = ${budgetId}`
  t.ok(records.length > 0 && records.every((record) => record.source === 'expired-reservation' && (record.metadata as { outcome: string }).outcome === 'unknown'))
  const status = await fetch(`${survivor!.url}${PREFIX}/${budgetId}/status`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } }).then(async (r) => await r.json()) as { currentAmount: string, reservedAmount: string }
  t.equal(status.currentAmount, normalizeMoney(leftHeld), 'spent: exactly what was held')
  t.ok(compareMoney(status.currentAmount, fromUnits(toUnits(estimate) * 5n)) >= 0, 'at least five estimates')
  t.equal(status.reservedAmount, '0', 'nothing held')
  aborts.forEach((abort) => { abort.abort() })
})

t.test('two processes crossing one threshold at the same time: one history row, one delivery', async (t) => {
  const received: unknown[] = []
  const hook = Fastify()
  hook.post('/hook', async (request) => { received.push(request.body); return { ok: true } })
  const hookUrl = `${await hook.listen({ port: 0, host: '127.0.0.1' })}/hook`
  t.teardown(async () => await hook.close())
  const { sql, processes } = await gateways(t, 2, { NOTIFY_CHANNELS: `hook=${hookUrl}`, NOTIFY_INTERVAL_MS: '100' })
  const response = await fetch(`${processes[0]!.url}${PREFIX}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      name: 'team', scopeType: 'team', scopeId: 'platform', amount: '1', currency: 'USD', period: 'monthly', startDate: '2024-01-01',
      alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['hook'] }]
    })
  })
  const budgetId = ((await response.json()) as { id: string }).id
  await fetch(`${processes[0]!.url}${PREFIX}/${budgetId}/usage`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ amount: '0.4999999', currency: 'USD' })
  })
  // Twenty calls at once, ten on each process: each one's settlement takes the budget past 50%.
  const statuses = await Promise.all(Array.from({ length: 20 }, async (_, i) => {
    const call = await fetch(`${processes[i % 2]!.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-relay-team-id': 'platform' },
      body: JSON.stringify(chat)
    })
    await call.arrayBuffer()
    return call.status
  }))
  t.ok(statuses.every((status) => status === 200))
  await waitFor(async () => (await sql`select count(*)::int as n from budget_reservations`)[0]!.n === 0, 10_000, 'settlements')
  const rows = await sql`select threshold::int as threshold from budget_alert_history`
  t.same(rows.map((row) => row.threshold), [50], 'one crossing')
  await waitFor(async () => received.length > 0, 10_000, 'the webhook')
  await new Promise((resolve) => setTimeout(resolve, 500)) // both deliverers have run several times since
  t.equal(received.length, 1, 'delivered once')
})
