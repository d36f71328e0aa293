// Review: the usage API (budget_record_usage_in_trees) against the per-row trigger, on random forests and records:
// the same allocations, window rows and alert crossings.
import t from 'tap'
import fc from 'fast-check'
import { PREFIX, budgetRequest, buildApp } from './fixtures/app.js'

type App = Awaited<ReturnType<typeof buildApp>>

interface Spec { parent: number | null, currency: 'USD' | 'EUR', period: 'monthly' | 'daily', models: readonly string[] | null, tag: boolean, deleted: boolean }

const specArb = (n: number) => fc.tuple(...Array.from({ length: n }, (_, i) => fc.record({
  parent: i === 0 ? fc.constant(null) : fc.option(fc.integer({ min: 0, max: i - 1 }), { nil: null, freq: 3 }),
  currency: fc.constantFrom('USD' as const, 'USD' as const, 'EUR' as const),
  period: fc.constantFrom('monthly' as const, 'daily' as const),
  models: fc.option(fc.constantFrom(['gpt-4*'], ['claude']), { nil: null, freq: 5 }),
  tag: fc.integer({ min: 0, max: 3 }).map((k) => k === 0),
  deleted: fc.constant(false)
})))
const recArb = (n: number) => fc.record({
  budget: fc.integer({ min: 0, max: n - 1 }),
  also: fc.array(fc.integer({ min: 0, max: n - 1 }), { maxLength: 3 }),
  amount: fc.integer({ min: 1, max: 6000 }).map((cents) => `${Math.trunc(cents / 100)}.${String(cents % 100).padStart(2, '0')}`), // money as text, never a float
  model: fc.constantFrom('gpt-4o', 'claude', 'other'),
  tag: fc.boolean(),
  daysBack: fc.constantFrom(0, 0, 1, 2, 35),
  hour: fc.integer({ min: 0, max: 3 })
})

async function forest (admin: App['admin'], specs: Spec[], label: string): Promise<string[]> {
  const ids: string[] = []
  for (const [i, spec] of specs.entries()) {
    const parent = spec.parent === null ? undefined : ids[spec.parent]
    let top = i
    while (specs[top]!.parent !== null) top = specs[top]!.parent!
    const currency = specs[top]!.currency
    let period = spec.period
    for (let k: number | null = spec.parent; k !== null; k = specs[k]!.parent) if (specs[k]!.period === 'daily') period = 'daily'
    const filters: Record<string, unknown> = {}
    if (spec.models !== null) filters.models = spec.models
    if (spec.tag) filters.tags = { team: 'a' }
    const body = budgetRequest({
      name: `${label}-${i}`, amount: '100', currency, period, ...(parent === undefined ? {} : { parentId: parent }),
      ...(Object.keys(filters).length === 0 ? {} : { filters }),
      alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['email'] }, { threshold: 90, actions: ['notify'], notificationChannels: ['email'] }]
    })
    const response = await admin({ method: 'POST', url: PREFIX, body })
    if (response.statusCode !== 201) throw new Error(response.body)
    ids.push(response.json().id)
  }
  return ids
}

async function outcome (sql: App['sql'], ids: string[]) {
  const index = (id: string) => ids.indexOf(id)
  const allocations = await sql`select a.budget_id, u.source, a.amount::text, a.occurred_at, a.exchange_rate::text from budget_usage_allocations a
                                join budget_usage_records u on u.id = a.usage_id where a.budget_id = any (${ids}) order by u.source, a.budget_id`
  const windows = await sql`select budget_id, period_start, period_end, current_amount::text, usage_count::int, last_usage_at, reserved_amount::text
                            from budget_status_cache where budget_id = any (${ids})`
  const alerts = await sql`select budget_id, period_start, threshold::text, basis, spent::text from budget_alert_history where budget_id = any (${ids})`
  const norm = (rows: Array<Record<string, unknown>>) => rows.map((row) => JSON.stringify({ ...row, budget_id: index(row.budget_id as string) })).sort()
  return { allocations: norm(allocations), windows: norm(windows), alerts: norm(alerts) }
}

t.test('random records: the API and the trigger leave the same allocations, windows and crossings', async (t) => {
  const { app, admin, sql } = await buildApp(t)
  const rate = await admin({ method: 'PUT', url: `${PREFIX}/exchange-rates/USD/EUR`, body: { rate: '0.9137', effectiveFrom: '2024-01-01T00:00:00Z' } })
  t.ok(rate.statusCode < 300, 'a rate USD/EUR')
  let run = 0
  let storedCount = 0
  let refusedCount = 0
  let allocationCount = 0
  const now = Date.now()
  await fc.assert(fc.asyncProperty(specArb(6), fc.array(recArb(6), { minLength: 1, maxLength: 8 }), async (specs, records) => {
    run++
    const viaApi = await forest(admin, specs, `api${run}`)
    const viaTrigger = await forest(admin, specs, `trg${run}`)
    for (const [i, rec] of records.entries()) {
      const day = new Date(now - rec.daysBack * 86400000)
      const occurredAt = new Date(Math.min(now - 1000, Date.UTC(day.getUTCFullYear(), day.getUTCMonth(), day.getUTCDate(), rec.hour))).toISOString()
      const metadata: Record<string, unknown> = { modelId: rec.model, requestId: `${run}-${i}`, ...(rec.tag ? { tags: { team: 'a' } } : {}) }
      let stored: { metadata: Record<string, unknown>, amount: string } | null = null
      try {
        stored = (await app.budgetTracker.record({
          budgetId: viaApi[rec.budget]!, amount: String(rec.amount), currency: 'USD', source: `r${i}`, metadata, occurredAt,
          alsoCountsToward: rec.also.map((k) => viaApi[k]!)
        })).record as unknown as { metadata: Record<string, unknown>, amount: string }
      } catch (error) {
        if ((error as { code?: string }).code !== 'BUDGET_ERR_FILTER_MISMATCH' && !/match/i.test(String((error as Error).message))) throw error
        refusedCount++
        if (process.env.REVIEW_DEBUG !== undefined) t.comment(String((error as { code?: string }).code) + ' ' + (error as Error).message)
      }
      if (stored === null) continue
      storedCount++
      await sql`insert into budget_usage_records (root_id, budget_id, amount, currency, source, metadata, occurred_at, also_counts_toward, idempotency_key)
                select d.root_id, d.id, ${stored.amount}, 'USD', ${`r${i}`}, ${sql.json(stored.metadata as never)}, ${occurredAt},
                       ${rec.also.map((k) => viaTrigger[k]!)}::uuid[], ${`trg-${run}-${i}`}
                from budget_definitions d where d.id = ${viaTrigger[rec.budget]!}`
    }
    const [a, b] = [await outcome(sql, viaApi), await outcome(sql, viaTrigger)]
    allocationCount += a.allocations.length
    if (JSON.stringify(a) !== JSON.stringify(b)) {
      t.same(a, b, `run ${run}: same outcome\n${JSON.stringify({ specs, records })}`)
      return false
    }
    return true
  }), { numRuns: 25, seed: Number(process.env.REVIEW_SEED ?? 42), endOnFailure: true })
  t.comment(`stored ${storedCount}, refused ${refusedCount}, allocations ${allocationCount}`)
  t.ok(storedCount > 30 && allocationCount > storedCount, 'the runs stored records that reached several budgets')
})
