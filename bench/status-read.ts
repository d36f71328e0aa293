// Status read cost with 1,000 versus 1,000,000 usage rows in the budget, measured in one run.
// Target (issue 3): the median with 1,000,000 rows within 1.5x of the median with 1,000.
import Fastify from 'fastify'
import postgres from 'postgres'
import budgets from '../lib/index.js'
import { benchDatabase, fmt, median, timed } from './harness.js'

const READS = Number(process.env.BENCH_READS ?? 2000)
const LARGE = Number(process.env.BENCH_LARGE_ROWS ?? 1_000_000)
const SMALL = 1000
const token = 'bench-admin-token-0123456789'

const database = await benchDatabase()
const app = Fastify()
await app.register(budgets, { database: database.url, adminToken: token })
const sql = postgres(database.url, { max: 1, onnotice: () => {} })
const headers = { authorization: `Bearer ${token}` }

const yearStart = `${new Date().getUTCFullYear()}-01-01`
async function budgetWithRows (name: string, rows: number): Promise<string> {
  const budget = await app.budgetRegistry.createBudget({
    name, scopeType: 'team', scopeId: name, amount: '100000000', currency: 'USD', period: 'annual', startDate: yearStart
  })
  // Bulk-load the history and its allocations without the per-row trigger (this measures reading,
  // not loading), then build the cache row once.
  await sql`alter table budget_usage_records disable trigger budget_usage_records_status`
  await sql`
    insert into budget_usage_records (budget_id, amount, currency, metadata, occurred_at)
    select ${budget.id}, 0.0001 * (1 + i % 1000), 'USD', jsonb_build_object('modelId', 'gpt-4o-mini', 'userId', 'u' || (i % 50)),
           ${yearStart}::timestamptz + (now() - ${yearStart}::timestamptz) * (i::float8 / ${rows})
    from generate_series(1, ${rows}) as i`
  await sql`
    insert into budget_usage_allocations (budget_id, usage_id, amount, occurred_at)
    select budget_id, id, amount, occurred_at from budget_usage_records where budget_id = ${budget.id}`
  await sql`alter table budget_usage_records enable trigger budget_usage_records_status`
  await app.budgetTracker.refreshCache(budget.id)
  return budget.id
}

process.stdout.write(`status-read benchmark on PostgreSQL from ${database.source}: loading ${SMALL} and ${LARGE} usage rows...\n`)
const small = await budgetWithRows('small', SMALL)
const large = await budgetWithRows('large', LARGE)
await sql`analyze budget_usage_records`
await sql`analyze budget_usage_allocations`

const read = async (id: string) => {
  const response = await app.inject({ url: `/api/v1/budgets/${id}/status`, headers })
  if (response.statusCode !== 200) throw new Error(response.body)
}
for (let i = 0; i < 200; i++) { await read(small); await read(large) } // warm up both paths

// Interleaved, so both sizes see the same noise from this shared machine.
const times: Record<string, number[]> = { small: [], large: [] }
for (let i = 0; i < READS; i++) {
  times.small!.push(await timed(async () => await read(small)))
  times.large!.push(await timed(async () => await read(large)))
}
// What the cache saves: a recompute from the usage rows (refresh-cache), a few times each.
const recompute: Record<string, number[]> = { small: [], large: [] }
for (let i = 0; i < 5; i++) {
  recompute.small!.push(await timed(async () => await app.budgetTracker.refreshCache(small)))
  recompute.large!.push(await timed(async () => await app.budgetTracker.refreshCache(large)))
}

const smallMedian = median(times.small!)
const largeMedian = median(times.large!)
process.stdout.write([
  '',
  `| status read (${READS} each, interleaved) | median ms | ratio to ${SMALL} rows |`,
  '|---|---|---|',
  `| ${SMALL} usage rows | ${fmt(smallMedian, 3)} | 1.00 |`,
  `| ${LARGE} usage rows | ${fmt(largeMedian, 3)} | ${fmt(largeMedian / smallMedian)} |`,
  `| recompute from rows, ${SMALL} (refresh-cache) | ${fmt(median(recompute.small!), 3)} | ${fmt(median(recompute.small!) / smallMedian)} |`,
  `| recompute from rows, ${LARGE} (refresh-cache) | ${fmt(median(recompute.large!), 3)} | ${fmt(median(recompute.large!) / smallMedian)} |`,
  '',
  `target: ${LARGE} rows within 1.5x of ${SMALL} rows -> ${largeMedian / smallMedian <= 1.5 ? 'met' : 'NOT met'}`,
  ''
].join('\n'))

await sql.end()
await app.close()
await database.close()
