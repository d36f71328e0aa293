// Usage records per second through the HTTP route, 32 concurrent clients on one budget, beside the
// floor it cannot beat: the same machine's rate of bare single-row UPDATEs through postgres.js.
import Fastify from 'fastify'
import postgres from 'postgres'
import budgets from '../lib/index.js'
import { benchDatabase, fmt, throughput } from './harness.js'

const CLIENTS = 32
const DURATION_MS = Number(process.env.BENCH_SECONDS ?? 10) * 1000
const token = 'bench-admin-token-0123456789'

const database = await benchDatabase()
process.stdout.write(`record-usage benchmark on PostgreSQL from ${database.source}, ${CLIENTS} clients, ${DURATION_MS / 1000} s per measure\n`)

// The floor: one row, UPDATE n = n + 1, as many concurrent connections as clients.
const floorSql = postgres(database.url, { max: CLIENTS, onnotice: () => {} })
await floorSql`create table bench_counter (id int primary key, n bigint not null)`
await floorSql`insert into bench_counter values (1, 0)`
const floor = await throughput(CLIENTS, DURATION_MS, async () => {
  await floorSql`update bench_counter set n = n + 1 where id = 1`
  return true
})
await floorSql.end()

const app = Fastify()
await app.register(budgets, { database: database.url, adminToken: token })
const address = await app.listen({ port: 0, host: '127.0.0.1' })
const budget = await app.budgetRegistry.createBudget({
  name: 'hot', scopeType: 'team', scopeId: 'hot', amount: '100000000', currency: 'USD', period: 'monthly', startDate: '2024-01-01'
})
const url = `${address}/api/v1/budgets/${budget.id}/usage`
const record = throughput(CLIENTS, DURATION_MS, async (loop, i) => {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify({ amount: '0.0021', currency: 'USD', metadata: { requestId: `bench-${loop}-${i}`, modelId: 'gpt-4o-mini' } })
  })
  await response.arrayBuffer()
  return response.status === 201
})
const recorded = await record
const status = await app.budgetTracker.getBudgetStatus(budget.id)

process.stdout.write([
  '',
  `| ${CLIENTS} concurrent clients, one budget | per second | ratio to the floor |`,
  '|---|---|---|',
  `| bare single-row UPDATE (postgres.js, the floor) | ${fmt(floor.perSecond, 0)} | 1.00 |`,
  `| POST /:id/usage over HTTP | ${fmt(recorded.perSecond, 0)} | ${fmt(recorded.perSecond / floor.perSecond)} |`,
  '',
  `${recorded.ok} records, ${recorded.failed} failed; status shows ${status.currentAmount} USD (${recorded.ok} x 0.0021 = ${(BigInt(recorded.ok) * 21n).toString().replace(/(\d{4})$/, '.$1')})`,
  ''
].join('\n'))

await app.close()
await database.close()
