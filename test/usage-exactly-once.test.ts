// The same records sent at once by several clients through two processes, as single posts and in batches.
import Fastify from 'fastify'
import t from 'tap'
import budgets from '../lib/index.js'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { createTestDatabase } from './fixtures/database.js'

t.test('concurrent retries of the same records across two processes, single route and batch: one record per key, every answer the same record', async (t) => {
  const url = await createTestDatabase(t)
  const apps = []
  for (let i = 0; i < 2; i++) {
    const app = Fastify()
    await app.register(budgets, { database: url, adminToken: ADMIN_TOKEN })
    await app.ready()
    t.teardown(async () => await app.close())
    apps.push(app)
  }
  const headers = { authorization: `Bearer ${ADMIN_TOKEN}` }
  const created = await apps[0]!.inject({ method: 'POST', url: PREFIX, headers, body: { name: 'team', scopeType: 'team', scopeId: 'team-a', amount: '1000000', currency: 'USD', period: 'monthly', startDate: '2024-01-01' } })
  const budget = created.json() as { id: string }
  const KEYS = 40
  const record = (k: number) => ({ amount: String(k + 1), currency: 'USD', metadata: { requestId: `k-${k}` } })
  for (let round = 0; round < 3; round++) {
    const jobs: Array<Promise<Array<{ key: string, status: string, id?: string }>>> = []
    for (let c = 0; c < 12; c++) {
      const app = apps[c % 2]!
      const keys = Array.from({ length: KEYS }, (_, k) => k).filter((k) => (k + c + round) % 3 !== 0)
      if (c % 3 === 0) {
        jobs.push(Promise.all(keys.map(async (k) => {
          const r = await app.inject({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, headers, body: record(k) })
          return { key: `k-${k}`, status: String(r.statusCode), id: r.statusCode < 300 ? (r.json() as { id: string }).id : r.body.slice(0, 200) }
        })))
      } else {
        jobs.push(app.inject({ method: 'POST', url: `${PREFIX}/usage/batch`, headers, body: { records: keys.map((k) => ({ budgetId: budget.id, ...record(k) })) } }).then((r) => {
          if (r.statusCode !== 200) return [{ key: 'batch', status: String(r.statusCode), id: r.body.slice(0, 300) }]
          return (r.json() as { results: Array<{ index: number, status: string, record?: { id: string }, error?: unknown }> }).results.map((res, i) => ({ key: `k-${keys[i]!}`, status: res.status, id: res.record?.id ?? JSON.stringify(res.error) }))
        }))
      }
    }
    const answers = (await Promise.all(jobs)).flat()
    const bad = answers.filter((a) => !['200', '201', 'created', 'replayed'].includes(a.status))
    t.same(bad.slice(0, 5), [], `round ${round}: every answer is created or replayed`)
    const ids = new Map<string, Set<string>>()
    for (const a of answers) { if (!ids.has(a.key)) ids.set(a.key, new Set()); ids.get(a.key)!.add(a.id!) }
    t.same([...ids].filter(([, s]) => s.size > 1).map(([k, s]) => [k, [...s]]).slice(0, 3), [], `round ${round}: one record id per key`)
  }
  const sql = (await import('postgres')).default(url)
  t.teardown(async () => await sql.end())
  const dup = await sql`select idempotency_key, count(*)::int from budget_usage_records group by 1 having count(*) > 1`
  t.same(dup, [], 'one record per key')
  const [sum] = await sql`select sum(amount)::text as total, count(*)::int as n from budget_usage_records`
  const [cache] = await sql`select current_amount::text as c, usage_count::int as n from budget_status_cache`
  t.comment(JSON.stringify({ sum, cache }))
  t.equal(Number(cache!.c), Number(sum!.total), 'the cache counts each once')
})
