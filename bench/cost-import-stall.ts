// How long one cost CSV import holds the event loop, the whole request as a client's is served (Fastify reading
// the body, the content-type parser's decode, the reader, the store): the app with the plugin on a fresh
// database, each body sent with app.inject. What matters is the longest continuous stretch the loop is held
// while the request runs: a probe re-schedules itself with setImmediate for as long as it runs, and the
// longest gap between two of its turns (and from the last turn to the answer) is that stretch, in wall time
// and in CPU time (process.cpuUsage: user and system, so GC threads count too). Three bodies at the route's
// limits (COST_CSV_BODY_LIMIT, MAX_CSV_ROWS): a line of empty fields and a field of doubled quotes filling the
// body (both refused), and a valid file of MAX_CSV_ROWS lines near the limit (stored; each run's file has
// its own provider, so each run inserts). Per body: the median of 5 runs' longest stretches and the slowest
// run's, the request's CPU (median) and the probe's turns. Target: no request holds the loop over 20 ms.
// Run: DATABASE_URL=postgres://... npx tsx bench/cost-import-stall.ts
import Fastify from 'fastify'
import postgres from 'postgres'
import { loadavg } from 'node:os'
import budgets from '../lib/index.js'
import { COST_CSV_BODY_LIMIT } from '../lib/http/admin/provider-costs.js'
import { MAX_CSV_ROWS } from '../lib/provider-costs/csv-costs.js'
import { benchDatabase, median } from './harness.js'
import { probed } from './loop-probe.js'

const TARGET_MS = 20
const RUNS = 5
const TOKEN = 'bench-admin-token-0123456789'
const URL_PATH = '/api/v1/budgets/provider-costs/import'
const HEADER = 'date,provider,account,project,model,line_item,amount,currency\n'

/** A valid file of MAX_CSV_ROWS lines, as near the body limit as whole lines of this shape get. */
function validFile (run: number): string {
  const line = (index: number, pad: number) => `2024-07-01,mistral-r${run},acme,project-${index},model-${'m'.repeat(pad)},line-item,${index}.123456789,USD`
  let pad = 0
  while ((HEADER.length + MAX_CSV_ROWS * (line(MAX_CSV_ROWS, pad + 1).length + 1)) <= COST_CSV_BODY_LIMIT) pad++
  return HEADER + Array.from({ length: MAX_CSV_ROWS }, (_, index) => line(index, pad)).join('\n') + '\n'
}

const BODIES: Array<{ name: string, status: number, make: (run: number) => string }> = [
  { name: 'a line of empty fields (commas to the limit)', status: 400, make: () => HEADER + ','.repeat(COST_CSV_BODY_LIMIT - HEADER.length - 10) + '\n' },
  { name: 'a quoted field of doubled quotes to the limit', status: 400, make: () => HEADER + '"' + '""'.repeat(Math.floor((COST_CSV_BODY_LIMIT - HEADER.length - 10) / 2)) + '"\n' },
  { name: `a valid file of ${MAX_CSV_ROWS.toLocaleString('en-US')} lines`, status: 200, make: validFile }
]


const database = await benchDatabase()
const sql = postgres(database.url, { max: 10, onnotice: () => {} })
const app = Fastify({ logger: false })
await app.register(budgets, { database: sql, adminToken: TOKEN })
await app.ready()

const load = loadavg()
const rows: string[] = []
let worstWall = 0
let worstMedianWall = 0
try {
  for (const body of BODIES) {
    const runs = []
    for (let run = 0; run < RUNS; run++) {
      const payload = body.make(run)
      let status = 0
      runs.push(await probed(async () => {
        const response = await app.inject({ method: 'POST', url: URL_PATH, payload, headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'text/csv' } })
        status = response.statusCode
      }))
      if (status !== body.status) throw new Error(`${body.name}: ${status}, expected ${body.status}`)
    }
    const size = body.make(0).length
    const wall = median(runs.map((run) => run.wall))
    const slowestWall = Math.max(...runs.map((run) => run.wall))
    worstWall = Math.max(worstWall, slowestWall)
    worstMedianWall = Math.max(worstMedianWall, wall)
    rows.push(`| ${body.name} | ${(size / 1_048_576).toFixed(2)} MiB | ${body.status} | ${wall.toFixed(1)} ms | ${slowestWall.toFixed(1)} ms | ${median(runs.map((run) => run.cpu)).toFixed(1)} ms | ${Math.max(...runs.map((run) => run.cpu)).toFixed(1)} ms | ${median(runs.map((run) => run.total)).toFixed(1)} ms | ${median(runs.map((run) => run.turns))} |`)
  }
} finally {
  await app.close()
  await sql.end()
  await database.close()
}

process.stdout.write([
  '',
  `the cost CSV import: the longest stretch the event loop is held during one request (median of ${RUNS} runs and the slowest run), in wall and CPU time; load average at the start ${load.map((value) => value.toFixed(2)).join(', ')}`,
  '',
  '| body | size | status | longest stretch, wall | slowest run, wall | longest stretch, CPU | slowest run, CPU | request CPU in all | loop turns |',
  '|---|---|---|---|---|---|---|---|---|',
  ...rows,
  '',
  `target: no request holds the loop over ${TARGET_MS} ms -> at the median ${worstMedianWall <= TARGET_MS ? 'met' : 'NOT met'} (${worstMedianWall.toFixed(1)} ms); in every run ${worstWall <= TARGET_MS ? 'met' : 'NOT met'} (slowest ${worstWall.toFixed(1)} ms)`,
  ''
].join('\n'))
