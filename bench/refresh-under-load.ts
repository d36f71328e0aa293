// A status refresh during gated load (issue 10): with BENCH_REFRESH_ROWS usage rows (10 million by
// default) counted toward one hot team and its organization, the gated p99 at 16 connections with and
// without forced refresh-cache calls running all along, and any refusals. The target: no refusal, and
// at most 50 ms added to the p99 (a refresh sums outside the row lock, refresh_budget_status_cache).
import { once } from 'node:events'
import autocannon from 'autocannon'
import postgres from 'postgres'
import { BENCH_ADMIN_TOKEN } from './gateway-server.js'
import { HOT_CALL, benchDatabase, fmt, hotLine, startBenchGateway } from './harness.js'

const ROWS = Number(process.env.BENCH_REFRESH_ROWS ?? 10_000_000)
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10)
const PREFIX = '/api/v1/budgets'

const database = await benchDatabase()
process.stdout.write(`refresh under load on PostgreSQL from ${database.source}: ${ROWS} usage rows, ${SECONDS} s a run\n`)
const sql = postgres(database.url, { onnotice: () => {} })


const gateway = await startBenchGateway(database.url)
const admin = async (method: string, path: string, body?: unknown) => {
  const response = await fetch(`${gateway.url}${PREFIX}${path}`, {
    method,
    headers: { authorization: `Bearer ${BENCH_ADMIN_TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) })
  })
  if (!response.ok) throw new Error(await response.text())
  return await response.json() as { id: string }
}
const { org, team } = await hotLine(gateway.url)

// The history, written straight into the tables (as settlements write them), in this month's window,
// on one connection with replication-role triggers off: the foreign-key checks of 30 million rows
// would take most of the run, and these rows are made consistent by construction.
const started = Date.now()
await sql.begin(async (tx) => {
  await tx`set local session_replication_role = replica`
  await tx`
    insert into budget_usage_records (id, budget_id, amount, currency, source, metadata, occurred_at, allocated_by_settlement)
    select md5(i::text)::uuid, ${team}, 0.000001, 'USD', 'bench', '{}', date_trunc('month', now()) + (i % 86400) * interval '1 second', true
    from generate_series(1, ${ROWS}) as i`
  await tx`
    insert into budget_usage_allocations (budget_id, usage_id, amount, occurred_at)
    select b.id, md5(i::text)::uuid, 0.000001, date_trunc('month', now()) + (i % 86400) * interval '1 second'
    from generate_series(1, ${ROWS}) as i cross join (values (${team}::uuid), (${org}::uuid)) as b(id)`
})
await sql`vacuum analyze budget_usage_allocations`
process.stdout.write(`wrote ${ROWS} usage rows and ${2 * ROWS} allocations in ${fmt((Date.now() - started) / 1000, 0)} s\n`)
const refreshStarted = Date.now()
await admin('POST', `/${team}/refresh-cache`)
await admin('POST', `/${org}/refresh-cache`)
const refreshMs = (Date.now() - refreshStarted) / 2

const load = async () => {
  const result = await autocannon({ url: `${gateway.url}/v1/chat/completions`, connections: 16, duration: SECONDS, ...HOT_CALL })
  return { perSecond: result.requests.total / SECONDS, p99: result.latency.p99, refused: result.non2xx + result.errors + result.timeouts }
}

await autocannon({ url: `${gateway.url}/v1/chat/completions`, connections: 16, duration: 2, ...HOT_CALL }) // warm up
const quiet = await load()
let refreshing = true
let refreshes = 0
const refresher = (async () => {
  while (refreshing) {
    await admin('POST', `/${refreshes % 2 === 0 ? team : org}/refresh-cache`)
    refreshes++
  }
})()
const busy = await load()
refreshing = false
await refresher

gateway.child.kill('SIGTERM')
await once(gateway.child, 'exit')
process.stdout.write([
  '',
  `| 16 connections, one hot team + organization, ${ROWS} usage rows | calls/s | p99 ms | not 200 |`,
  '|---|---|---|---|',
  `| gated load alone | ${fmt(quiet.perSecond, 0)} | ${quiet.p99} | ${quiet.refused} |`,
  `| gated load with forced refresh-cache all along (${refreshes} refreshes, each about ${fmt(refreshMs, 0)} ms) | ${fmt(busy.perSecond, 0)} | ${busy.p99} | ${busy.refused} |`,
  '',
  `target: no refusal and at most 50 ms added to the p99 -> ${busy.refused === 0 && busy.p99 - quiet.p99 <= 50 ? 'met' : 'NOT met'} (added ${busy.p99 - quiet.p99} ms)`,
  ''
].join('\n'))
await sql.end()
await database.close()
