// Usage records per second, side by side in one run against one app listening on a port: single
// POST /:id/usage calls (32 concurrent clients) and POST /usage/batch with batches of 1,000 (and 10,000),
// each on a budget of its own under one organization budget; afterwards, exactness: each budget's
// spend equals the records created x their amount.
// Then one bad record (issue 19, item 10): a 10,000-record batch with one record that has no exchange rate,
// timed beside the same batch all good, one after the other in one run, while a gateway process (a second
// process, bench/gateway-server.ts) serves gated calls for a sibling team under the same organization:
// how many of those were not answered 2xx during each batch; and 200 records under one key, each another
// request without a rate (the review's chain: it re-ran the whole batch once per request under that key).
// BENCH_ONLY=bad runs only this part.
import Fastify from 'fastify'
import budgets from '../lib/index.js'
import { fromUnits, toUnits } from '../lib/kernel/money.js'
import { BENCH_ADMIN_TOKEN } from './gateway-server.js'
import { benchDatabase, fmt, startBenchGateway, throughput, timed } from './harness.js'

const SINGLE_CLIENTS = 32
const BATCH_CLIENTS = 4
const DURATION_MS = Number(process.env.BENCH_SECONDS ?? 10) * 1000
const AMOUNT = '0.0021'
const token = BENCH_ADMIN_TOKEN
const headers = { 'content-type': 'application/json', authorization: `Bearer ${token}` }

const database = await benchDatabase()
process.stdout.write(`usage-batch benchmark on PostgreSQL from ${database.source}, ${DURATION_MS / 1000} s per measure\n`)

const app = Fastify({ logger: process.env.BENCH_LOG === '1' ? { level: 'error' } : false })
await app.register(budgets, { database: database.url, adminToken: token })
const address = await app.listen({ port: 0, host: '127.0.0.1' })
const org = await app.budgetRegistry.createBudget({
  name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '100000000', currency: 'USD', period: 'monthly', startDate: '2024-01-01',
  alerts: [{ threshold: 80, actions: ['notify'], notificationChannels: [] }]
})
const team = async (name: string) => await app.budgetRegistry.createBudget({
  name, scopeType: 'team', scopeId: name, parentId: org.id, amount: '100000000', currency: 'USD', period: 'monthly', startDate: '2024-01-01',
  alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: [] }]
})
// A key names one record across budgets: each run's keys carry its budget, so a warm-up's keys are not retried.
const record = (loop: number, i: number, tag: string) => ({ amount: AMOUNT, currency: 'USD', source: 'bench', metadata: { requestId: `${tag}-${loop}-${i}`, modelId: 'gpt-4o-mini', userId: `user-${i % 50}` } })

async function single (budgetId: string) {
  const url = `${address}/api/v1/budgets/${budgetId}/usage`
  return await throughput(SINGLE_CLIENTS, DURATION_MS, async (loop, i) => {
    const response = await fetch(url, { method: 'POST', headers, body: JSON.stringify(record(loop, i, `single-${budgetId}`)) })
    await response.arrayBuffer()
    return response.status === 201
  })
}

const failures: string[] = []

async function batches (budgetId: string, size: number) {
  let records = 0
  let created = 0
  const run = await throughput(BATCH_CLIENTS, DURATION_MS, async (loop, i) => {
    const body = JSON.stringify({ records: Array.from({ length: size }, (_, k) => ({ budgetId, ...record(loop, i * size + k, `batch${size}-${budgetId}`) })) })
    const response = await fetch(`${address}/api/v1/budgets/usage/batch`, { method: 'POST', headers, body })
    const answer = await response.json() as { created?: number }
    if (response.status !== 200) {
      if (failures.length < 3) failures.push(`${response.status} ${JSON.stringify(answer).slice(0, 200)}`)
      return false
    }
    records += size
    created += answer.created ?? 0
    if (answer.created !== size && failures.length < 3) failures.push(`200 but ${answer.created} created`)
    return answer.created === size
  })
  return { ...run, recordsPerSecond: run.perSecond * size, records, created }
}

const rows: string[] = []
if (process.env.BENCH_ONLY !== 'bad') {
  // Warm up both paths (JIT, plans, connections), then measure one after the other on budgets of their own.
  await single((await team('warm-single')).id)
  await batches((await team('warm-batch')).id, 1000)
  const singleBudget = await team('single')
  const batchBudget = await team('batch-1000')
  const bigBudget = await team('batch-10000')
  const alone = await single(singleBudget.id)
  const thousand = await batches(batchBudget.id, 1000)
  const tenThousand = await batches(bigBudget.id, 10_000)

  const spent = async (id: string) => (await app.budgetTracker.getBudgetStatus(id)).currentAmount
  const expect = (count: number) => fromUnits(BigInt(count) * toUnits(AMOUNT))
  const exact = [[singleBudget.id, alone.ok], [batchBudget.id, thousand.created], [bigBudget.id, tenThousand.created]] as const
  const checks = await Promise.all(exact.map(async ([id, count]) => `${await spent(id)} = ${count} x ${AMOUNT} (${await spent(id) === expect(count) ? 'exact' : `NOT ${expect(count)}`})`))
  rows.push(
    '',
    '| usage records | records per second | ratio to single calls |',
    '|---|---|---|',
    `| POST /:id/usage, ${SINGLE_CLIENTS} concurrent clients | ${fmt(alone.perSecond, 0)} | 1.00 |`,
    `| POST /usage/batch, 1,000 a batch, ${BATCH_CLIENTS} concurrent clients | ${fmt(thousand.recordsPerSecond, 0)} | ${fmt(thousand.recordsPerSecond / alone.perSecond, 1)} |`,
    `| POST /usage/batch, 10,000 a batch, ${BATCH_CLIENTS} concurrent clients | ${fmt(tenThousand.recordsPerSecond, 0)} | ${fmt(tenThousand.recordsPerSecond / alone.perSecond, 1)} |`,
    '',
    `single: ${alone.ok} created, ${alone.failed} failed; batches of 1,000: ${thousand.ok} whole, ${thousand.failed} not; of 10,000: ${tenThousand.ok} whole, ${tenThousand.failed} not`,
    `spend: ${checks.join('; ')}`
  )
}

// One bad record among 10,000, beside the same batch all good; gated calls on a sibling team meanwhile.
const GATED_CLIENTS = 4
const gateway = await startBenchGateway(database.url)
await team('sibling') // the gateway's callers: x-relay-team-id sibling, under the same organization
const gatedCall = { method: 'POST', headers: { 'content-type': 'application/json', 'x-relay-team-id': 'sibling' }, body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 20 }) }
async function duringBatch (work: () => Promise<unknown>): Promise<{ ms: number, ok: number, other: number }> {
  let done = false
  let ok = 0
  let other = 0
  const callers = Array.from({ length: GATED_CLIENTS }, async () => {
    while (!done) {
      const response = await fetch(`${gateway.url}/v1/chat/completions`, gatedCall)
      await response.arrayBuffer()
      if (response.status >= 200 && response.status < 300) ok++
      else other++
    }
  })
  const ms = await timed(work)
  done = true
  await Promise.all(callers)
  return { ms, ok, other }
}
async function tenThousandOnce (budgetId: string, tag: string, badAt: number | null) {
  const records = Array.from({ length: 10_000 }, (_, k) => ({ budgetId, ...record(0, k, tag), ...(k === badAt ? { currency: 'GBP' } : {}) }))
  const response = await fetch(`${address}/api/v1/budgets/usage/batch`, { method: 'POST', headers, body: JSON.stringify({ records }) })
  const answer = await response.json() as { created?: number, refused?: number }
  if (response.status !== 200 || answer.created !== 10_000 - (badAt === null ? 0 : 1) || answer.refused !== (badAt === null ? 0 : 1)) {
    failures.push(`${tag}: ${response.status} ${JSON.stringify(answer).slice(0, 200)}`)
  }
}
// 9,800 good records, then 200 under one key, each another request (another amount), none with a rate.
async function chainedOnce (budgetId: string, tag: string) {
  const records = Array.from({ length: 10_000 }, (_, k) => k < 9_800
    ? { budgetId, ...record(0, k, tag) }
    : { budgetId, amount: String(k - 9_799), currency: 'GBP', metadata: { requestId: `${tag}-same-key` } })
  const response = await fetch(`${address}/api/v1/budgets/usage/batch`, { method: 'POST', headers, body: JSON.stringify({ records }) })
  const answer = await response.json() as { created?: number, refused?: number }
  if (response.status !== 200 || answer.created !== 9_800 || answer.refused !== 200) failures.push(`${tag}: ${response.status} ${JSON.stringify(answer).slice(0, 200)}`)
}
await tenThousandOnce((await team('warm-bad')).id, 'warm-bad', 5_000)
const good = await duringBatch(async () => await tenThousandOnce((await team('all-good')).id, 'all-good', null))
const bad = await duringBatch(async () => await tenThousandOnce((await team('one-bad')).id, 'one-bad', 5_000))
const chained = await duringBatch(async () => await chainedOnce((await team('chained')).id, 'chained'))
gateway.child.kill('SIGTERM')
rows.push(
  '',
  '| one 10,000-record batch | ms | ratio | gated calls on a sibling team meanwhile: 2xx | not 2xx |',
  '|---|---|---|---|---|',
  `| all good | ${fmt(good.ms, 0)} | 1.00 | ${good.ok} | ${good.other} |`,
  `| one record without an exchange rate (record 5,000) | ${fmt(bad.ms, 0)} | ${fmt(bad.ms / good.ms, 2)} | ${bad.ok} | ${bad.other} |`,
  `| 200 records under one key, each another request without a rate | ${fmt(chained.ms, 0)} | ${fmt(chained.ms / good.ms, 2)} | ${chained.ok} | ${chained.other} |`
)

process.stdout.write([
  ...rows,
  ...(failures.length === 0 ? [] : [`failed batches (first ${failures.length}): ${failures.join('; ')}`]),
  ''
].join('\n'))

await app.close()
await database.close()
