// Two builds of the plugin side by side: the gate's CPU a call and its throughput, the build in BASE_DIST
// (another checkout's dist/index.js) against this one's, each in a gateway process of its own
// (bench/gateway-server.ts) on a database of its own, loaded alternately with the same hot-line load as
// bench/gate.ts (16 connections): per round, each build's ungated then gated route. Prints every round and
// the medians. On a shared 2-core machine rounds spread widely: read the medians beside the spread.
//   git worktree add /tmp/before <commit> && (cd /tmp/before && npm ci && npm run build)
//   BASE_DIST=/tmp/before/dist/index.js npx tsx bench/gate-ab.ts
// ROUNDS (5) and BENCH_SECONDS (6) set the rounds and each load's length.
import { once } from 'node:events'
import autocannon from 'autocannon'
import { createTestDatabase } from '../test/fixtures/database.js'
import { HOT_CALL as CALL, benchDatabase, fmt, hotLine, median, startBenchGateway } from './harness.js'

const BASE = process.env.BASE_DIST
if (BASE === undefined) throw new Error('set BASE_DIST to the dist/index.js of the build to compare with')
const SECONDS = Number(process.env.BENCH_SECONDS ?? 6)
const ROUNDS = Number(process.env.ROUNDS ?? 5)

const server = await benchDatabase()
const cleanups: Array<() => unknown> = []

/** A gateway of one build on a database of its own, with the hot line (team 'hot' under organization 'acme'). */
async function gatewayOf (plugin: string | undefined) {
  const url = await createTestDatabase({ teardown: (fn) => cleanups.push(fn) })
  const gateway = await startBenchGateway(url, plugin === undefined ? {} : { BENCH_PLUGIN: plugin })
  await hotLine(gateway.url)
  return gateway
}

/** One load of `path` for `seconds`: calls a second and the gateway process's CPU a call (µs). */
async function load (url: string, path: string, seconds: number) {
  const cpu = async () => ((await (await fetch(`${url}/bench/cpu`)).json()) as { micros: number }).micros
  const before = await cpu()
  const result = await autocannon({ url: `${url}${path}`, connections: 16, duration: seconds, ...CALL })
  if (result.non2xx + result.errors > 0) throw new Error(`${path}: ${result.non2xx} not 200, ${result.errors} errors`)
  return { perSecond: result.requests.total / seconds, cpu: (await cpu() - before) / result.requests.total }
}

const builds = { before: await gatewayOf(BASE), this: await gatewayOf(undefined) }
const figures: Record<string, Record<'gateCpu' | 'ratio' | 'gated', number[]>> = {}
for (const gateway of Object.values(builds)) { await load(gateway.url, '/v1/chat/completions', 2); await load(gateway.url, '/ungated/v1/chat/completions', 2) } // warm up
for (let round = 1; round <= ROUNDS; round++) {
  for (const [name, gateway] of Object.entries(builds)) {
    const ungated = await load(gateway.url, '/ungated/v1/chat/completions', SECONDS)
    const gated = await load(gateway.url, '/v1/chat/completions', SECONDS)
    const mine = figures[name] ??= { gateCpu: [], ratio: [], gated: [] }
    mine.gateCpu.push(gated.cpu - ungated.cpu)
    mine.ratio.push(gated.perSecond / ungated.perSecond)
    mine.gated.push(gated.perSecond)
    process.stdout.write(`round ${round}, ${name}: the gate's CPU ${fmt(gated.cpu - ungated.cpu, 1)} µs a call (gated ${fmt(gated.cpu, 1)}, ungated ${fmt(ungated.cpu, 1)}), gated ${fmt(gated.perSecond, 0)} calls/s, ${fmt(gated.perSecond / ungated.perSecond)} of ungated\n`)
  }
}
for (const gateway of Object.values(builds)) { gateway.child.kill('SIGTERM'); await once(gateway.child, 'exit') }
for (const cleanup of cleanups.reverse()) await cleanup()
await server.close()

const spread = (values: number[], digits = 1) => `${fmt(median(values), digits)} (${fmt(Math.min(...values), digits)} to ${fmt(Math.max(...values), digits)})`
process.stdout.write([
  '',
  '| build | the gate\'s CPU a call, median (rounds) | gated calls/s | gated / ungated |',
  '|---|---|---|---|',
  ...Object.entries(figures).map(([name, f]) => `| ${name === 'before' ? BASE : 'this checkout'} | ${spread(f.gateCpu)} µs | ${spread(f.gated, 0)} | ${spread(f.ratio, 2)} |`),
  '',
  `this build's gate CPU at the median: ${fmt(median(figures.this!.gateCpu) / median(figures.before!.gateCpu))}x the other's`,
  ''
].join('\n'))
