// The gate on a distributed schema (`npm run test:citus`): holds, leases and settlements run on Citus, each
// tree's rows locked by a statement that names its root (sql/functions/locks.sql). Two example gateway
// processes serve calls on one database migrated and distributed on the cluster: the race (concurrent calls
// on a hard budget, never over it), the exact spend (every admitted call recorded once, the windows equal to
// their allocations), a line that spans two trees, held and settled on both, and a gateway killed mid-call on
// it, whose holds and lease the other one sweeps.
import t, { type Test } from 'tap'
import { distributeOnCitus } from '../lib/kernel/database/citus.js'
import { migrate } from '../lib/kernel/database/migrate.js'
import { compareMoney, fromUnits, normalizeMoney, toUnits } from '../lib/kernel/money.js'
import { costOf, DEFAULT_PRICES } from '../lib/pricing/pricing.js'
import { worstCaseTokens } from '../lib/pricing/estimate.js'
import { PREFIX } from '../test/fixtures/app.js'
import { createTestSql } from '../test/fixtures/database.js'
import { startGatewayProcess, type GatewayProcess } from '../test/fixtures/gateway-process.js'
import { findViolations } from '../test/fixtures/invariants.js'

const ADMIN_TOKEN = 'citus-gate-admin-token-0123456789'
const chat = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Summarise the quarterly report' }], max_tokens: 200 }
const price = DEFAULT_PRICES['gpt-4o-mini']!
const estimate = await (async () => { const { inputTokens, outputTokens } = await worstCaseTokens(chat, price); return costOf(price, inputTokens, outputTokens) })()

/** A database migrated and distributed on the cluster, and `count` example gateways on it. */
async function distributedGateways (t: Test, count: number, env: NodeJS.ProcessEnv = {}) {
  const { sql, url } = await createTestSql(t, { max: 4 })
  await migrate(sql)
  await distributeOnCitus(sql)
  const processes: GatewayProcess[] = []
  for (let i = 0; i < count; i++) {
    const gateway = await startGatewayProcess({ DATABASE_URL: url, ADMIN_TOKEN, LOG_LEVEL: process.env.GATE_LOG_LEVEL ?? 'warn', ...env })
    processes.push(gateway)
    t.teardown(async () => await gateway.stop())
  }
  const create = async (body: Record<string, unknown>): Promise<string> => {
    const response = await fetch(`${processes[0]!.url}${PREFIX}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ currency: 'USD', period: 'monthly', startDate: '2024-01-01', enforcement: 'hard', ...body })
    })
    const created = await response.json() as { id: string }
    if (response.status !== 201) throw new Error(JSON.stringify(created))
    return created.id
  }
  const call = async (gateway: GatewayProcess, scopes: Record<string, string>): Promise<number> => {
    const response = await fetch(`${gateway.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...Object.fromEntries(Object.entries(scopes).map(([type, id]) => [`x-relay-${type}-id`, id])) },
      body: JSON.stringify(chat)
    })
    await response.arrayBuffer()
    return response.status
  }
  const settled = async () => {
    const deadline = Date.now() + 15_000
    while ((await sql`select count(*)::int as n from budget_reservations`)[0]!.n > 0) {
      if (Date.now() > deadline) {
        const left = await sql`select id, budget_id, amount::text, lease, expires_at - now() as ttl, request_id from budget_reservations`
        throw new Error(`reservations left after 15 s: ${JSON.stringify(left)}`)
      }
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }
  return { sql, processes, create, call, settled }
}

t.test('two gateways, 200 concurrent calls on a hard team budget for about 20: never over it, each admitted call recorded once', async (t) => {
  // 200 calls at once through the coordinator on two cores: the gate may wait longer than its 3 s for PostgreSQL
  // (a 503, fail-closed). The test is about the limit and the records, not the wait.
  const { sql, processes, create, call, settled } = await distributedGateways(t, 2, { GATE_TIMEOUT_MS: '20000' })
  const amount = fromUnits(toUnits(estimate) * 20n)
  const budgetId = await create({ name: 'team', scopeType: 'team', scopeId: 'platform', amount })

  const statuses = await Promise.all(Array.from({ length: 200 }, async (_, i) => await call(processes[i % 2]!, { team: 'platform' })))
  const admitted = statuses.filter((status) => status === 200).length
  t.ok(statuses.every((status) => status === 200 || status === 402), `every call admitted or refused: ${[...new Set(statuses)].join(', ')}`)
  t.ok(admitted >= 20, `${admitted} admitted: at least the 20 the budget holds at their estimate`)
  t.ok(statuses.some((status) => status === 402), 'and the rest refused')

  await settled()
  const [spent] = await sql<Array<{ total: string, records: number }>>`
    select coalesce(sum(amount), 0)::text as total, count(*)::int as records from budget_usage_records where root_id = ${budgetId} and budget_id = ${budgetId}`
  t.ok(compareMoney(spent!.total, amount) <= 0, `spent ${normalizeMoney(spent!.total)} of ${amount}`)
  t.equal(spent!.records, admitted, 'every admitted call has one usage record')
  t.same(await findViolations(sql), [], 'no hold left, each window equal to its allocations, no hard budget over its limit')

  // each refusal in the decision log, under the budget's root (the log is written in batches, in the background)
  const refused = statuses.length - admitted
  const logged = async () => (await sql<Array<{ n: number }>>`
    select count(*)::int as n from budget_decision_log where root_id = ${budgetId} and budget_id = ${budgetId} and outcome = 'refused'`)[0]!.n
  const deadline = Date.now() + 10_000
  while (await logged() < refused && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100))
  t.equal(await logged(), refused, `the ${refused} refusals logged under the budget's tree`)
})

t.test('a line across two trees on two gateways: held and settled on both trees, the spend exact on every budget', async (t) => {
  const { sql, processes, create, call, settled } = await distributedGateways(t, 2, { GATE_TIMEOUT_MS: '20000' }) // as above
  const org = await create({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '100' })
  const team = await create({ name: 'team', scopeType: 'team', scopeId: 'platform', parentId: org, amount: '50' })
  const user = await create({ name: 'user', scopeType: 'user', scopeId: 'ada', amount: fromUnits(toUnits(estimate) * 12n) })
  const roots = await sql<Array<{ rootId: string }>>`select distinct root_id as "rootId" from budget_definitions order by 1`
  t.equal(roots.length, 2, 'two trees: the organization\'s and the user\'s own')

  // waves, so that some calls hold one by one and some come from each process's lease
  const statuses: number[] = []
  for (let wave = 0; wave < 4; wave++) {
    statuses.push(...await Promise.all(Array.from({ length: 10 }, async (_, i) => await call(processes[i % 2]!, { user: 'ada', team: 'platform' }))))
  }
  const admitted = statuses.filter((status) => status === 200).length
  t.ok(statuses.every((status) => status === 200 || status === 402), `every call admitted or refused: ${[...new Set(statuses)].join(', ')}`)
  t.ok(admitted >= 12, `${admitted} admitted: at least the 12 the user's budget holds at their estimate`)

  await settled()
  const records = await sql<Array<{ n: number, total: string }>>`select count(*)::int as n, coalesce(sum(amount), 0)::text as total from budget_usage_records`
  t.equal(records[0]!.n, admitted, 'one usage record a call')
  for (const [name, id] of [['user', user], ['team', team], ['org', org]] as const) {
    const [row] = await sql<Array<{ current: string }>>`
      select coalesce(sum(c.current_amount), 0)::text as current from budget_status_cache c join budget_definitions d on d.root_id = c.root_id and d.id = c.budget_id
      where d.id = ${id}`
    t.equal(normalizeMoney(row!.current), normalizeMoney(records[0]!.total), `the ${name}'s window counts every call once`)
  }
  t.same(await findViolations(sql), [], 'no hold left, each window equal to its allocations, no hard budget over its limit')
})

t.test('a gateway killed mid-call on a two-tree line: the survivor sweeps what it held, counted once at its estimate, nothing left', async (t) => {
  const { sql, processes: [doomed, survivor], create, call } = await distributedGateways(t, 2,
    { RESERVATION_TTL_MS: '1500', SWEEP_INTERVAL_MS: '300', MOCK_TOKEN_DELAY_MS: '200' })
  const org = await create({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '100' })
  await create({ name: 'team', scopeType: 'team', scopeId: 'platform', parentId: org, amount: '50' })
  await create({ name: 'user', scopeType: 'user', scopeId: 'ada', amount: '10' })
  // slow streams on the doomed process, left hanging when it dies: held one by one or from its lease
  const aborts = Array.from({ length: 5 }, () => new AbortController())
  const streams = aborts.map(async (abort) => await fetch(`${doomed!.url}/v1/chat/completions`, {
    method: 'POST',
    signal: abort.signal,
    headers: { 'content-type': 'application/json', 'x-relay-user-id': 'ada', 'x-relay-team-id': 'platform' },
    body: JSON.stringify({ ...chat, stream: true })
  }).then(async (response) => await response.arrayBuffer()).catch(() => null))
  const held = async () => (await sql<Array<{ n: number }>>`select count(distinct id)::int as n from budget_reservations`)[0]!.n
  const deadline = Date.now() + 10_000
  while (await held() === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50))
  t.ok(await held() > 0, 'the doomed process holds its calls')
  await doomed!.stop('SIGKILL')
  await Promise.all(streams)
  const sweptBy = Date.now() + 15_000
  while ((await sql<Array<{ n: number }>>`select count(*)::int as n from budget_reservations`)[0]!.n > 0 && Date.now() < sweptBy) {
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  const records = await sql<Array<{ source: string, outcome: string }>>`select source, metadata ->> 'outcome' as outcome from budget_usage_records`
  t.ok(records.length > 0 && records.every((record) => record.source === 'expired-reservation' && record.outcome === 'unknown'),
    `the survivor's sweeper counted each held call at its estimate: ${records.length} records`)
  t.same(await findViolations(sql), [], 'no hold left, each window equal to its allocations, no hard budget over its limit')
  t.equal(await call(survivor!, { user: 'ada', team: 'platform' }), 200, 'and the survivor serves the line')
  aborts.forEach((abort) => { abort.abort() })
})
