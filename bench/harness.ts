// What the benchmarks share: a fresh database on a real PostgreSQL, a gateway process, timing, and a tidy exit.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { readdirSync, statSync } from 'node:fs'
import type { Sql } from 'postgres'
import { createInterface } from 'node:readline'
import { createTestDatabase } from '../test/fixtures/database.js'
import { provideDatabaseServer } from '../test/fixtures/database-server.js'
import { BENCH_ADMIN_TOKEN } from './gateway-server.js'

/** A fresh database on DATABASE_URL's server (or an embedded one); `close` drops it and stops what was started. */
export async function benchDatabase (): Promise<{ url: string, source: string, close: () => Promise<void> }> {
  const server = await provideDatabaseServer()
  process.env.DATABASE_URL = server.url
  const cleanups: Array<() => unknown> = []
  const url = await createTestDatabase({ teardown: (fn) => cleanups.push(fn) })
  return {
    url,
    source: server.source,
    close: async () => {
      for (const cleanup of cleanups.reverse()) await cleanup()
      await server.stop()
    }
  }
}

/** The name of the database a connection string names. */
export const databaseName = (url: string): string => decodeURIComponent(new URL(url).pathname.slice(1))

export function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2
}

/** Milliseconds that `work` took. */
export async function timed (work: () => Promise<unknown>): Promise<number> {
  const start = process.hrtime.bigint()
  await work()
  return Number(process.hrtime.bigint() - start) / 1e6
}

/** Runs `worker` in `concurrency` loops until `durationMs` has passed; returns completed runs per second. */
export async function throughput (concurrency: number, durationMs: number, worker: (loop: number, i: number) => Promise<boolean>): Promise<{ perSecond: number, ok: number, failed: number }> {
  const deadline = Date.now() + durationMs
  let ok = 0
  let failed = 0
  const start = process.hrtime.bigint()
  await Promise.all(Array.from({ length: concurrency }, async (_, loop) => {
    for (let i = 0; Date.now() < deadline; i++) {
      if (await worker(loop, i)) ok++
      else failed++
    }
  }))
  const seconds = Number(process.hrtime.bigint() - start) / 1e9
  return { perSecond: ok / seconds, ok, failed }
}

export const fmt = (value: number, digits = 2) => value.toFixed(digits)

/** The newest modification time under `directory` (of files ending in `suffix`), 0 when there are none. */
function newest (directory: string, suffix: string): number {
  let time = 0
  for (const entry of readdirSync(directory, { recursive: true, encoding: 'utf8' })) {
    if (entry.endsWith(suffix)) time = Math.max(time, statSync(`${directory}/${entry}`).mtimeMs)
  }
  return time
}

/**
 * The plugin's build (dist/), made again when a source in lib/ is newer: the gateway a benchmark loads runs
 * what ships, as a gateway would (tsx names every closure it makes, which a hot path pays for per call).
 */
function ensureBuild (): void {
  const root = new URL('..', import.meta.url).pathname
  let built = 0
  try { built = statSync(`${root}dist/index.js`).mtimeMs } catch {}
  if (built > 0 && built >= newest(`${root}lib`, '.ts')) return
  process.stderr.write('building the plugin (npm run build) for the benchmark gateway\n')
  execFileSync(process.execPath, [`${root}node_modules/typescript/bin/tsc`, '-p', `${root}tsconfig.build.json`], { stdio: 'inherit' })
}

/** Starts bench/gateway-server.ts on the database as a process of its own (node run with `nodeArgs` first); resolves with its address. */
export async function startBenchGateway (databaseUrl: string, env: Record<string, string> = {}, nodeArgs: string[] = []): Promise<{ url: string, child: ChildProcess }> {
  ensureBuild()
  const script = new URL('./gateway-server.ts', import.meta.url).pathname
  const child = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', script], { env: { ...process.env, ...env, DATABASE_URL: databaseUrl }, stdio: ['ignore', 'pipe', 'inherit'] })
  for await (const line of createInterface({ input: child.stdout! })) {
    const url = /^listening (\S+)/.exec(line)?.[1]
    if (url !== undefined) { child.stdout!.resume(); return { url, child } }
  }
  throw new Error('the gateway did not start')
}

/**
 * The floor: two single-row UPDATEs on bench_counter's row 1, on `connections` loops for `seconds`: the pairs
 * done and their rate. What a gated call is set against (bench/gate.ts, bench/scale-out.ts).
 */
export async function floorPairs (sql: Sql, connections: number, seconds: number): Promise<{ pairs: number, perSecond: number }> {
  const deadline = Date.now() + seconds * 1000
  let pairs = 0
  const start = process.hrtime.bigint()
  await Promise.all(Array.from({ length: connections }, async () => {
    while (Date.now() < deadline) {
      await sql`update bench_counter set n = n + 1 where id = 1`
      await sql`update bench_counter set n = n + 1 where id = 1`
      pairs++
    }
  }))
  return { pairs, perSecond: pairs / (Number(process.hrtime.bigint() - start) / 1e9) }
}

/**
 * The benchmarks' model call, in autocannon's shape: a short chat to gpt-4o-mini (the answer
 * bench/gateway-server.ts gives is fixed) from the team 'hot' that hotLine makes.
 */
export const HOT_CALL = {
  method: 'POST' as const,
  headers: { 'content-type': 'application/json', 'x-relay-team-id': 'hot' },
  body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 20 })
}

/** Creates a budget through a gateway's admin API (monthly in USD from 2024, unless `body` says otherwise); its id. */
async function createBudget (gatewayUrl: string, body: Record<string, unknown>): Promise<string> {
  const response = await fetch(`${gatewayUrl}/api/v1/budgets`, {
    method: 'POST',
    headers: { authorization: `Bearer ${BENCH_ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ currency: 'USD', period: 'monthly', startDate: '2024-01-01', ...body })
  })
  if (!response.ok) throw new Error(`creating budget ${String(body.name)}: ${response.status} ${await response.text()}`)
  return ((await response.json()) as { id: string }).id
}

/**
 * The hot line most benchmarks load, made through a gateway's admin API: the organization 'acme' and the
 * team 'hot' under it, monthly in USD, 100000000 each unless `teamAmount` says otherwise. Their ids.
 */
export async function hotLine (gatewayUrl: string, teamAmount = '100000000'): Promise<{ org: string, team: string }> {
  const org = await createBudget(gatewayUrl, { name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '100000000' })
  const team = await createBudget(gatewayUrl, { name: 'hot team', scopeType: 'team', scopeId: 'hot', parentId: org, amount: teamAmount })
  return { org, team }
}

/** The held line beside it: the team 'held' in shadow under `org` (a line with a shadow budget is never leased, so each call is held). Its id. */
export async function heldLine (gatewayUrl: string, org: string): Promise<string> {
  return await createBudget(gatewayUrl, { name: 'held team', scopeType: 'team', scopeId: 'held', parentId: org, amount: '100000000', enforcement: 'shadow' })
}
