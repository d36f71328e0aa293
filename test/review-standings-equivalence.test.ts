// Review of budget_standings (sql/functions/standings.sql, lib/gate/standing-repository.ts): the new read
// against the one statement it replaced (HEAD~1's readStandings, copied below as raw SQL), on random budget
// forests written straight into the tables inside a transaction that is rolled back after each case.
import t from 'tap'
import fc from 'fast-check'
import type { Sql, TransactionSql } from 'postgres'
import { buildApp } from './fixtures/app.js'
import { createStandingRepository } from '../lib/gate/standing-repository.js'
import { normalizeMoney, type Money } from '../lib/kernel/money.js'
import { canonicalTags } from '../lib/kernel/tags.js'
import { numbersFrom } from '../lib/gate/budget-terms.js'

type Db = Sql | TransactionSql

// HEAD~1's readStandings, verbatim (the statement and its row mapping).
async function oldReadStandings (sql: Db, source: ReturnType<Db>, estimate: Money, currency: string) {
  const rows = await sql<any[]>`
      select x.budget_id as "budgetId", b.root_id as "rootId", b.name, b.alerts, b.currency, b.near_limit as "nearLimit", b.max_call_cost::text as "maxCallCost",
             x.scope_matched as "scopeMatched", x.scope_rank as "scopeRank", x.period_start as "periodStart", x.period_end as "periodEnd",
             b.rate_requests_per_minute as "requestsPerMinute", b.rate_tokens_per_minute::float8 as "tokensPerMinute",
             b.amount::text as amount, b.enforcement,
             n.current_amount::text as "currentAmount", n.reserved_amount::text as "reservedAmount",
             budget_approved_in_tree(b.root_id, x.budget_id, x.period_start)::text as "approvedThrough",
             budget_projected_actions(b.root_id, x.budget_id, x.period_start) as "projectedActions",
             coalesce(budget_fits(b.enforcement, b.amount, n.current_amount, n.reserved_amount, converted.estimate)
                      and budget_within_cap(converted.estimate, b.max_call_cost), false) as fits,
             coalesce(not budget_within_cap(converted.estimate, b.max_call_cost), false) as "overCap",
             converted.estimate::text as estimate, converted.estimate is null and converted.rate is not null as "outOfRange"
      from ${source} x
      join budget_definitions b on b.id = x.budget_id
      left join budget_status_cache c on c.budget_id = x.budget_id and c.period_start = x.period_start
      cross join lateral (
        select coalesce(c.current_amount, (select current_amount from calculate_budget_status(x.budget_id, x.period_start, x.period_end))) as current_amount,
               coalesce(c.reserved_amount, 0) as reserved_amount
      ) n
      cross join lateral (select r.rate, budget_hold_amount(${estimate}::numeric, r.rate, n.current_amount, n.reserved_amount) as estimate
                          from (select budget_exchange_rate(${currency}, b.currency, now()) as rate) r) converted
      order by x.scope_matched desc, x.scope_rank, x.budget_id`
  return {
    terms: rows.map((row) => ({
      budgetId: row.budgetId, rootId: row.rootId, name: row.name, alerts: row.alerts, currency: row.currency, nearLimit: row.nearLimit,
      maxCallCost: row.maxCallCost === null ? null : normalizeMoney(row.maxCallCost), scopeMatched: row.scopeMatched, scopeRank: row.scopeRank, periodStart: row.periodStart, periodEnd: row.periodEnd,
      requestsPerMinute: row.requestsPerMinute, tokensPerMinute: row.tokensPerMinute, enforcement: row.enforcement
    })),
    numbers: rows.map(numbersFrom),
    // the raw text too: compared before normalizeMoney could hide a difference
    raw: rows
  }
}

const oldListApplicable = async (sql: Db, scopes: Array<{ type: string, id: string }>, model: string | undefined, tags: Record<string, string> | undefined, currency: string, estimate: Money) =>
  await oldReadStandings(sql, sql`
        budget_applicable(${scopes.map((s) => s.type)}::text[], ${scopes.map((s) => s.id)}::text[], ${currency}, now(), ${model ?? null}, ${canonicalTags(tags)}::text::jsonb)`, estimate, currency)
const oldListLineage = async (sql: Db, budgetId: string, currency: string, estimate: Money) =>
  await oldReadStandings(sql, sql`(
        select l.id as budget_id, l.depth = 1 as scope_matched, l.depth as scope_rank, w.period_start, w.period_end
        from budget_lineage(${budgetId}) l
        join budget_definitions live on live.id = l.id and live.deleted_at is null
        cross join lateral budget_window(live, now()) w
      )`, estimate, currency)

// The new statement's raw rows (the repository's own SQL, read back as text to compare with the old raw rows).
const newRaw = async (sql: Db, source: ReturnType<Db>, estimate: Money, currency: string) => await sql<any[]>`
      select s.budget_id as "budgetId", s.root_id as "rootId", s.name, s.alerts, s.currency, s.near_limit as "nearLimit", s.max_call_cost::text as "maxCallCost",
             s.scope_matched as "scopeMatched", s.scope_rank as "scopeRank", s.period_start as "periodStart", s.period_end as "periodEnd",
             s.rate_requests_per_minute as "requestsPerMinute", s.rate_tokens_per_minute::float8 as "tokensPerMinute",
             s.amount::text as amount, s.enforcement,
             s.current_amount::text as "currentAmount", s.reserved_amount::text as "reservedAmount",
             s.approved_through::text as "approvedThrough", s.projected_actions as "projectedActions",
             s.fits, s.over_cap as "overCap", s.estimate::text as estimate, s.out_of_range as "outOfRange"
      from (select array_agg(x.budget_id order by x.o) as ids, array_agg(x.root_id order by x.o) as roots,
                   array_agg(x.scope_matched order by x.o) as matched, array_agg(x.scope_rank order by x.o) as ranks,
                   array_agg(x.period_start order by x.o) as starts, array_agg(x.period_end order by x.o) as ends
            from (select x.*, row_number() over (order by x.scope_matched desc, x.scope_rank, x.budget_id) as o from ${source} x) x) a
      cross join lateral budget_standings(a.ids, a.roots, a.matched, a.ranks, a.starts, a.ends, ${estimate}::numeric, ${currency}) with ordinality s
      order by s.ordinality`

const SCOPE_TYPES = ['organization', 'team', 'user', 'project'] as const
const SCOPE_IDS = ['a', 'b'] as const
const AMOUNTS = ['0.0000000001', '1', '10', '100.5', '999999999999999999', '123456.0000000001']
const SPENDS = ['0', '0.0000000001', '1', '9.9999999999', '50', '999999999999999998']
const ESTIMATES = ['0', '0.0000000001', '1', '5', '60', '999999999999999999', '1000000000000000000', '99999999999999999999999999.9999999999', '0.00000000001']
const RATES = [null, '0.9', '1.1', '0.0000000001', '10000000000', '3']

const budgetArb = (index: number) => fc.record({
  parent: index === 0 ? fc.constant(null) : fc.option(fc.nat(index - 1), { nil: null }),
  scopeType: fc.constantFrom(...SCOPE_TYPES),
  scopeId: fc.constantFrom(...SCOPE_IDS),
  amount: fc.constantFrom(...AMOUNTS),
  currency: fc.constantFrom('USD', 'EUR'),
  enforcement: fc.constantFrom('hard', 'soft', 'shadow'),
  maxCallCost: fc.option(fc.constantFrom('0.0000000001', '1', '5', '1000'), { nil: null }),
  filterModels: fc.constantFrom(null, ['gpt-4o'], ['gpt-*'], ['claude']),
  filterTags: fc.constantFrom(null, { env: 'prod' }),
  deleted: fc.constantFrom(false, false, false, true),
  period: fc.constantFrom('monthly', 'daily', 'future'),
  nearLimit: fc.constantFrom(null, 'refuse', 'clamp'),
  rpm: fc.option(fc.integer({ min: 1, max: 1000 }), { nil: null }),
  tpm: fc.option(fc.constantFrom('1', '9007199254740993', '123456'), { nil: null }),
  cache: fc.option(fc.record({ current: fc.constantFrom(...SPENDS), reserved: fc.constantFrom(...SPENDS) }), { nil: null }),
  staleCache: fc.boolean(),
  allocations: fc.array(fc.constantFrom(...SPENDS), { maxLength: 3 }),
  approvals: fc.array(fc.record({ amount: fc.constantFrom('1', '5', '1000'), spent: fc.constantFrom('0', '10', '50'), live: fc.boolean() }), { maxLength: 2 }),
  alerts: fc.array(fc.record({ basis: fc.constantFrom('current', 'projected'), actions: fc.constantFrom(['notify'], ['block-all'], ['require-approval', 'notify'], ['restrict-models']), resolved: fc.boolean() }), { maxLength: 3 })
})

const forestArb = fc.integer({ min: 1, max: 7 }).chain((n) => fc.tuple(...Array.from({ length: n }, (_, i) => budgetArb(i))))

const caseArb = fc.record({
  forest: forestArb,
  usdEur: fc.constantFrom(...RATES),
  eurUsd: fc.constantFrom(...RATES),
  estimate: fc.constantFrom(...ESTIMATES),
  gateCurrency: fc.constantFrom('USD', 'EUR', 'GBP'),
  scopes: fc.uniqueArray(fc.record({ type: fc.constantFrom(...SCOPE_TYPES), id: fc.constantFrom(...SCOPE_IDS, 'a', 'b', 'zz') }), { selector: (s) => s.type, minLength: 1, maxLength: 4 }),
  model: fc.constantFrom(undefined, 'gpt-4o', 'gpt-4o-mini', 'claude'),
  tags: fc.constantFrom(undefined, { env: 'prod' }, { env: 'dev' })
})

type Case = typeof caseArb extends fc.Arbitrary<infer T> ? T : never

class Rollback extends Error {}

async function writeForest (tx: TransactionSql, c: Case): Promise<string[]> {
  const ids: string[] = []
  let i = 0
  for (const b of c.forest) {
    const parent = b.parent === null ? null : ids[b.parent]!
    const start = b.period === 'future' ? '2999-01-01' : '2024-01-01'
    const period = b.period === 'future' ? 'monthly' : b.period
    const [row] = await tx`
      insert into budget_definitions (name, scope_type, scope_id, parent_id, amount, currency, period, start_date, enforcement, max_call_cost,
                                      filter_models, filter_tags, near_limit, rate_requests_per_minute, rate_tokens_per_minute, alerts)
      values (${'b' + String(i)}, ${b.scopeType}, ${b.scopeId}, ${parent}, ${b.amount}::numeric, ${b.currency}, ${period}, ${start}::timestamptz, ${b.enforcement},
              ${b.maxCallCost}::numeric, ${b.filterModels}::text[], ${b.filterTags === null ? null : JSON.stringify(b.filterTags)}::text::jsonb, ${b.nearLimit},
              ${b.rpm}, ${b.tpm}::bigint, ${JSON.stringify([{ threshold: 50 + i, actions: ['notify'] }])}::text::jsonb)
      returning id`
    ids.push(row!.id)
    i++
  }
  // windows now (none for a budget that starts in the future)
  for (const [index, b] of c.forest.entries()) {
    const id = ids[index]!
    const [w] = await tx`select w.period_start, w.period_end from budget_definitions d cross join lateral budget_window(d, now()) w where d.id = ${id}`
    if (w === undefined) continue
    if (b.cache !== null) {
      await tx`insert into budget_status_cache (budget_id, period_start, period_end, current_amount, reserved_amount)
               values (${id}, ${w.period_start}, ${w.period_end}, ${b.cache.current}::numeric, ${b.cache.reserved}::numeric)`
    } else if (b.staleCache) {
      // a row for an older window only: this one has none
      await tx`insert into budget_status_cache (budget_id, period_start, period_end, current_amount, reserved_amount)
               values (${id}, ${w.period_start}::timestamptz - interval '1 day', ${w.period_start}, 7, 3)`
    }
    for (const [k, amount] of [...b.allocations, '0.5'].entries()) {
      if (amount === '0') continue
      // the last one falls before the window: never counted
      const at = k === b.allocations.length ? tx`${w.period_start}::timestamptz - interval '1 second'` : tx`${w.period_start}::timestamptz + interval '1 second'`
      const [usage] = await tx`insert into budget_usage_records (budget_id, amount, currency, allocated_by_settlement, occurred_at)
                               values (${id}, ${amount}::numeric, ${b.currency}, true, ${at}) returning id`
      await tx`insert into budget_usage_allocations (budget_id, usage_id, amount, occurred_at) values (${id}, ${usage!.id}, ${amount}::numeric, ${at})`
    }
    for (const a of b.approvals) {
      await tx`insert into budget_approvals (budget_id, period_start, amount, spent_at_approval, approved_by, expires_at)
               values (${id}, ${w.period_start}, ${a.amount}::numeric, ${a.spent}::numeric, 'reviewer', now() + ${a.live ? '1 hour' : '-1 hour'}::interval)`
    }
    for (const [k, a] of b.alerts.entries()) {
      await tx`insert into budget_alert_history (budget_id, period_start, threshold, basis, actions, spent, limit_amount, resolved_at)
               values (${id}, ${w.period_start}, ${10 + k}, ${a.basis}, ${a.actions}::text[], 1, 1, ${a.resolved ? new Date() : null})`
    }
  }
  for (const b of c.forest.entries()) {
    if (b[1].deleted) await tx`update budget_definitions set deleted_at = now() where id = ${ids[b[0]]!}`
  }
  if (c.usdEur !== null) await tx`insert into budget_exchange_rates (from_currency, to_currency, effective_from, rate) values ('USD', 'EUR', now() - interval '1 day', ${c.usdEur}::numeric)`
  if (c.eurUsd !== null) await tx`insert into budget_exchange_rates (from_currency, to_currency, effective_from, rate) values ('EUR', 'USD', now() - interval '1 day', ${c.eurUsd}::numeric)`
  // a rate not yet in force: never read
  await tx`insert into budget_exchange_rates (from_currency, to_currency, effective_from, rate) values ('USD', 'EUR', now() + interval '1 day', 77)`
  return ids
}

t.test('budget_standings reads what the one statement before it read: same rows, order and values', async (t) => {
  const { sql } = await buildApp(t)
  let compared = 0
  let nonEmpty = 0
  let noCacheRow = 0
  const seen = { fits: 0, refused: 0, outOfRange: 0, overCap: 0, noRate: 0, approved: 0, projected: 0 }
  const started = Date.now()
  await fc.assert(fc.asyncProperty(caseArb, async (c) => {
    try {
      await sql.begin(async (tx) => {
        const ids = await writeForest(tx, c)
        const repository = createStandingRepository(tx)
        // the caller's budgets
        const before = await oldListApplicable(tx, c.scopes, c.model, c.tags, c.gateCurrency, c.estimate)
        const after = await repository.listApplicable({ scopes: c.scopes as any, model: c.model ?? null, ...(c.tags === undefined ? {} : { tags: c.tags }) }, c.gateCurrency, c.estimate)
        const rawAfter = await newRaw(tx, tx`
        budget_applicable(${c.scopes.map((s) => s.type)}::text[], ${c.scopes.map((s) => s.id)}::text[], ${c.gateCurrency}, now(), ${c.model ?? null}, ${canonicalTags(c.tags)}::text::jsonb)`, c.estimate, c.gateCurrency)
        if (JSON.stringify(before.raw) !== JSON.stringify(rawAfter)) throw new Error(`applicable raw rows differ:\nold ${JSON.stringify(before.raw)}\nnew ${JSON.stringify(rawAfter)}`)
        if (JSON.stringify({ terms: before.terms, numbers: before.numbers }) !== JSON.stringify(after)) throw new Error(`applicable standings differ:\nold ${JSON.stringify(before)}\nnew ${JSON.stringify(after)}`)
        compared++
        if (after.terms.length > 0) nonEmpty++
        for (const n of after.numbers) {
          if (n.fits) seen.fits++; else seen.refused++
          if (n.outOfRange) seen.outOfRange++
          if (n.overCap) seen.overCap++
          if (n.estimate === null && !n.outOfRange) seen.noRate++
          if (n.approvedThrough !== null) seen.approved++
          if (n.projectedActions.length > 0) seen.projected++
        }
        // each budget's lineage (deleted ones too), and an id no budget has
        for (const id of [...ids, '00000000-0000-0000-0000-0000000000ff']) {
          for (const currency of ['USD', 'EUR']) {
            const old = await oldListLineage(tx, id, currency, c.estimate)
            const now = await repository.listLineage(id, currency, c.estimate)
            if (JSON.stringify({ terms: old.terms, numbers: old.numbers }) !== JSON.stringify(now)) throw new Error(`lineage of ${id} in ${currency} differs:\nold ${JSON.stringify(old)}\nnew ${JSON.stringify(now)}`)
            compared++
            const [{ n }] = await tx`select count(*)::int as n from budget_lineage_windows(${id}, now()) l where not exists (select 1 from budget_status_cache c where c.budget_id = l.budget_id and c.period_start = l.period_start)` as any
            noCacheRow += n
          }
        }
        throw new Rollback()
      })
    } catch (error) {
      if (!(error instanceof Rollback)) throw error
    }
  }), { numRuns: 500, interruptAfterTimeLimit: 40000 })
  t.ok(compared > 200, `${compared} reads compared in ${Date.now() - started} ms`)
  t.ok(nonEmpty > 20, `${nonEmpty} callers with budgets`)
  t.ok(Object.values(seen).every((n) => n > 0), `every case met: ${JSON.stringify(seen)}`)
  t.ok(noCacheRow > 20, `${noCacheRow} lineage rows read from a window without a cache row`)
})
