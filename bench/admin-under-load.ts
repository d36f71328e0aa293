// Definition changes under hot gate load (issue 19, items 4 and 19), in one run: one gateway process
// (bench/gateway-server.ts) loaded with autocannon on one hot team + organization line, admitting from
// its lease; a second gateway process, idle, takes the admin changes, as another replica would.
// - item 4: admin PUTs of the hot team (its amount, changed back and forth) through the LOADED process,
//   one after another; their latency quiet and under load (p50, p99, max). Target: p99 under load at
//   most 2x the quiet p99 of the same run (the issue saw 5.6 s under load).
// - item 19: a block-all alert committed through the idle process while the loaded one admits from its
//   lease; the latest call the loaded process admitted after the change's commit had been answered.
//   Target: at most 100 ms. Then the alert is taken away and the line made hot again, BENCH_TRIALS times.
import { once } from 'node:events'
import autocannon from 'autocannon'
import postgres from 'postgres'
import { BENCH_ADMIN_TOKEN } from './gateway-server.js'
import { benchDatabase, fmt, startBenchGateway } from './harness.js'

const SECONDS = Number(process.env.BENCH_SECONDS ?? 10)
const TRIALS = Number(process.env.BENCH_TRIALS ?? 10)
const HOT = 16
const PREFIX = '/api/v1/budgets'
const CALL = {
  method: 'POST' as const,
  headers: { 'content-type': 'application/json', 'x-relay-team-id': 'hot' },
  body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 20 })
}
const sleep = async (ms: number) => await new Promise((resolve) => setTimeout(resolve, ms))

const database = await benchDatabase()
process.stdout.write(`admin changes under gate load, PostgreSQL from ${database.source}, ${SECONDS} s of PUTs, ${TRIALS} block-all trials\n`)
const sql = postgres(database.url, { onnotice: () => {} })
const loaded = await startBenchGateway(database.url)
const idle = await startBenchGateway(database.url)

async function admin (gateway: { url: string }, method: string, path: string, body: unknown): Promise<{ id: string }> {
  const response = await fetch(`${gateway.url}${PREFIX}${path}`, { method, headers: { authorization: `Bearer ${BENCH_ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(body) })
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${await response.text()}`)
  return await response.json() as { id: string }
}
const org = await admin(idle, 'POST', '', { name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '100000000', currency: 'USD', period: 'monthly', startDate: '2024-01-01' })
const team = await admin(idle, 'POST', '', { name: 'hot team', scopeType: 'team', scopeId: 'hot', parentId: org.id, amount: '100', currency: 'USD', period: 'monthly', startDate: '2024-01-01' })
const load = (seconds: number) => autocannon({ url: `${loaded.url}/v1/chat/completions`, connections: HOT, duration: seconds, ...CALL })

/** PUTs of the hot team's amount through the loaded process, one after another, for `seconds`; their latencies in ms. */
async function puts (seconds: number): Promise<number[]> {
  const latencies: number[] = []
  const deadline = Date.now() + seconds * 1000
  for (let i = 0; Date.now() < deadline; i++) {
    const started = process.hrtime.bigint()
    await admin(loaded, 'PUT', `/${team.id}`, { amount: i % 2 === 0 ? '101' : '100' })
    latencies.push(Number(process.hrtime.bigint() - started) / 1e6)
    await sleep(50)
  }
  return latencies
}
const percentile = (values: number[], p: number) => { const sorted = [...values].sort((a, b) => a - b); return sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)]! }
const describe = (values: number[]) => `${values.length} PUTs: p50 ${fmt(percentile(values, 0.5), 0)} ms, p99 ${fmt(percentile(values, 0.99), 0)} ms, max ${fmt(Math.max(...values), 0)} ms`

// Item 4: quiet, then under load.
await load(2) // warm up
const quiet = await puts(Math.min(SECONDS, 5))
const loading = load(SECONDS + 1)
await sleep(500)
const busy = await puts(SECONDS)
const busyLoad = await loading

// Item 19: the latest admission after a block-all change committed in the other process.
const lastAdmittedAt = async () => ((await (await fetch(`${loaded.url}/bench/admitted`)).json()) as { lastAdmittedAt: number }).lastAdmittedAt
const lags: number[] = []
let refusedAfter = 0
const trialsLoad = load(TRIALS * 3 + 1)
await sleep(500)
for (let trial = 0; trial < TRIALS; trial++) {
  await sleep(1500) // the line hot, the lease in use
  await admin(idle, 'PUT', `/${team.id}`, { alerts: [{ threshold: 0.001, actions: ['block-all'] }] })
  const committed = Date.now() // the answer comes after the commit
  await sleep(700)
  const last = await lastAdmittedAt()
  lags.push(Math.max(0, last - committed))
  if (last < Date.now() - 300) refusedAfter++ // nothing admitted in the last 300 ms: the block is in force
  await admin(idle, 'PUT', `/${team.id}`, { alerts: [] })
  await sleep(300)
}
const trialsResult = await trialsLoad

for (const gateway of [loaded, idle]) { gateway.child.kill('SIGTERM'); await once(gateway.child, 'exit') }
const [held] = await sql<Array<{ n: number }>>`select count(*)::int as n from budget_reservations`
process.stdout.write([
  '',
  '| what | figure |',
  '|---|---|',
  `| admin PUT of the hot team, quiet | ${describe(quiet)} |`,
  `| the same under ${HOT} connections of gated load on its line (${fmt(busyLoad.requests.total / (SECONDS + 1), 0)} calls/s, p99 ${busyLoad.latency.p99} ms) | ${describe(busy)} |`,
  `| latest call admitted after a block-all change was committed in another process, ${TRIALS} trials (${fmt(trialsResult.requests.total / (TRIALS * 3 + 1), 0)} calls/s) | max ${fmt(Math.max(...lags), 0)} ms, each: ${lags.map((lag) => fmt(lag, 0)).join(', ')} ms |`,
  '',
  `trials in which the block was in force 300 ms before the check: ${refusedAfter} of ${TRIALS}; reservations left: ${held!.n}`,
  `targets: admin PUT p99 under load <= 2x quiet -> ${fmt(percentile(busy, 0.99) / percentile(quiet, 0.99))}x, ${percentile(busy, 0.99) <= 2 * percentile(quiet, 0.99) ? 'met' : 'NOT met'}; no admission more than 100 ms after a change -> ${Math.max(...lags) <= 100 ? 'met' : 'NOT met'}`,
  ''
].join('\n'))

await sql.end()
await database.close()
