// The gate's hot path, measured in one run (issue 10): a real gateway process (bench/gateway-server.ts)
// loaded with autocannon, beside the floor of two bare single-row UPDATE round trips measured alone.
// - cost per call on one connection: (gated - ungated) time per call, against the floor's time per pair;
// - one hot team + organization budget at 16 connections: gated calls per second and p99, against the
//   floor's pairs per second at 16 connections;
// - the same hot line with request and token rate limits on its organization budget (limits that never
//   bind, so what is measured is their cost), against the same line without (issue 11: at least 0.8x);
// - the same hot line while Prometheus scrapes GET {prefix}/metrics ten times a second (issue 12: a
//   scrape reads the status cache, and must not lower the gate's throughput measurably);
// - the gate's own CPU: the gateway process's CPU per call, gated less ungated, over the same hot-line load,
//   and gated throughput against ungated (targets: at most 60 µs, at most 1.9x, at least 0.5x);
// - the machine's CPU per call over those loads: the gateway's, PostgreSQL's (bench/pg-cpu.ts) and the load
//   generator's (autocannon, in this process), and the gated / ungated throughput the cores allow from them,
//   as measured, with the gate's CPU at its target and with the gate's CPU at 0;
// - two gateway processes on one database, 8 connections each: exact spend across processes (scale-out
//   itself is measured at a fixed load, bench/scale-out.ts);
// - afterwards, exactness: recorded spend equals admitted calls x their cost on both budgets;
// - the decision log's cost (bench/decision-log.ts): log off against on, for an admitting and a refusing
//   line (issue 21: at least 0.95x). BENCH_ONLY=decisions runs only this part.
import { once } from 'node:events'
import { availableParallelism } from 'node:os'
import autocannon from 'autocannon'
import postgres from 'postgres'
import { fromUnits, toUnits } from '../lib/kernel/money.js'
import { costFromUsage } from '../lib/pricing/estimate.js'
import { DEFAULT_PRICES, createPriceBook } from '../lib/pricing/pricing.js'
import { ANSWER, BENCH_ADMIN_TOKEN } from './gateway-server.js'
import { estimateCostRows } from './estimate-cost.js'
import { HOT_CALL as CALL, benchDatabase, databaseName, floorPairs, fmt, hotLine, startBenchGateway } from './harness.js'
import { decisionLogRows } from './decision-log.js'
import { serverCpuMeter } from './pg-cpu.js'

// The estimate's own cost, alone, before any load runs (BENCH_ONLY=estimate prints just this).
const estimateRows = await estimateCostRows()
if (process.env.BENCH_ONLY === 'estimate') {
  process.stdout.write(['', '| what | figure | ratio |', '|---|---|---|', ...estimateRows, ''].join('\n'))
  process.exit(0)
}

const SECONDS = Number(process.env.BENCH_SECONDS ?? 10)
const HOT = 16
const PREFIX = '/api/v1/budgets'
const COST = costFromUsage({ model: ANSWER.model, inputTokens: ANSWER.usage.prompt_tokens, outputTokens: ANSWER.usage.completion_tokens }, createPriceBook(DEFAULT_PRICES))!

const database = await benchDatabase()
process.stdout.write(`gate benchmark on PostgreSQL from ${database.source}, ${SECONDS} s a run\n`)
const sql = postgres(database.url, { max: HOT, onnotice: () => {} })
// PostgreSQL's CPU for this benchmark's database (bench/pg-cpu.ts), or why it cannot be read here.
const meter = await serverCpuMeter(sql, (name) => name === databaseName(database.url))

if (process.env.BENCH_ONLY === 'decisions') {
  const decisions = await decisionLogRows(database.url, sql, HOT, SECONDS)
  process.stdout.write(['', '| what | figure | ratio |', '|---|---|---|', ...decisions.rows, '', decisions.summary, ''].join('\n'))
  await sql.end()
  await database.close()
  process.exit(0)
}


/** The gateway process's CPU so far (user + system, all its threads: GC's included), in microseconds. */
async function cpuMicros (url: string): Promise<number> {
  return ((await (await fetch(`${url}/bench/cpu`)).json()) as { micros: number }).micros
}

async function load (url: string, connections: number, path: string, seconds = SECONDS) {
  const before = await cpuMicros(url)
  const server = typeof meter === 'string' ? null : await meter.start()
  // autocannon runs in this process: its CPU is this process's over the load.
  const loader = process.cpuUsage()
  const result = await autocannon({ url: `${url}${path}`, connections, duration: seconds, ...CALL })
  const loaded = process.cpuUsage(loader)
  const database = server === null ? null : await server.stop()
  const calls = result.requests.total
  const cpuPerCall = (await cpuMicros(url) - before) / calls
  return {
    perSecond: calls / seconds,
    ok: result['2xx'],
    other: result.non2xx + result.errors + result.timeouts,
    p99: result.latency.p99,
    cpuPerCall,
    loaderCpuPerCall: (loaded.user + loaded.system) / calls,
    databaseCpuPerCall: database === null ? null : database.benchmark / calls
  }
}

/** The floor's pairs per second on `connections` loops for `seconds` (harness.ts floorPairs). */
const floorRate = async (connections: number, seconds: number): Promise<number> => (await floorPairs(sql, connections, seconds)).perSecond

// The floor, alone: nothing else runs against the database while it is measured.
await sql`create table bench_counter (id int primary key, n bigint not null)`
await sql`insert into bench_counter values (1, 0)`
await floorRate(1, 2) // warm up
const floorSerial = await floorRate(1, SECONDS)
const floorHot = await floorRate(HOT, SECONDS)
const floorPairMs = 1000 / floorSerial

const first = await startBenchGateway(database.url)
const admin = async (path: string, body: unknown, method = 'POST') => {
  const response = await fetch(`${first.url}${PREFIX}${path}`, { method, headers: { authorization: `Bearer ${BENCH_ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(body) })
  if (!response.ok) throw new Error(await response.text())
  return await response.json() as { id: string }
}
const { org, team } = await hotLine(first.url)

await load(first.url, 1, '/v1/chat/completions', 2) // warm up
const ungatedOne = await load(first.url, 1, '/ungated/v1/chat/completions')
const gatedOne = await load(first.url, 1, '/v1/chat/completions')
const gateMs = 1000 / gatedOne.perSecond - 1000 / ungatedOne.perSecond
const ungatedHot = await load(first.url, HOT, '/ungated/v1/chat/completions')
const gatedHot = await load(first.url, HOT, '/v1/chat/completions')
// The gate's own CPU: the process's CPU per call on the gated route less on the ungated one, over the same load.
const gateCpu = gatedHot.cpuPerCall - ungatedHot.cpuPerCall

/**
 * The whole machine's CPU a call on each route: the gateway, PostgreSQL and the load generator, all on the
 * same cores. Where the cores are what limits both loads, throughput goes as the inverse of this, so its
 * ratio bounds gated / ungated throughput; the same with the gate's CPU at its 60 µs target, and at 0, says
 * what the gate alone could give on this machine.
 */
function machineRows (): string[] {
  if (ungatedHot.databaseCpuPerCall === null || gatedHot.databaseCpuPerCall === null) return [`| the machine's CPU per call | not measured: ${meter as string} | |`]
  const parts = (run: typeof gatedHot, database: number) => ({ text: `${fmt(run.cpuPerCall, 1)} + ${fmt(database, 1)} + ${fmt(run.loaderCpuPerCall, 1)}`, all: run.cpuPerCall + database + run.loaderCpuPerCall })
  const ungated = parts(ungatedHot, ungatedHot.databaseCpuPerCall)
  const gated = parts(gatedHot, gatedHot.databaseCpuPerCall)
  const freeGate = gated.all - gateCpu
  return [
    `| the machine's CPU per call, ungated, ${HOT} connections: gateway + PostgreSQL + load generator | ${ungated.text} = ${fmt(ungated.all, 1)} µs | |`,
    `| the machine's CPU per call, gated, ${HOT} connections: gateway + PostgreSQL + load generator | ${gated.text} = ${fmt(gated.all, 1)} µs | ${ratio(ungated.all / gated.all)}: the gated / ungated throughput the ${availableParallelism()} cores allow |`,
    `| the same, with the gate's CPU at its 60 µs target and all else as measured | ${fmt(freeGate + 60, 1)} µs | ${ratio(ungated.all / (freeGate + 60))}: the most that target gives here |`,
    `| the same, with the gate's own CPU at 0 and all else as measured | ${fmt(freeGate, 1)} µs | ${ratio(ungated.all / freeGate)}: the most any gate gives here |`
  ]
}

// Rate limits on the organization budget, high enough never to refuse: their cost on the hot path.
await admin(`/${org}`, { rateLimits: { requestsPerMinute: 1_000_000_000, tokensPerMinute: 1_000_000_000_000 } }, 'PUT')
await load(first.url, HOT, '/v1/chat/completions', 2) // warm up: the line reloads with its limits
const rateLimitedHot = await load(first.url, HOT, '/v1/chat/completions')
await admin(`/${org}`, { rateLimits: {} }, 'PUT')

// Scrapes every 100 ms during the same load (Prometheus's default is every 15 s).
let scraping = true
let scrapes = 0
const scraper = (async () => {
  while (scraping) {
    const response = await fetch(`${first.url}${PREFIX}/metrics`, { headers: { authorization: `Bearer ${BENCH_ADMIN_TOKEN}` } })
    if (!response.ok) throw new Error(`scrape: ${response.status}`)
    await response.text()
    scrapes++
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
})()
const scrapedHot = await load(first.url, HOT, '/v1/chat/completions')
scraping = false
await scraper

// Two processes on two cores cannot beat one that already uses both: scale-out is measured at a fixed
// load instead (bench/scale-out.ts). This run only checks that a second process's calls are exact too.
const second = await startBenchGateway(database.url)
const [a, b] = await Promise.all([load(first.url, HOT / 2, '/v1/chat/completions'), load(second.url, HOT / 2, '/v1/chat/completions')])

// Exactness: every admitted call (counted by the gateways themselves) recorded once at its cost, on both budgets of the line.
let admitted = 0
for (const gateway of [first, second]) admitted += ((await (await fetch(`${gateway.url}/bench/admitted`)).json()) as { admitted: number }).admitted
for (const gateway of [first, second]) { gateway.child.kill('SIGTERM'); await once(gateway.child, 'exit') } // closing drains the settlements
const refused = [gatedOne, gatedHot, rateLimitedHot, scrapedHot, a, b].reduce((sum, run) => sum + run.other, 0)
const [held] = await sql<Array<{ n: number }>>`select count(*)::int as n from budget_reservations`
const spent = await sql<Array<{ id: string, total: string, calls: number }>>`
  select c.budget_id as id, sum(c.current_amount)::text as total, sum(c.usage_count)::int as calls
  from budget_status_cache c where c.budget_id in (${org}, ${team}) group by c.budget_id`
const expected = fromUnits(toUnits(COST) * BigInt(admitted))
const exact = spent.length === 2 && spent.every((row) => toUnits(row.total) === toUnits(expected)) && held!.n === 0

const decisions = await decisionLogRows(database.url, sql, HOT, SECONDS)

const ratio = (value: number) => fmt(value)
process.stdout.write([
  '',
  '| what | figure | ratio |',
  '|---|---|---|',
  `| floor: two single-row UPDATE round trips, one connection, alone | ${fmt(floorPairMs, 3)} ms a pair | 1.00 |`,
  `| floor at ${HOT} connections, one row, alone | ${fmt(floorHot, 0)} pairs/s | 1.00 |`,
  `| ungated route, one connection | ${fmt(1000 / ungatedOne.perSecond, 3)} ms a call | |`,
  `| gated route, one connection (team under an organization) | ${fmt(1000 / gatedOne.perSecond, 3)} ms a call | |`,
  `| cost of the gate per call (gated - ungated) | ${fmt(gateMs, 3)} ms | ${ratio(gateMs / floorPairMs)} of the floor's pair |`,
  `| ungated, ${HOT} connections | ${fmt(ungatedHot.perSecond, 0)} calls/s, p99 ${ungatedHot.p99} ms, ${fmt(ungatedHot.cpuPerCall, 1)} µs of process CPU a call | |`,
  `| gated, ${HOT} connections, one hot team + organization | ${fmt(gatedHot.perSecond, 0)} calls/s, p99 ${gatedHot.p99} ms, ${fmt(gatedHot.cpuPerCall, 1)} µs of process CPU a call | ${ratio(gatedHot.perSecond / floorHot)} of the floor's pairs/s; ${ratio(gatedHot.perSecond / ungatedHot.perSecond)} of ungated |`,
  `| the gate's CPU per call (gated - ungated process CPU, ${HOT} connections) | ${fmt(gateCpu, 1)} µs | ${ratio(gatedHot.cpuPerCall / ungatedHot.cpuPerCall)}x the ungated route's CPU |`,
  ...machineRows(),
  `| gated, ${HOT} connections, the same line with request and token rate limits | ${fmt(rateLimitedHot.perSecond, 0)} calls/s, p99 ${rateLimitedHot.p99} ms | ${ratio(rateLimitedHot.perSecond / gatedHot.perSecond)} of the same line without |`,
  `| gated, ${HOT} connections, the same line while /metrics is scraped every 100 ms (${scrapes} scrapes) | ${fmt(scrapedHot.perSecond, 0)} calls/s, p99 ${scrapedHot.p99} ms | ${ratio(scrapedHot.perSecond / gatedHot.perSecond)} of the same line unscraped |`,
  `| two gateway processes, ${HOT / 2} connections each (exactness across processes; scale-out: bench/scale-out.ts) | ${fmt(a.perSecond + b.perSecond, 0)} calls/s | |`,
  ...decisions.rows,
  ...estimateRows,
  '',
  decisions.summary,
  `admitted ${admitted}, not 200: ${refused}; reservations left: ${held!.n}; recorded on each budget: ${spent.map((row) => `${row.total} in ${row.calls} calls`).join(', ')}; expected ${expected}: ${exact ? 'exact' : 'NOT exact'}`,
  `targets: gate per call <= 1.3x the floor -> ${gateMs / floorPairMs <= 1.3 ? 'met' : 'NOT met'}; hot budget >= 2x the floor's pairs/s -> ${gatedHot.perSecond / floorHot >= 2 ? 'met' : 'NOT met'}; p99 < 20 ms -> ${gatedHot.p99 < 20 ? 'met' : 'NOT met'}; gate CPU <= 60 µs a call -> ${gateCpu <= 60 ? 'met' : 'NOT met'}; gated / ungated CPU <= 1.9x -> ${gatedHot.cpuPerCall / ungatedHot.cpuPerCall <= 1.9 ? 'met' : 'NOT met'}; gated >= 0.5x ungated throughput -> ${gatedHot.perSecond / ungatedHot.perSecond >= 0.5 ? 'met' : 'NOT met'}; rate-limited >= 0.8x without -> ${rateLimitedHot.perSecond / gatedHot.perSecond >= 0.8 ? 'met' : 'NOT met'}`,
  ''
].join('\n'))

await sql.end()
await database.close()
