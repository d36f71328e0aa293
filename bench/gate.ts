// The gate's cost, measured in one run beside its floor (issue 4):
// - one client: the median latency a gated call adds over the same call ungated, against two bare
//   single-row UPDATE round trips through postgres.js (target: within 1.3x of that floor);
// - a hot budget: gated calls per second, 16 concurrent clients on one team budget, beside the
//   ungated gateway and the floor (single-row UPDATEs on one row, 16 concurrent connections).
import Fastify from 'fastify'
import postgres from 'postgres'
import { chatCompletions } from '../examples/chat-completions.js'
import budgets from '../lib/index.js'
import { benchDatabase, fmt, median, throughput, timed } from './harness.js'

const SAMPLES = Number(process.env.BENCH_SAMPLES ?? 2000)
const CLIENTS = 16
const DURATION_MS = Number(process.env.BENCH_SECONDS ?? 10) * 1000
const token = 'bench-admin-token-0123456789'

const database = await benchDatabase()
process.stdout.write(`gate benchmark on PostgreSQL from ${database.source}\n`)

const floorSql = postgres(database.url, { max: CLIENTS, onnotice: () => {} })
await floorSql`create table bench_counter (id int primary key, n bigint not null)`
await floorSql`insert into bench_counter values (1, 0)`
const bump = async () => await floorSql`update bench_counter set n = n + 1 where id = 1`

const app = Fastify()
await app.register(budgets, { database: database.url, adminToken: token, gate: { routes: ['/v1/chat/completions'] } })
await app.register(chatCompletions, { mockTokenDelayMs: 0 })
await app.register(chatCompletions, { prefix: '/ungated', mockTokenDelayMs: 0 }) // the same route, not gated
const address = await app.listen({ port: 0, host: '127.0.0.1' })
await app.budgetRegistry.createBudget({ name: 'hot team', scopeType: 'team', scopeId: 'hot', amount: '1000000', currency: 'USD', period: 'monthly', startDate: '2024-01-01' })

const body = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 20 })
const post = async (path: string): Promise<boolean> => {
  const response = await fetch(`${address}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-relay-team-id': 'hot' }, body })
  await response.arrayBuffer()
  return response.status === 200
}
const gated = async () => { if (!await post('/v1/chat/completions')) throw new Error('gated call refused') }
const ungated = async () => { if (!await post('/ungated/v1/chat/completions')) throw new Error('ungated call failed') }

for (let i = 0; i < 300; i++) { await gated(); await ungated(); await bump() } // warm up
const samples: Record<'gated' | 'ungated' | 'floor', number[]> = { gated: [], ungated: [], floor: [] }
for (let i = 0; i < SAMPLES; i++) {
  samples.ungated.push(await timed(ungated))
  samples.gated.push(await timed(gated))
  samples.floor.push(await timed(async () => { await bump(); await bump() }))
}
const added = median(samples.gated) - median(samples.ungated)
const floorMedian = median(samples.floor)

const floorRate = await throughput(CLIENTS, DURATION_MS, async () => { await bump(); return true })
const ungatedRate = await throughput(CLIENTS, DURATION_MS, async () => await post('/ungated/v1/chat/completions'))
const gatedRate = await throughput(CLIENTS, DURATION_MS, async () => await post('/v1/chat/completions'))

process.stdout.write([
  '',
  `| one client, ${SAMPLES} calls each, interleaved | median ms | ratio to the floor |`,
  '|---|---|---|',
  `| floor: two bare single-row UPDATE round trips | ${fmt(floorMedian, 3)} | 1.00 |`,
  `| ungated call (HTTP, mock provider) | ${fmt(median(samples.ungated), 3)} | |`,
  `| gated call | ${fmt(median(samples.gated), 3)} | |`,
  `| added by the gate (gated - ungated) | ${fmt(added, 3)} | ${fmt(added / floorMedian)} |`,
  '',
  `| ${CLIENTS} concurrent clients, one team budget | per second | ratio to the floor |`,
  '|---|---|---|',
  `| floor: single-row UPDATEs on one row | ${fmt(floorRate.perSecond, 0)} | 1.00 |`,
  `| ungated gateway | ${fmt(ungatedRate.perSecond, 0)} | ${fmt(ungatedRate.perSecond / floorRate.perSecond)} |`,
  `| gated gateway | ${fmt(gatedRate.perSecond, 0)} | ${fmt(gatedRate.perSecond / floorRate.perSecond)} |`,
  '',
  `target: added latency within 1.3x of the floor -> ${added / floorMedian <= 1.3 ? 'met' : 'NOT met'}; gated calls refused under load: ${gatedRate.failed}`,
  ''
].join('\n'))

await app.close()
await floorSql.end()
await database.close()
