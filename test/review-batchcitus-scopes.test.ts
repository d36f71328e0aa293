// Review of 1f6c1c2 (usage in bulk on Citus), plain PostgreSQL: records given by scopes whose budgets span three
// trees (filtered and unfiltered budgets on one scope, a user with budgets in two trees, a budget in another
// currency), mixed with records by budgetId, keyed retries, records without a rate and amounts near
// numeric(28,10); a batch must equal the same records recorded one at a time (the single route for a budgetId,
// budgetTracker.record with the scopes and the budgets the scopes reach, read by the query of 6834656, for scopes).
// And listScopeBudgets (two statements now) against that query over random trees, created_at ties included.
import fc from 'fast-check'
import t from 'tap'
import type { Sql } from 'postgres'
import { PREFIX, budgetRequest, buildApp, type TestApp } from './fixtures/app.js'
import { findViolations } from './fixtures/invariants.js'
import { toErrorBody } from '../lib/kernel/error-body.js'
import { createUsageBatchRepository, type ScopedCall } from '../lib/usage/usage-batch-repository.js'
import { canonicalTags } from '../lib/kernel/tags.js'

const BATCH = `${PREFIX}/usage/batch`

async function createBudget (admin: TestApp['admin'], overrides: Record<string, unknown>): Promise<string> {
  const response = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ startDate: '2024-01-01', ...overrides }) })
  if (response.statusCode !== 201) throw new Error(response.body)
  return response.json().id
}

/** The scopes' budgets, in the rule's order, as 6834656's listScopeBudgets read them (one statement). */
async function oldScopeBudgets (sql: Sql, calls: ScopedCall[]): Promise<string[][]> {
  if (calls.length === 0) return []
  const input = calls.map((call, index) => ({
    ord: index + 1, types: call.scopes.map((scope) => scope.type), ids: call.scopes.map((scope) => scope.id),
    currency: call.currency, model: call.model, tags: JSON.parse(canonicalTags(call.tags)) as unknown
  }))
  const rows = await sql<Array<{ ord: number, budgetIds: string[] }>>`
    select c.ord, array(
      select a.budget_id from budget_applicable(c.types, c.ids, c.currency, now(), c.model, c.tags) a
      join budget_definitions b on b.id = a.budget_id
      where a.scope_matched
      order by a.scope_rank, (b.filter_models is null and b.filter_tags is null), b.created_at, a.budget_id
    )::text[] as "budgetIds"
    from jsonb_to_recordset(${JSON.stringify(input)}::text::jsonb) as c(ord int, types text[], ids text[], currency text, model text, tags jsonb)`
  const found = new Array<string[]>(calls.length).fill([])
  for (const row of rows) found[row.ord - 1] = row.budgetIds
  return found
}

const ORDER = ['user', 'project', 'team', 'organization'] as const
function toCall (scopes: Record<string, string>, currency: string, model: string | null, tags: Record<string, string> | undefined): ScopedCall {
  return { scopes: ORDER.filter((type) => scopes[type] !== undefined).map((type) => ({ type, id: scopes[type]! })), currency, model, ...(tags === undefined ? {} : { tags }) }
}

/**
 * Three trees. 1: org (acme) > team (platform) > user (ada), and a gpt-4o* team budget on platform too.
 * 2: project p1 (tags feature=chat) > ada again (a user budget in a second tree), and bob (gpt-4o* only), a root.
 * 3: an EUR budget on the organization acme. Rates: GBP->USD, USD->EUR; no GBP->EUR.
 */
async function world (admin: TestApp['admin'], tag: string): Promise<Map<string, string>> {
  const names = new Map<string, string>()
  const make = async (name: string, body: Record<string, unknown>) => { names.set(name, await createBudget(admin, { name: `${tag} ${name}`, ...body })); return names.get(name)! }
  const org = await make('org', { scopeType: 'organization', scopeId: `${tag}-acme`, amount: '300', alerts: [{ threshold: 25, actions: ['notify'], notificationChannels: ['email'] }, { threshold: 90, actions: ['require-approval'] }] })
  const team = await make('team', { scopeType: 'team', scopeId: `${tag}-platform`, parentId: org, amount: '100', period: 'weekly', alerts: [{ threshold: 10, actions: ['notify'] }, { threshold: 80, actions: ['notify'], notificationChannels: ['slack'] }] })
  await make('team4o', { scopeType: 'team', scopeId: `${tag}-platform`, parentId: org, amount: '40', filters: { models: ['gpt-4o*'] }, alerts: [{ threshold: 30, actions: ['notify'] }] })
  await make('ada', { scopeType: 'user', scopeId: `${tag}-ada`, parentId: team, amount: '20', period: 'daily', alerts: [{ threshold: 50, actions: ['notify'] }] })
  const project = await make('p1', { scopeType: 'project', scopeId: `${tag}-p1`, amount: '70', filters: { tags: { feature: 'chat' } }, alerts: [{ threshold: 20, actions: ['notify'] }] })
  await make('ada2', { scopeType: 'user', scopeId: `${tag}-ada`, parentId: project, amount: '15', alerts: [{ threshold: 40, actions: ['notify'] }] })
  await make('bob', { scopeType: 'user', scopeId: `${tag}-bob`, amount: '60', filters: { models: ['gpt-4o*'] }, alerts: [{ threshold: 30, actions: ['notify'] }] })
  await make('eur', { scopeType: 'organization', scopeId: `${tag}-acme`, amount: '500', currency: 'EUR', alerts: [{ threshold: 5, actions: ['notify'] }] })
  return names
}

async function rates (sql: Sql): Promise<void> {
  await sql`insert into budget_exchange_rates (from_currency, to_currency, effective_from, rate) values ('GBP', 'USD', '2020-01-01', 1.2512345678), ('USD', 'EUR', '2020-01-01', 0.9123456789)`
}

const BUDGET_NAMES = ['org', 'team', 'team4o', 'ada', 'p1', 'ada2', 'bob', 'eur']
interface Spec {
  target: { budget: number } | { user?: string, team?: string, project?: string, organization?: string }
  amount: string
  key: number | null
  model: string
  feature: boolean
  hoursAgo: number
  currency: string
}

function bodyOf (spec: Spec, names: Map<string, string>, tag: string, now: number) {
  const metadata = { modelId: spec.model, ...(spec.feature ? { tags: { feature: 'chat' } } : {}), ...(spec.key === null ? {} : { requestId: `${tag}-${spec.key}` }) }
  const body = { amount: spec.amount, currency: spec.currency, source: 'review', metadata, occurredAt: new Date(Math.floor(now / 3_600_000) * 3_600_000 - spec.hoursAgo * 3_600_000).toISOString() }
  if ('budget' in spec.target) return { budgetId: names.get(BUDGET_NAMES[spec.target.budget]!)!, ...body }
  const scopes = Object.fromEntries(Object.entries(spec.target).filter(([, id]) => id !== undefined).map(([type, id]) => [type, `${tag}-${id}`]))
  return { scopes, ...body }
}

const code = (error: unknown) => `refused ${toErrorBody(error as Parameters<typeof toErrorBody>[0]).code}`

/** One at a time: the single route for a budgetId; for scopes, the tracker with the budgets the scopes reach (6834656's query). */
async function alone (app: TestApp, names: Map<string, string>, specs: Spec[], tag: string, now: number): Promise<string[]> {
  const outcomes: string[] = []
  for (const spec of specs) {
    const body = bodyOf(spec, names, tag, now)
    if ('budgetId' in body) {
      const { budgetId, ...rest } = body
      const response = await app.admin({ method: 'POST', url: `${PREFIX}/${budgetId}/usage`, body: rest })
      if (response.statusCode >= 500) throw new Error(`single route ${response.statusCode} ${response.body}`)
      outcomes.push(response.statusCode === 201 ? 'created' : response.statusCode === 200 ? 'replayed' : `refused ${response.json().code}`)
      continue
    }
    const { scopes, ...rest } = body
    const [reached] = await oldScopeBudgets(app.sql, [toCall(scopes, spec.currency, spec.model, spec.feature ? { feature: 'chat' } : undefined)])
    if (reached!.length === 0) { outcomes.push('refused BUDGET_ERR_NO_APPLICABLE_BUDGET'); continue }
    try {
      const { replayed } = await app.app.budgetTracker.record({ ...rest, budgetId: reached![0]!, alsoCountsToward: reached!.slice(1) }, { scopes })
      outcomes.push(replayed ? 'replayed' : 'created')
    } catch (error) {
      outcomes.push(code(error))
    }
  }
  return outcomes
}

async function together (app: TestApp, names: Map<string, string>, specs: Spec[], tag: string, now: number): Promise<string[]> {
  const response = await app.admin({ method: 'POST', url: BATCH, body: { records: specs.map((spec) => bodyOf(spec, names, tag, now)) } })
  if (response.statusCode !== 200) throw new Error(`batch ${response.statusCode} ${response.body.slice(0, 500)}`)
  return response.json().results.map((result: { status: string, error?: { code: string } }) => result.status === 'refused' ? `refused ${result.error!.code}` : result.status)
}

/** Where the money went, by budget name and record key. */
async function ledger (sql: Sql) {
  const names = new Map((await sql<Array<{ id: string, name: string }>>`select id::text, name from budget_definitions`).map((row) => [row.id, row.name]))
  const records = await sql<Array<{ id: string, budgetId: string, amount: string, currency: string, key: string | null, occurredAt: Date, also: string[] }>>`
    select id::text, budget_id::text as "budgetId", amount::text, currency, idempotency_key as key, occurred_at as "occurredAt", also_counts_toward::text[] as also from budget_usage_records`
  const keyOf = new Map(records.map((row) => [row.id, row.key]))
  const allocations = await sql<Array<{ budgetId: string, usageId: string, amount: string, occurredAt: Date, rate: string }>>`
    select budget_id::text as "budgetId", usage_id::text as "usageId", amount::text, occurred_at as "occurredAt", exchange_rate::text as rate from budget_usage_allocations`
  const cache = await sql<Array<{ budgetId: string, periodStart: Date, amount: string, count: number, reserved: string }>>`
    select budget_id::text as "budgetId", period_start as "periodStart", current_amount::text as amount, usage_count::int as count, reserved_amount::text as reserved from budget_status_cache`
  const crossings = await sql<Array<{ id: string, budgetId: string, periodStart: Date, threshold: string, spent: string }>>`
    select id::text, budget_id::text as "budgetId", period_start as "periodStart", threshold::text, spent::text from budget_alert_history`
  const thresholdOf = new Map(crossings.map((row) => [row.id, `${names.get(row.budgetId)} ${row.threshold}`]))
  const outbox = await sql<Array<{ alertId: string, channel: string }>>`select alert_id::text as "alertId", channel from budget_notification_outbox`
  const sorted = (rows: string[]) => rows.sort()
  return {
    records: sorted(records.map((row) => JSON.stringify([names.get(row.budgetId), row.amount, row.currency, row.key, row.occurredAt, row.also.map((id) => names.get(id)).sort()]))),
    allocations: sorted(allocations.map((row) => JSON.stringify([names.get(row.budgetId), keyOf.get(row.usageId) ?? null, row.amount, row.occurredAt, row.rate]))),
    cache: sorted(cache.map((row) => JSON.stringify([names.get(row.budgetId), row.periodStart, row.amount, row.count, row.reserved]))),
    crossings: sorted(crossings.map((row) => JSON.stringify([names.get(row.budgetId), row.periodStart, row.threshold, row.spent]))),
    outbox: sorted(outbox.map((row) => JSON.stringify([thresholdOf.get(row.alertId), row.channel])))
  }
}

const optional = <T>(arbitrary: fc.Arbitrary<T>) => fc.option(arbitrary, { nil: undefined })
const specArbitrary: fc.Arbitrary<Spec> = fc.record({
  target: fc.oneof(
    fc.record({ budget: fc.integer({ min: 0, max: BUDGET_NAMES.length - 1 }) }),
    fc.record({ user: optional(fc.constantFrom('ada', 'bob', 'nobody')), team: optional(fc.constant('platform')), project: optional(fc.constant('p1')), organization: optional(fc.constant('acme')) })
      .filter((scopes) => Object.values(scopes).some((id) => id !== undefined))
  ),
  amount: fc.oneof(
    { weight: 10, arbitrary: fc.oneof(fc.constantFrom('0.0000000001', '0.5', '1', '2.75', '7', '12.3456789012'), fc.integer({ min: 1, max: 5000 }).map((cents) => (cents / 100).toFixed(2))) },
    { weight: 1, arbitrary: fc.constant('600000000000000000') }
  ),
  key: fc.option(fc.integer({ min: 0, max: 6 }), { nil: null }),
  model: fc.constantFrom('gpt-4o', 'gpt-4o-mini', 'gpt-4.1'),
  feature: fc.boolean(),
  hoursAgo: fc.constantFrom(0, 0, 0, 5, 30, 200),
  currency: fc.constantFrom('USD', 'USD', 'USD', 'GBP', 'EUR')
})

t.test('records by scopes over three trees, with filters, rates and keyed retries: a batch equals one at a time', async (t) => {
  const single = await buildApp(t, { statusCacheTtlMs: 3_600_000 })
  const bulk = await buildApp(t, { statusCacheTtlMs: 3_600_000 })
  await rates(single.sql)
  await rates(bulk.sql)
  let run = 0
  const seen = new Set<string>()
  await fc.assert(fc.asyncProperty(fc.array(specArbitrary, { minLength: 1, maxLength: 30 }), async (specs) => {
    const tag = `w${++run}`
    const now = Date.now()
    const [a, b] = [await world(single.admin, tag), await world(bulk.admin, tag)]
    const left = await alone(single, a, specs, tag, now)
    const right = await together(bulk, b, specs, tag, now)
    for (const outcome of right) seen.add(outcome)
    if (JSON.stringify(left) !== JSON.stringify(right)) { t.same(right, left, 'the same outcome for every record'); return false }
    const [x, y] = [await ledger(single.sql), await ledger(bulk.sql)]
    for (const part of ['records', 'allocations', 'cache', 'crossings', 'outbox'] as const) {
      if (JSON.stringify(x[part]) !== JSON.stringify(y[part])) { t.same(y[part], x[part], `the same ${part}`); return false }
    }
    return true
  }), {
    numRuns: Number(process.env.REVIEW_RUNS ?? 25),
    examples: [[[
      // a key taken on bob's tree by scopes, then retried; the same key on the org tree by budgetId (a conflict on plain PG)
      { target: { user: 'bob', team: 'platform' }, amount: '3.5', key: 1, model: 'gpt-4o', feature: false, hoursAgo: 0, currency: 'USD' },
      { target: { budget: 0 }, amount: '3.5', key: 1, model: 'gpt-4o', feature: false, hoursAgo: 0, currency: 'USD' },
      { target: { user: 'bob', team: 'platform' }, amount: '3.5', key: 1, model: 'gpt-4o', feature: false, hoursAgo: 0, currency: 'USD' },
      // GBP reaching the EUR budget: no rate (refused), then its key on another request
      { target: { organization: 'acme' }, amount: '2', key: 2, model: 'gpt-4.1', feature: false, hoursAgo: 0, currency: 'GBP' },
      { target: { user: 'ada' }, amount: '2', key: 2, model: 'gpt-4.1', feature: true, hoursAgo: 0, currency: 'GBP' },
      { target: { organization: 'acme' }, amount: '2', key: 2, model: 'gpt-4.1', feature: false, hoursAgo: 0, currency: 'GBP' },
      // huge amounts, keyed, across trees
      { target: { user: 'ada', project: 'p1' }, amount: '600000000000000000', key: 3, model: 'gpt-4o', feature: true, hoursAgo: 0, currency: 'USD' },
      { target: { budget: 6 }, amount: '600000000000000000', key: 4, model: 'gpt-4o', feature: false, hoursAgo: 0, currency: 'USD' },
      { target: { organization: 'acme', user: 'bob' }, amount: '600000000000000000', key: 3, model: 'gpt-4o', feature: false, hoursAgo: 0, currency: 'USD' },
      { target: { user: 'ada', project: 'p1' }, amount: '600000000000000000', key: 3, model: 'gpt-4o', feature: true, hoursAgo: 0, currency: 'USD' },
      { target: { budget: 3 }, amount: '1', key: 5, model: 'gpt-4o', feature: false, hoursAgo: 30, currency: 'EUR' },
      // so that the example alone meets every outcome the last assertion names: a second huge amount on ada's
      // window (past numeric(28,10)), and scopes no budget names
      { target: { user: 'ada', project: 'p1' }, amount: '600000000000000000', key: null, model: 'gpt-4o', feature: true, hoursAgo: 0, currency: 'USD' },
      { target: { user: 'nobody' }, amount: '1', key: 6, model: 'gpt-4o', feature: false, hoursAgo: 0, currency: 'USD' }
    ]]]
  })
  t.same((await findViolations(bulk.sql)).filter((violation) => !violation.startsWith('hard budget')), [], 'each window equal to its allocations')
  t.same([...seen].sort(), ['created', 'refused BUDGET_ERR_EXCHANGE_RATE_MISSING', 'refused BUDGET_ERR_IDEMPOTENCY_CONFLICT', 'refused BUDGET_ERR_NO_APPLICABLE_BUDGET', 'refused BUDGET_ERR_VALIDATION', 'replayed'].sort(), 'the runs met every outcome')
})

t.test('listScopeBudgets (two statements) orders the scopes\' budgets as the single statement of 6834656, over random trees and created_at ties', async (t) => {
  const { admin, sql } = await buildApp(t)
  const repository = createUsageBatchRepository(sql)
  let run = 0
  const nodeArbitrary = fc.record({
    parent: fc.nat(),
    rootless: fc.boolean(),
    scope: fc.constantFrom('user', 'team', 'project', 'organization'),
    scopeId: fc.constantFrom('a', 'b'),
    models: fc.option(fc.constantFrom(['gpt-4o*'], ['gpt-4.1'], ['gpt-4o-mini', 'gpt-4.1']), { nil: undefined }),
    feature: fc.option(fc.constantFrom('chat', 'search'), { nil: undefined }),
    tieWith: fc.option(fc.nat(), { nil: undefined }),
    deleted: fc.boolean()
  })
  const callArbitrary = fc.record({
    user: optional(fc.constantFrom('a', 'b')), team: optional(fc.constantFrom('a', 'b')), project: optional(fc.constantFrom('a', 'b')), organization: optional(fc.constantFrom('a', 'b')),
    model: fc.option(fc.constantFrom('gpt-4o', 'gpt-4.1', 'gpt-4o-mini'), { nil: null }),
    feature: optional(fc.constantFrom('chat', 'search'))
  })
  await fc.assert(fc.asyncProperty(fc.array(nodeArbitrary, { minLength: 1, maxLength: 10 }), fc.array(callArbitrary, { minLength: 1, maxLength: 12 }), async (nodes, callSpecs) => {
    const tag = `l${++run}`
    const ids: string[] = []
    for (const [i, node] of nodes.entries()) {
      const parentId = i === 0 || node.rootless ? undefined : ids[node.parent % i]
      ids.push(await createBudget(admin, {
        name: `${tag} ${i}`, scopeType: node.scope, scopeId: `${tag}-${node.scopeId}`, amount: '100', ...(parentId === undefined ? {} : { parentId }),
        ...(node.models === undefined && node.feature === undefined ? {} : { filters: { ...(node.models === undefined ? {} : { models: node.models }), ...(node.feature === undefined ? {} : { tags: { feature: node.feature } }) } })
      }))
    }
    // created at one instant as another: the id parts them
    for (const [i, node] of nodes.entries()) {
      if (node.tieWith !== undefined) await sql`update budget_definitions set created_at = (select created_at from budget_definitions where id = ${ids[node.tieWith % nodes.length]!}) where id = ${ids[i]!}`
    }
    for (const [i, node] of nodes.entries()) if (node.deleted && i > 0) await sql`update budget_definitions set deleted_at = now() where id = ${ids[i]!} and not exists (select 1 from budget_definitions c where c.parent_id = ${ids[i]!})`
    const calls = callSpecs.map((spec) => toCall(
      Object.fromEntries(ORDER.filter((type) => spec[type] !== undefined).map((type) => [type, `${tag}-${spec[type]!}`])), 'USD', spec.model, spec.feature === undefined ? undefined : { feature: spec.feature }))
    const [now, before] = [await repository.listScopeBudgets(calls), await oldScopeBudgets(sql, calls)]
    if (JSON.stringify(now) !== JSON.stringify(before)) { t.same(now, before, 'the same budgets in the same order for every call'); return false }
    return true
  }), { numRuns: Number(process.env.REVIEW_RUNS ?? 60) })
  t.pass('listScopeBudgets agreed on every run')
})
