// Review of 1f6c1c2 (usage in bulk on Citus), on the cluster (`npm run test:citus -- test-citus/review-batchcitus-scopes.ts`):
// records given by scopes whose budgets span three trees (filters, a user with budgets in two trees, a budget in
// another currency), mixed with records by budgetId, keyed retries (a key held in one tree and asked in another),
// records without a rate and amounts near numeric(28,10): a batch equals the same records one at a time.
import fc from 'fast-check'
import t from 'tap'
import { distributedApp } from '../test/fixtures/citus-app.js'
import { findViolations } from '../test/fixtures/invariants.js'
import { alone, ledger, rates, specArbitrary, together, world } from '../test/fixtures/batch-scopes-world.js'
import { createUsageBatchRepository } from '../lib/usage/usage-batch-repository.js'

t.test('on Citus: records by scopes over three trees, with filters, rates and keyed retries: a batch equals one at a time', async (t) => {
  const single = await distributedApp(t)
  const bulk = await distributedApp(t)
  await rates(single.sql)
  await rates(bulk.sql)
  let run = 0
  const seen = new Set<string>()
  await fc.assert(fc.asyncProperty(fc.array(specArbitrary, { minLength: 1, maxLength: 24 }), async (specs) => {
    const tag = `w${++run}`
    const now = Date.now()
    const [a, b] = [await world(single.admin, tag), await world(bulk.admin, tag)]
    const left = await alone(single, a, specs, tag, now, async (sql, calls) => await createUsageBatchRepository(sql).listScopeBudgets(calls))
    const right = await together(bulk, b, specs, tag, now)
    for (const outcome of right) seen.add(outcome)
    if (JSON.stringify(left) !== JSON.stringify(right)) { t.same(right, left, 'the same outcome for every record'); return false }
    const [x, y] = [await ledger(single.sql), await ledger(bulk.sql)]
    for (const part of ['records', 'allocations', 'cache', 'crossings', 'outbox'] as const) {
      if (JSON.stringify(x[part]) !== JSON.stringify(y[part])) { t.same(y[part], x[part], `the same ${part}`); return false }
    }
    return true
  }), {
    numRuns: Number(process.env.REVIEW_RUNS ?? 6),
    examples: [[[
      // a key taken on bob's tree by scopes, then retried; the same key on the org's tree by budgetId (stored: a key is unique within a tree on Citus)
      { target: { user: 'bob', team: 'platform' }, amount: '3.5', key: 1, model: 'gpt-4o', feature: false, hoursAgo: 0, currency: 'USD' },
      { target: { budget: 0 }, amount: '3.5', key: 1, model: 'gpt-4o', feature: false, hoursAgo: 0, currency: 'USD' },
      { target: { user: 'bob', team: 'platform' }, amount: '3.5', key: 1, model: 'gpt-4o', feature: false, hoursAgo: 0, currency: 'USD' },
      { target: { budget: 0 }, amount: '3.5', key: 1, model: 'gpt-4o', feature: false, hoursAgo: 0, currency: 'USD' },
      { target: { budget: 1 }, amount: '3.5', key: 1, model: 'gpt-4o', feature: false, hoursAgo: 0, currency: 'USD' },
      // GBP reaching the EUR budget: no rate (refused), then its key on another request
      { target: { organization: 'acme' }, amount: '2', key: 2, model: 'gpt-4.1', feature: false, hoursAgo: 0, currency: 'GBP' },
      { target: { user: 'ada' }, amount: '2', key: 2, model: 'gpt-4.1', feature: true, hoursAgo: 0, currency: 'GBP' },
      { target: { organization: 'acme' }, amount: '2', key: 2, model: 'gpt-4.1', feature: false, hoursAgo: 0, currency: 'GBP' },
      { target: { budget: 6 }, amount: '2', key: 2, model: 'gpt-4o', feature: false, hoursAgo: 0, currency: 'GBP' },
      // huge amounts, keyed, across trees
      { target: { user: 'ada', project: 'p1' }, amount: '600000000000000000', key: 3, model: 'gpt-4o', feature: true, hoursAgo: 0, currency: 'USD' },
      { target: { budget: 6 }, amount: '600000000000000000', key: 4, model: 'gpt-4o', feature: false, hoursAgo: 0, currency: 'USD' },
      { target: { organization: 'acme', user: 'bob' }, amount: '600000000000000000', key: 3, model: 'gpt-4o', feature: false, hoursAgo: 0, currency: 'USD' },
      { target: { user: 'ada', project: 'p1' }, amount: '600000000000000000', key: 3, model: 'gpt-4o', feature: true, hoursAgo: 0, currency: 'USD' },
      { target: { budget: 3 }, amount: '1', key: 5, model: 'gpt-4o', feature: false, hoursAgo: 30, currency: 'EUR' }
    ]]]
  })
  t.same((await findViolations(bulk.sql)).filter((violation) => !violation.startsWith('hard budget')), [], 'each window equal to its allocations')
  t.ok(seen.has('created') && seen.has('replayed') && seen.has('refused BUDGET_ERR_IDEMPOTENCY_CONFLICT') && seen.has('refused BUDGET_ERR_EXCHANGE_RATE_MISSING'), `the runs met the outcomes: ${[...seen].join(', ')}`)
})
