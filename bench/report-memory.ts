// A spend report over BENCH_REPORT_ROWS usage records (10 million by default) streamed as CSV from a
// real gateway process (issue 12): the report groups by model over a million distinct models, so its
// result is large too, and the gateway's peak RSS (VmHWM, /proc) is read before and after. The target:
// memory that does not grow with the result (the rows come from a PostgreSQL cursor a page at a time).
import { readFile } from 'node:fs/promises'
import { once } from 'node:events'
import postgres from 'postgres'
import { BENCH_ADMIN_TOKEN } from './gateway-server.js'
import { benchDatabase, fmt, startBenchGateway } from './harness.js'

const ROWS = Number(process.env.BENCH_REPORT_ROWS ?? 10_000_000)
const MODELS = Math.min(1_000_000, ROWS)
const PREFIX = '/api/v1/budgets'

const database = await benchDatabase()
process.stdout.write(`spend report memory on PostgreSQL from ${database.source}: ${ROWS} usage records, ${MODELS} models\n`)
const sql = postgres(database.url, { onnotice: () => {} })
const gateway = await startBenchGateway(database.url)
const headers = { authorization: `Bearer ${BENCH_ADMIN_TOKEN}` }
const created = await fetch(`${gateway.url}${PREFIX}`, {
  method: 'POST',
  headers: { ...headers, 'content-type': 'application/json' },
  body: JSON.stringify({ name: 'team', scopeType: 'team', scopeId: 'report', amount: '100000000', currency: 'USD', period: 'annual', startDate: '2024-01-01' })
})
const budget = await created.json() as { id: string }

// The records, written straight into the table (the report reads records, not allocations), with
// replication-role triggers off: these rows are consistent by construction and the bench needs no roll-up.
const started = Date.now()
await sql.begin(async (tx) => {
  await tx`set local session_replication_role = replica`
  await tx`
    insert into budget_usage_records (id, budget_id, amount, currency, source, metadata, occurred_at, allocated_by_settlement)
    select md5(i::text)::uuid, ${budget.id}, 0.000001, 'USD', 'bench',
           jsonb_build_object('modelId', 'model-' || (i % ${MODELS}), 'inputTokens', 10, 'outputTokens', 20),
           timestamptz '2025-01-01' + (i % 86400) * interval '1 second', true
    from generate_series(1, ${ROWS}) as i`
})
await sql`vacuum analyze budget_usage_records`
process.stdout.write(`wrote ${ROWS} records in ${fmt((Date.now() - started) / 1000, 0)} s\n`)

const peakRss = async () => Number(/VmHWM:\s+(\d+) kB/.exec(await readFile(`/proc/${gateway.child.pid!}/status`, 'utf8'))![1]) / 1024
const currentRss = async () => Number(/VmRSS:\s+(\d+) kB/.exec(await readFile(`/proc/${gateway.child.pid!}/status`, 'utf8'))![1]) / 1024
const report = async (query: string) => {
  const begun = Date.now()
  const response = await fetch(`${gateway.url}${PREFIX}/reports/spend?from=2025-01-01&to=2025-01-02&${query}`, { headers: { ...headers, accept: 'text/csv' } })
  let bytes = 0
  let lines = 0
  for await (const chunk of response.body!) {
    bytes += (chunk as Uint8Array).length
    for (const byte of chunk as Uint8Array) if (byte === 10) lines++
  }
  return { status: response.status, bytes, rows: lines - 1, seconds: (Date.now() - begun) / 1000 }
}

const small = await report('groupBy=day') // one group: the baseline with the report path warmed up
const before = await peakRss()
const big = await report('groupBy=model')
const after = await peakRss()
const top = await report('groupBy=model&limit=1000') // the top 1000 of the same groups, the rest summed in PostgreSQL
const topPeak = await peakRss()
const rssNow = await currentRss()
gateway.child.kill('SIGTERM')
await once(gateway.child, 'exit')

process.stdout.write([
  '',
  `| CSV report over ${ROWS} usage records | rows | MB streamed | seconds | gateway peak RSS (MB) |`,
  '|---|---|---|---|---|',
  `| by day (1 group), after start | ${small.rows} | ${fmt(small.bytes / 1048576, 3)} | ${fmt(small.seconds, 1)} | ${fmt(before, 1)} |`,
  `| by model (${MODELS} groups) | ${big.rows} | ${fmt(big.bytes / 1048576, 1)} | ${fmt(big.seconds, 1)} | ${fmt(after, 1)} |`,
  `| by model, limit=1000 | ${top.rows} | ${fmt(top.bytes / 1048576, 3)} | ${fmt(top.seconds, 1)} | ${fmt(topPeak, 1)} |`,
  '',
  `peak RSS grew by ${fmt(after - before, 1)} MB while ${fmt(big.bytes / 1048576, 1)} MB were streamed (RSS now ${fmt(rssNow, 1)} MB); status ${small.status}/${big.status}/${top.status}`,
  `target: memory that does not grow with the result -> ${big.status === 200 && big.rows === MODELS && after - before < big.bytes / 1048576 / 4 ? 'met' : 'NOT met'}`,
  ''
].join('\n'))
await sql.end()
await database.close()
