// Review of 1df63c1: the PL/pgSQL budget_recon_report against the SQL one it replaced (1109fdb), over random
// forests, mappings, buckets, rates, usage and corrections, on plain PostgreSQL. Every column as text (scale
// included), the rows' order, and bucketed against the old budget_recon_has_bucket.
import t from 'tap'
import fc from 'fast-check'
import { execFileSync } from 'node:child_process'
import { buildApp, PREFIX, type TestApp } from './fixtures/app.js'
import { dayBefore } from './fixtures/reconciliation.js'

/** The old report and bucket check, from 1109fdb, renamed. */
function oldFunctions (): string {
  const text = execFileSync('git', ['show', '1109fdb:sql/functions/reconciliation.sql'], { cwd: process.cwd(), encoding: 'utf8' })
  const take = (start: string, end: string): string => {
    const from = text.indexOf(start)
    const to = text.indexOf(end, from)
    if (from < 0 || to < 0) throw new Error(`not found: ${start}`)
    return text.slice(from, to + end.length)
  }
  const report = take('create or replace function budget_recon_report(', '\n$$;').replace('budget_recon_report(', 'old_recon_report(')
  const bucket = take('create or replace function budget_recon_has_bucket(', '\n$$;').replace('budget_recon_has_bucket(', 'old_recon_has_bucket(')
  return `${report}\n${bucket}`
}

const CURRENCIES = ['USD', 'EUR', 'JPY', 'GBP'] as const
const PROVIDERS = ['openai', 'anthropic', 'mistral'] as const
const DAYS = [1, 2, 3, 4, 5].map(dayBefore)
const AMOUNTS = ['0', '1', '0.0000000001', '-0.0000000001', '-5', '12.5', '99999999999999999.9999999999', '123456789.123456789012', '3.10', '7', '0.333333333333']
const RATES = ['0.5', '1.1', '149.123456', '0.0000001', '3', '1.0000000001']

const world = fc.record({
  budgets: fc.array(fc.record({
    parent: fc.nat(20), root: fc.boolean(), currency: fc.constantFrom(...CURRENCIES), filtered: fc.nat(4), deleted: fc.nat(6),
    name: fc.constantFrom('A', 'B', 'a', 'b', 'Team', 'team', 'Z z', 'Ä')
  }), { minLength: 1, maxLength: 8 }),
  mappings: fc.array(fc.record({
    provider: fc.constantFrom(...PROVIDERS), kind: fc.constantFrom('project', 'workspace', 'account'), value: fc.constantFrom('p1', 'p2', 'p3', 'acct', ''),
    budget: fc.nat(20), trueUp: fc.boolean()
  }), { minLength: 2, maxLength: 8 }),
  buckets: fc.array(fc.record({
    source: fc.constantFrom('openai', 'anthropic', 'csv', 'csv'), provider: fc.constantFrom(...PROVIDERS), account: fc.constantFrom('acct', 'other'),
    project: fc.constantFrom('p1', 'p2', 'p3', ''), day: fc.nat(DAYS.length - 1), currency: fc.constantFrom(...CURRENCIES), amount: fc.constantFrom(...AMOUNTS),
    line: fc.nat(3)
  }), { minLength: 4, maxLength: 14 }),
  rates: fc.array(fc.record({ from: fc.constantFrom(...CURRENCIES), to: fc.constantFrom(...CURRENCIES), rate: fc.constantFrom(...RATES), day: fc.nat(DAYS.length) }), { maxLength: 6 }),
  usage: fc.array(fc.record({ budget: fc.nat(20), day: fc.nat(DAYS.length - 1), hour: fc.constantFrom('00:00:00', '11:59:59.999', '23:59:59.999999'), amount: fc.constantFrom('1', '0.0000000001', '2.5', '1000000', '3.333') }), { maxLength: 8 }),
  trueUps: fc.array(fc.record({ provider: fc.constantFrom(...PROVIDERS), day: fc.nat(DAYS.length - 1), budget: fc.nat(20) }), { maxLength: 4 }),
  queries: fc.array(fc.record({ from: fc.nat(DAYS.length + 1), to: fc.nat(DAYS.length + 1), provider: fc.option(fc.constantFrom(...PROVIDERS, 'nobody')), budget: fc.option(fc.nat(20)) }), { minLength: 1, maxLength: 4 })
})
type World = typeof world extends fc.Arbitrary<infer W> ? W : never

async function call (app: TestApp, method: 'GET' | 'POST' | 'PUT' | 'DELETE', url: string, body?: unknown) {
  return await app.admin({ method, url: `${PREFIX}${url}`, ...(body === undefined ? {} : { body: body as Record<string, unknown> }) })
}

async function clear (app: TestApp): Promise<void> {
  // the reconciliation rows and rates of the run before (its budgets and usage stay, unmapped: they make no line)
  await app.sql.unsafe(`
    truncate budget_notification_outbox, budget_recon_drifts, budget_recon_corrections, budget_recon_mappings, budget_provider_costs,
             budget_exchange_rates cascade`)
}

async function build (app: TestApp, w: World, run: number): Promise<string[]> {
  const ids: string[] = []
  const currencyOf = new Map<string, string>()
  for (const [i, b] of w.budgets.entries()) {
    const parentId = !b.root && ids.length > 0 ? ids[b.parent % ids.length] : undefined
    const currency = parentId === undefined ? b.currency : currencyOf.get(parentId)!
    const filters = b.filtered === 0 ? { models: ['gpt-4o*'] } : b.filtered === 1 ? { tags: { env: 'prod' } } : undefined
    const response = await call(app, 'POST', '', {
      name: b.name, scopeType: 'team', scopeId: `r${run}-${i}`, amount: '100000', currency, period: 'monthly', startDate: '2020-01-01',
      ...(parentId === undefined ? {} : { parentId }), ...(filters === undefined ? {} : { filters })
    })
    if (response.statusCode !== 201) throw new Error(response.body)
    ids.push(response.json().id)
    currencyOf.set(response.json().id, currency)
  }
  for (const r of w.rates) {
    if (r.from === r.to) continue
    const effectiveFrom = r.day === DAYS.length ? '2020-01-01T00:00:00Z' : `${DAYS[r.day]}T12:00:00Z`
    const response = await call(app, 'PUT', `/exchange-rates/${r.from}/${r.to}`, { rate: r.rate, effectiveFrom })
    if (response.statusCode >= 300) throw new Error(response.body)
  }
  for (const [i, u] of w.usage.entries()) {
    const budgetId = ids[u.budget % ids.length]!
    await call(app, 'POST', `/${budgetId}/usage`, { amount: u.amount, currency: currencyOf.get(budgetId), occurredAt: `${DAYS[u.day]}T${u.hour}Z`, metadata: { requestId: `r${run}-u${i}` } })
  }
  for (const m of w.mappings) {
    const budgetId = ids[m.budget % ids.length]!
    await app.sql`insert into budget_recon_mappings (provider, kind, value, budget_id, root_id, true_up)
                  select ${m.provider}, ${m.kind}, ${m.value}, d.id, d.root_id, ${m.trueUp} from budget_definitions d where d.id = ${budgetId}
                  on conflict do nothing`
  }
  for (const b of w.buckets) {
    await app.sql`insert into budget_provider_costs (source, provider, account, bucket_date, project, line_item, currency, amount)
                  values (${b.source}, ${b.provider}, ${b.account}, ${DAYS[b.day]!}, ${b.project}, ${'line' + b.line}, ${b.currency}, ${b.amount}::numeric)
                  on conflict do nothing`
  }
  for (const u of w.trueUps) {
    await call(app, 'POST', '/reconciliation/true-up', { provider: u.provider, day: DAYS[u.day], budgetId: ids[u.budget % ids.length] })
  }
  // deleted budgets: leaves only (a parent with children refuses)
  for (const [i, b] of w.budgets.entries()) {
    if (b.deleted === 0 && ids[i] !== undefined) await call(app, 'DELETE', `/${ids[i]}`)
  }
  return ids
}

const columns = `day::text as day, provider, budget_id::text as budget_id, budget_name, currency, true_up::text as true_up, filtered::text as filtered,
  provider_amount::text as provider_amount, recorded_amount::text as recorded_amount, correction::text as correction, difference::text as difference,
  ratio::text as ratio, missing_rate`

t.test('the new report is the old one, column by column and in order; bucketed is the old bucket check', async (t) => {
  const app = await buildApp(t)
  await app.sql.unsafe(oldFunctions())
  let run = 0
  let lines = 0
  await fc.assert(fc.asyncProperty(world, async (w) => {
    run++
    await clear(app)
    const ids = await build(app, w, run)
    if (ids.length === 0) return
    for (const q of w.queries) {
      // from no later than to, mostly (an empty range now and then)
      const [early, late] = q.from === 0 && q.to === 0 ? [0, 1] : [Math.max(q.from, q.to), Math.min(q.from, q.to)]
      const from = early === DAYS.length + 1 ? '2000-01-01' : dayBefore(early)
      const to = late === DAYS.length + 1 ? '2999-12-31' : dayBefore(late)
      const provider = q.provider ?? null
      const budgetId = q.budget === null ? null : ids[q.budget % ids.length]!
      const older = await app.sql.unsafe(`select ${columns} from old_recon_report($1::date, $2::date, $3, $4::uuid)`, [from, to, provider, budgetId])
      const newer = await app.sql.unsafe(`select ${columns}, bucketed, root_id::text as root_id,
          old_recon_has_bucket(provider, day, budget_id) as old_bucketed,
          (select d.root_id::text from budget_definitions d where d.id = r.budget_id) as budget_root
        from budget_recon_report($1::date, $2::date, $3, $4::uuid) r`, [from, to, provider, budgetId])
      lines += newer.length
      const strip = newer.map(({ bucketed: _b, root_id: _r, old_bucketed: _o, budget_root: _br, ...rest }) => rest)
      t.strictSame(strip, older.map((row) => ({ ...row })), `run ${run}: ${from}..${to} ${provider} ${budgetId}`)
      for (const row of newer) {
        if (row.bucketed !== row.old_bucketed) t.fail(`bucketed ${row.bucketed} where the old check says ${row.old_bucketed}: ${JSON.stringify(row)}`)
        if (row.root_id !== row.budget_root) t.fail(`root_id ${row.root_id} is not the budget's ${row.budget_root}`)
      }
      if (older.length !== newer.length) throw new Error('lines differ')
    }
  }), { numRuns: 100, seed: 20261206, endOnFailure: true })
  t.ok(lines > 80, `${lines} lines compared`)
})

t.test('fixed example: a collector and a CSV on the same day, two currencies, one rate missing, scale kept', async (t) => {
  const app = await buildApp(t)
  await app.sql.unsafe(oldFunctions())
  const day = dayBefore(2)
  const root = (await call(app, 'POST', '', { name: 'Org', scopeType: 'team', scopeId: 'o', amount: '100000', currency: 'EUR', period: 'monthly', startDate: '2020-01-01' })).json().id as string
  const child = (await call(app, 'POST', '', { name: 'Team', scopeType: 'team', scopeId: 't', amount: '100000', currency: 'EUR', period: 'monthly', startDate: '2020-01-01', parentId: root })).json().id as string
  t.equal((await call(app, 'PUT', '/exchange-rates/USD/EUR', { rate: '0.9', effectiveFrom: '2020-01-01T00:00:00Z' })).statusCode, 201)
  await call(app, 'POST', `/${child}/usage`, { amount: '3.3', currency: 'EUR', occurredAt: `${day}T23:59:59.999Z`, metadata: { requestId: 'x' } })
  for (const [kind, value, budgetId] of [['project', 'p1', child], ['account', 'acct', root]] as const) {
    const made = await call(app, 'POST', '/provider-costs/mappings', { provider: 'openai', kind, value, budgetId, trueUp: true })
    t.equal(made.statusCode, 201, made.body)
  }
  await app.sql`insert into budget_provider_costs (source, provider, account, bucket_date, project, currency, amount) values
    ('openai', 'openai', 'acct', ${day}, 'p1', 'USD', 1.123456789012), ('openai', 'openai', 'acct', ${day}, 'p2', 'GBP', 2),
    ('csv', 'openai', 'acct', ${day}, 'p1', 'USD', 100)`
  const older = await app.sql.unsafe(`select ${columns} from old_recon_report($1::date, $1::date, null, null)`, [day])
  const newer = await app.sql.unsafe(`select ${columns} from budget_recon_report($1::date, $1::date, null, null)`, [day])
  t.strictSame(newer.map((r) => ({ ...r })), older.map((r) => ({ ...r })))
  t.strictSame(newer.map((r) => [r.budget_name, r.provider_amount, r.recorded_amount, r.missing_rate]), [
    ['Org', null, '3.3000000000', 'GBP'],
    ['Team', '1.0111111102', '3.3000000000', null]
  ])
})
