// What decides scale-out, measured on a machine too small to show it as throughput (two cores cannot make
// two gateway processes faster than one): a fixed total rate of gated calls, well below saturation, spread
// over 1, 2 and 4 gateway processes (bench/gateway-server.ts) on one database, and what each call costs
// PostgreSQL as processes are added. For each setting: calls served, the worst process's p99, PostgreSQL's
// CPU per admitted call (from /proc, bench/pg-cpu.ts), transactions per admitted call (pg_stat_database),
// the gateways' own CPU per call (GET /bench/cpu), the settlement batches (pg_stat_user_functions), the
// backends waiting for a lock (pg_stat_activity), and exact spend. PostgreSQL's CPU per call is set against the floor's: two single-row UPDATEs on one row at
// 16 connections (as bench/gate.ts measures it), measured alone first. Each setting runs on a fresh
// database with its own organization 'acme' and team 'hot', so its exactness check stands alone.
// SCALE_RATE sets the total rate (1000 calls/s), BENCH_SECONDS each load's length (10 s).
import { once } from 'node:events'
import autocannon from 'autocannon'
import postgres, { type Sql } from 'postgres'
import { fromUnits, toUnits } from '../lib/kernel/money.js'
import { costFromUsage } from '../lib/pricing/estimate.js'
import { DEFAULT_PRICES, createPriceBook } from '../lib/pricing/pricing.js'
import { createTestDatabase } from '../test/fixtures/database.js'
import { ANSWER } from './gateway-server.js'
import { HOT_CALL as CALL, benchDatabase, databaseName, floorPairs, fmt, hotLine, startBenchGateway } from './harness.js'
import { serverCpuMeter, type ServerCpu } from './pg-cpu.js'

const SECONDS = Number(process.env.BENCH_SECONDS ?? 10)
// One process serves it on this 2-core machine; at 1500 calls/s four gateways, autocannon and PostgreSQL
// filled the machine and served about 70% of the offered calls (at 1000, 64% to 97% with other work about).
const RATE = Number(process.env.SCALE_RATE ?? 1000)
const CONNECTIONS = 16
const PROCESS_COUNTS = [1, 2, 4]
const WARM_UP_SECONDS = 3
// A PostgreSQL 15 backend that goes idle less than a second after its last report holds its counts for up to
// 10 s (PGSTAT_IDLE_INTERVAL) before it reports them; a backend that exits reports at once.
const IDLE_REPORT_MS = 11_000
// A gateway keeps reading the budget definitions' version (every 40 ms) for 5 s after its last call: after the
// warm-up, those reads end and then their counts are reported, before the measure begins.
const AFTER_WARM_UP_MS = 5_000 + IDLE_REPORT_MS
const EXITED_REPORT_MS = 1_000
const COST = costFromUsage({ model: ANSWER.model, inputTokens: ANSWER.usage.prompt_tokens, outputTokens: ANSWER.usage.completion_tokens }, createPriceBook(DEFAULT_PRICES))!
// The gate's statements that write a hot line's window rows, counted per setting.
const SETTLEMENTS = ['budget_settle_leased', 'budget_settle_batch']
const LEASE_WRITES = ['budget_lease_take', 'budget_lease_return']

const database = await benchDatabase()
process.stdout.write(`scale-out benchmark on PostgreSQL from ${database.source}: ${RATE} calls/s in all, ${CONNECTIONS} connections in all, ${SECONDS} s a setting\n`)
const databaseCleanups: Array<() => unknown> = []
const benchDatabases = new Set([databaseName(database.url)])
const sql = postgres(database.url, { max: CONNECTIONS, onnotice: () => {} })
const meter = await serverCpuMeter(sql, (name) => benchDatabases.has(name))
if (typeof meter === 'string') process.stdout.write(`${meter}\n`)
const sleep = async (ms: number) => await new Promise((resolve) => setTimeout(resolve, ms))

/** The database's transactions and its gate functions' calls and time so far, once every backend has reported. */
async function databaseStats (reader: Sql, waitMs: number) {
  await sleep(waitMs)
  const [row] = await reader<Array<{ transactions: string, functions: Record<string, [number, number]> | null }>>`
    select (select xact_commit + xact_rollback from pg_stat_database where datname = current_database())::text as transactions,
      (select json_object_agg(funcname, json_build_array(calls, total_time)) from pg_stat_user_functions) as functions`
  const functions = row!.functions ?? {}
  const sum = (names: string[], index: 0 | 1) => names.reduce((total, name) => total + (functions[name]?.[index] ?? 0), 0)
  return { transactions: Number(row!.transactions), settlements: sum(SETTLEMENTS, 0), settlementMs: sum(SETTLEMENTS, 1), leaseWrites: sum(LEASE_WRITES, 0) }
}

/**
 * Runs `work` between two reads of the database's stats, the first once the backends have reported
 * (`waitBefore`), the second `waitAfter` after the work; the server's CPU over the work alone. The reader's
 * own statement before the work is one transaction of the delta: left out.
 */
async function measured<T> (reader: Sql, waitBefore: number, work: () => Promise<T>, waitAfter: number) {
  const before = await databaseStats(reader, waitBefore)
  const measure = typeof meter === 'string' ? null : await meter.start()
  const result = await work()
  const cpu: ServerCpu | null = measure === null ? null : await measure.stop()
  const after = await databaseStats(reader, waitAfter)
  return {
    result,
    transactions: after.transactions - before.transactions - 1,
    settlements: after.settlements - before.settlements,
    settlementMs: after.settlementMs - before.settlementMs,
    leaseWrites: after.leaseWrites - before.leaseWrites,
    cpu,
    /** The benchmark's share of the server's CPU: its databases' backends and the background processes. */
    pgMicros: cpu?.benchmark ?? null
  }
}

/**
 * Samples the setting's backends every 100 ms while `work` runs (from the floor's database, so the samples
 * are not transactions of the setting's): how many were running a statement, and how many of those waited
 * for a lock (a row another process's transaction held). Contention on the hot rows shows here first.
 */
async function lockWaits<T> (database: string, work: () => Promise<T>) {
  let samples = 0
  let active = 0
  let waiting = 0
  let sampling = Promise.resolve()
  const timer = setInterval(() => {
    sampling = sampling.then(async () => {
      const [row] = await sql<Array<{ active: number, waiting: number }>>`
        select count(*) filter (where state = 'active')::int as active, count(*) filter (where state = 'active' and wait_event_type = 'Lock')::int as waiting
        from pg_stat_activity where datname = ${database}`
      samples++
      active += row!.active
      waiting += row!.waiting
    })
  }, 100)
  const result = await work()
  clearInterval(timer)
  await sampling
  return { result, activePerSample: active / samples, waitingPerSample: waiting / samples }
}

// The floor, alone: nothing else of this benchmark runs against the server while it is measured.
await sql`create table bench_counter (id int primary key, n bigint not null)`
await sql`insert into bench_counter values (1, 0)`
await floorPairs(sql, CONNECTIONS, 2) // warm up
const floor = await measured(sql, IDLE_REPORT_MS, async () => await floorPairs(sql, CONNECTIONS, SECONDS), IDLE_REPORT_MS)
const floorPairMicros = floor.pgMicros === null ? null : floor.pgMicros / floor.result.pairs
const floorUpdatesPerSecond = 2 * floor.result.perSecond

/** One setting: RATE calls/s in all over `processes` gateways, on a fresh database with its own line. */
async function setting (processes: number) {
  const url = await createTestDatabase({ teardown: (fn) => databaseCleanups.push(fn) })
  benchDatabases.add(databaseName(url))
  // Counts calls and time of the gate's plpgsql functions (sessions started after this: the gateways' own).
  await sql`alter database ${sql(databaseName(url))} set track_functions = 'pl'`
  const gateways: Array<Awaited<ReturnType<typeof startBenchGateway>>> = []
  for (let i = 0; i < processes; i++) gateways.push(await startBenchGateway(url)) // one at a time: the first runs the migrations
  const { org, team } = await hotLine(gateways[0]!.url)
  const read = async <T>(path: string) => await Promise.all(gateways.map(async (gateway) => await (await fetch(`${gateway.url}${path}`)).json() as T))
  const load = async (seconds: number) => await Promise.all(gateways.map(async (gateway) =>
    await autocannon({ url: `${gateway.url}/v1/chat/completions`, connections: CONNECTIONS / processes, overallRate: RATE / processes, duration: seconds, ...CALL })))

  await load(WARM_UP_SECONDS)
  const reader = postgres(url, { max: 1, onnotice: () => {} })
  await reader`select 1` // its connection's first statements (postgres.js reads the array types) before the measure
  // The measure ends when the gateways have stopped (SIGTERM: closing drains the settlements and gives the
  // leases back, as an idle process would): their backends exit and report their counts at once.
  const run = await measured(reader, AFTER_WARM_UP_MS, async () => {
    const admittedBefore = await read<{ admitted: number }>('/bench/admitted')
    const cpuBefore = await read<{ micros: number }>('/bench/cpu')
    const { result: results, activePerSample, waitingPerSample } = await lockWaits(databaseName(url), async () => await load(SECONDS))
    const cpuAfter = await read<{ micros: number }>('/bench/cpu')
    const admittedAfter = await read<{ admitted: number }>('/bench/admitted')
    for (const gateway of gateways) { gateway.child.kill('SIGTERM'); await once(gateway.child, 'exit') }
    return {
      results,
      activePerSample,
      waitingPerSample,
      admitted: admittedAfter.reduce((sum, { admitted }, i) => sum + admitted - admittedBefore[i]!.admitted, 0),
      admittedInAll: admittedAfter.reduce((sum, { admitted }) => sum + admitted, 0),
      gatewayMicros: cpuAfter.reduce((sum, { micros }, i) => sum + micros - cpuBefore[i]!.micros, 0)
    }
  }, EXITED_REPORT_MS)
  const { results, admitted, admittedInAll, gatewayMicros, activePerSample, waitingPerSample } = run.result

  // Exactness: every call the gateways admitted (warm-up included) recorded once at its cost on both budgets, no hold left.
  const [held] = await reader<Array<{ n: number }>>`select count(*)::int as n from budget_reservations`
  const spent = await reader<Array<{ id: string, total: string }>>`
    select c.budget_id as id, sum(c.current_amount)::text as total
    from budget_status_cache c where c.budget_id in (${org}, ${team}) group by c.budget_id`
  await reader.end()
  const expected = fromUnits(toUnits(COST) * BigInt(admittedInAll))
  const exact = spent.length === 2 && spent.every((row) => toUnits(row.total) === toUnits(expected)) && held!.n === 0

  return {
    processes,
    served: results.reduce((sum, result) => sum + result['2xx'], 0),
    notServed: results.reduce((sum, result) => sum + result.non2xx + result.errors + result.timeouts, 0),
    p99s: results.map((result) => result.latency.p99),
    worstP99: Math.max(...results.map((result) => result.latency.p99)),
    admitted,
    pgPerCall: run.pgMicros === null ? null : run.pgMicros / admitted,

    serverMicros: run.cpu?.server ?? null,
    transactionsPerCall: run.transactions / admitted,
    gatewayPerCall: gatewayMicros / admitted,
    // Each settlement batch and each lease take or return writes the line's window rows once.
    settlementBatchesPerProcessPerSecond: run.settlements / processes / SECONDS,
    callsPerSettlement: admitted / run.settlements,
    settlementMsEach: run.settlementMs / run.settlements,
    rowWritesPerProcessPerSecond: (run.settlements + run.leaseWrites) / processes / SECONDS,
    // What the transactions were, per admitted call: settlement batches, lease takes and returns, and the rest (holds, line loads, the decision log).
    transactionsBy: { settlements: run.settlements / admitted, leases: run.leaseWrites / admitted, other: (run.transactions - run.settlements - run.leaseWrites) / admitted },
    admittedInAll,
    activePerSample,
    waitingPerSample,
    spent: spent.map((row) => row.total),
    expected,
    held: held!.n,
    exact
  }
}

const settings = []
for (const processes of PROCESS_COUNTS) settings.push(await setting(processes))
await sql.end()
for (const cleanup of databaseCleanups.reverse()) await cleanup()
await database.close()

const one = settings[0]!
const more = settings.slice(1)
const micros = (value: number | null) => value === null ? 'not measured' : `${fmt(value, 1)} µs`
const toFloor = (value: number | null) => value === null || floorPairMicros === null ? null : value / floorPairMicros
const verdict = (holds: boolean | null) => holds === null ? 'not measured' : holds ? 'met' : 'NOT met'
const all = (checks: Array<boolean | null>) => checks.includes(null) ? null : checks.every(Boolean)

const pgWithinOne = all(more.map((s) => s.pgPerCall === null || one.pgPerCall === null ? null : s.pgPerCall <= 1.25 * one.pgPerCall))
const p99WithinOne = more.every((s) => s.worstP99 <= 1.5 * one.worstP99)
const pgToFloor = all(settings.map((s) => { const ratio = toFloor(s.pgPerCall); return ratio === null ? null : ratio <= 0.21 }))
const transactionsLow = settings.every((s) => s.transactionsPerCall <= 0.024)
const exact = settings.every((s) => s.exact)

process.stdout.write([
  '',
  `floor alone: two single-row UPDATEs on one row, ${CONNECTIONS} connections: ${fmt(floor.result.perSecond, 0)} pairs/s (${fmt(floorUpdatesPerSecond, 0)} updates/s on the row, ${fmt(1e6 / floorUpdatesPerSecond, 1)} µs each), ` +
    `PostgreSQL CPU ${micros(floorPairMicros)} a pair, ${fmt(floor.transactions / floor.result.pairs, 2)} transactions a pair` +
    (floor.cpu === null ? '' : `; the whole server meanwhile ${fmt(floor.cpu.server / 1e3, 0)} ms, the benchmark's processes ${fmt(floor.cpu.benchmark / 1e3, 0)} ms`),
  '',
  `| processes (connections each) | calls served of ${RATE * SECONDS} offered | p99 ms, worst process (each) | PG CPU per admitted call | ratio to one process | ratio to the floor's pair | transactions per call | gateway CPU per call | settlement batches/s per process (calls each, ms each) | spend |`,
  '|---|---|---|---|---|---|---|---|---|---|',
  ...settings.map((s) => `| ${s.processes} (${CONNECTIONS / s.processes}) | ${s.served} (${s.notServed} not 200) | ${s.worstP99} (${s.p99s.join(', ')}) | ${micros(s.pgPerCall)} | ` +
    `${s.pgPerCall === null || one.pgPerCall === null ? '' : fmt(s.pgPerCall / one.pgPerCall)} | ${toFloor(s.pgPerCall) === null ? '' : fmt(toFloor(s.pgPerCall)!, 3)} | ${fmt(s.transactionsPerCall, 4)} | ${micros(s.gatewayPerCall)} | ` +
    `${fmt(s.settlementBatchesPerProcessPerSecond, 1)} (${fmt(s.callsPerSettlement, 1)}, ${fmt(s.settlementMsEach, 2)}) | ${s.exact ? 'exact' : 'NOT exact'} |`),
  '',
  ...settings.map((s) => `${s.processes} process(es): admitted ${s.admittedInAll} in all (${s.admitted} measured); recorded ${s.spent.join(' and ')}, expected ${s.expected} on each; reservations left ${s.held}; ` +
    `backends running a statement ${fmt(s.activePerSample, 2)} on average, waiting for a lock ${fmt(s.waitingPerSample, 3)}; ` +
    `hot row writes ${fmt(s.rowWritesPerProcessPerSecond, 1)}/s per process (settlement batches, lease takes and returns); ` +
    `transactions per call ${fmt(s.transactionsPerCall, 4)} = settlements ${fmt(s.transactionsBy.settlements, 4)} + leases ${fmt(s.transactionsBy.leases, 4)} + other ${fmt(s.transactionsBy.other, 4)}` +
    (s.serverMicros === null ? '' : `; PG CPU ${fmt(s.serverMicros / 1e3, 0)} ms for the whole server, ${fmt(s.pgPerCall! * s.admitted / 1e3, 0)} ms in the benchmark's processes`)),
  `one process served ${fmt(one.served / (RATE * SECONDS) * 100, 1)}% of the offered ${RATE} calls/s${one.served >= 0.98 * RATE * SECONDS ? '' : ': it does not sustain the rate, lower SCALE_RATE'}`,
  `capacity (one process): ${one.pgPerCall === null ? 'PG CPU not measured' : `${fmt(1e6 / one.pgPerCall, 0)} calls/s per PostgreSQL core`}, ${fmt(1e6 / one.gatewayPerCall, 0)} calls/s per gateway core; ` +
    `the hot row takes ${fmt(floorUpdatesPerSecond, 0)} updates/s (the floor's), so at ${fmt(one.rowWritesPerProcessPerSecond, 1)} writes/s per process it saturates at ${fmt(floorUpdatesPerSecond / one.rowWritesPerProcessPerSecond, 0)} processes`,
  `targets: p99 at 2 and 4 processes within 1.5x of one (worst process) -> ${verdict(p99WithinOne)}; PG CPU per admitted call within 1.25x of one process -> ${verdict(pgWithinOne)}; ` +
    `PG CPU per call <= 0.21x the floor's pair -> ${verdict(pgToFloor)}; transactions per call <= 0.024 -> ${verdict(transactionsLow)}; spend exact -> ${verdict(exact)}`,
  ''
].join('\n'))
