// Review of 1f6c1c2 (usage in bulk on Citus), plain PostgreSQL: records given by scopes whose budgets span three
// trees (filtered and unfiltered budgets on one scope, a user with budgets in two trees, a budget in another
// currency), mixed with records by budgetId, keyed retries, records without a rate and amounts near
// numeric(28,10); a batch must equal the same records recorded one at a time (the single route for a budgetId,
// budgetTracker.record with the scopes and the budgets the scopes reach, read by the query of 6834656, for scopes).
// And listScopeBudgets (two statements now) against that query over random trees, created_at ties included.
import fc from 'fast-check'
import t from 'tap'
import type { Sql } from 'postgres'
import { buildApp } from './fixtures/app.js'
import { findViolations } from './fixtures/invariants.js'
import { ORDER, alone, createBudget, ledger, optional, rates, specArbitrary, toCall, together, world } from './fixtures/batch-scopes-world.js'
import { createUsageBatchRepository, type ScopedCall } from '../lib/usage/usage-batch-repository.js'
import { canonicalTags } from '../lib/kernel/tags.js'

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
    const left = await alone(single, a, specs, tag, now, oldScopeBudgets)
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
