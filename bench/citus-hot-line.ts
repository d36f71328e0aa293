// A hot line's throughput on the Citus coordinator against plain PostgreSQL on the same machine (issue 27): the
// same gateway process (bench/gateway-server.ts) loaded with autocannon, once on a database of the machine's
// PostgreSQL (DATABASE_URL, else 127.0.0.1:5432) and once on a database of the local Citus cluster (CITUS_URL,
// else scripts/citus-cluster.sh's coordinator on 5501, its workers read from its node list), where the plugin's
// migrate() distributes the tables and delegates the gate's statements.
//
// Two lines on each, under organization 'acme':
// - 'hot': a team budget far from its limit, admitted from the process's lease (the database sees lease takes
//   and returns, and settlement batches);
// - 'held': a team budget in shadow, whose line is held call by call (a hold batch and a settlement batch per
//   round of calls: the database's own path).
// Engines alternate, round by round, so that the machine's drift falls on both; the figures are the medians of
// the rounds, and the ratio Citus / plain is the one to read. Each database's invariants are checked at the end.
//
//   npm run bench:citus            (SECONDS=8 ROUNDS=3 CONNECTIONS=16)
import { once } from 'node:events'
import autocannon from 'autocannon'
import postgres from 'postgres'
import { createTestDatabase } from '../test/fixtures/database.js'
import { findViolations } from '../test/fixtures/invariants.js'
import { HOT_CALL, fmt, heldLine, hotLine, median, startBenchGateway } from './harness.js'

const SECONDS = Number(process.env.SECONDS ?? 8)
const ROUNDS = Number(process.env.ROUNDS ?? 3)
const CONNECTIONS = Number(process.env.CONNECTIONS ?? 16)
const PLAIN = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const CITUS = process.env.CITUS_URL ?? 'postgres://postgres@127.0.0.1:5501/postgres'

const cleanups: Array<() => unknown> = []
const teardown = { teardown: (fn: () => unknown) => { cleanups.push(fn) } }

/** The Citus workers of the coordinator at `url`, as connection strings with its user, on their postgres database. */
async function citusWorkers (url: string): Promise<string[]> {
  const sql = postgres(url, { max: 1, onnotice: () => {} })
  try {
    const nodes = await sql<Array<{ host: string, port: number }>>`
      select nodename as host, nodeport as port from pg_dist_node where groupid <> 0 and noderole = 'primary' and isactive order by nodeport`
    return nodes.map(({ host, port }) => { const worker = new URL(url); worker.hostname = host; worker.port = String(port); worker.pathname = '/postgres'; return worker.toString() })
  } finally {
    await sql.end()
  }
}

/** A fresh database on `server` (on a Citus coordinator, on its workers too, joined: test/fixtures/database.ts). */
async function freshDatabase (server: string, workers: string[]): Promise<string> {
  process.env.DATABASE_URL = server
  process.env.CITUS_WORKER_URLS = workers.join(',')
  return await createTestDatabase(teardown)
}

interface Engine { name: string, url: string, gateway: string, stop: () => Promise<void>, runs: { hot: Run[], held: Run[] } }
interface Run { perSecond: number, p99: number, other: number }

async function engine (name: string, server: string, workers: string[]): Promise<Engine> {
  const url = await freshDatabase(server, workers)
  const { url: gateway, child } = await startBenchGateway(url)
  // SIGTERM: the gateway closes, giving back its leases and settling what it admitted (bench/gateway-server.ts)
  const stop = async () => { if (child.exitCode === null) { child.kill('SIGTERM'); await once(child, 'exit') } }
  cleanups.push(stop)
  const { org } = await hotLine(gateway)
  await heldLine(gateway, org)
  return { name, url, gateway, stop, runs: { hot: [], held: [] } }
}

async function load (gateway: string, team: 'hot' | 'held', seconds: number): Promise<Run> {
  const result = await autocannon({ url: `${gateway}/v1/chat/completions`, connections: CONNECTIONS, duration: seconds, ...HOT_CALL, headers: { ...HOT_CALL.headers, 'x-relay-team-id': team } })
  return { perSecond: result['2xx'] / seconds, p99: result.latency.p99, other: result.non2xx + result.errors + result.timeouts }
}

try {
  const workers = await citusWorkers(CITUS)
  if (workers.length === 0) throw new Error(`no Citus worker at ${CITUS}: start the cluster (scripts/citus-cluster.sh start) or set CITUS_URL`)
  const engines = [await engine('plain PostgreSQL', PLAIN, []), await engine(`Citus (coordinator, ${workers.length} workers)`, CITUS, workers)]
  for (const one of engines) { await load(one.gateway, 'hot', 2); await load(one.gateway, 'held', 2) } // warm up
  for (let round = 0; round < ROUNDS; round++) {
    for (const one of round % 2 === 0 ? engines : [...engines].reverse()) {
      one.runs.hot.push(await load(one.gateway, 'hot', SECONDS))
      one.runs.held.push(await load(one.gateway, 'held', SECONDS))
    }
  }
  await new Promise((resolve) => setTimeout(resolve, 1500)) // the last settlements
  const lines: string[] = [
    `${ROUNDS} rounds of ${SECONDS} s a line and engine, ${CONNECTIONS} connections, engines alternating; medians of the rounds`,
    '',
    '| line | plain PostgreSQL: calls/s, p99 | Citus coordinator: calls/s, p99 | Citus / plain | not 2xx |',
    '|---|---|---|---|---|'
  ]
  for (const line of ['hot', 'held'] as const) {
    const [plain, citus] = engines.map((one) => ({ perSecond: median(one.runs[line].map((run) => run.perSecond)), p99: median(one.runs[line].map((run) => run.p99)), other: one.runs[line].reduce((sum, run) => sum + run.other, 0) }))
    lines.push(`| ${line === 'hot' ? 'hot (leased)' : 'held call by call'} | ${fmt(plain!.perSecond, 0)}, ${plain!.p99} ms | ${fmt(citus!.perSecond, 0)}, ${citus!.p99} ms | **${fmt(citus!.perSecond / plain!.perSecond)}** | ${plain!.other} / ${citus!.other} |`)
  }
  lines.push('', `each round's calls/s, plain: hot ${engines[0]!.runs.hot.map((run) => fmt(run.perSecond, 0)).join(', ')}; held ${engines[0]!.runs.held.map((run) => fmt(run.perSecond, 0)).join(', ')}`)
  lines.push(`each round's calls/s, Citus: hot ${engines[1]!.runs.hot.map((run) => fmt(run.perSecond, 0)).join(', ')}; held ${engines[1]!.runs.held.map((run) => fmt(run.perSecond, 0)).join(', ')}`)
  for (const one of engines) {
    const sql = postgres(one.url, { max: 2, onnotice: () => {} })
    const live = async () => Number((await sql`select count(distinct id)::int as n from budget_reservations`)[0]!.n)
    const before = await live()
    await one.stop()
    const violations = await findViolations(sql)
    lines.push(`${one.name}: ${before} reservations live before the gateway closed, ${await live()} after; ` +
      `${violations.length === 0 ? 'invariants hold' : `${violations.length} violations, the first: ${violations.slice(0, 3).join('; ')}`} (no hold left, each window equal to its allocations, no hard budget over its limit)`)
    await sql.end()
  }
  process.stdout.write(lines.join('\n') + '\n')
} finally {
  for (const cleanup of cleanups.reverse()) await cleanup()
}
