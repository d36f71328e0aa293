// Review of 1f6c1c2 (usage in bulk on Citus), plain PostgreSQL: two batches at once sharing keys and budgets
// over two trees, with the single route posting the same keys meanwhile (test/fixtures/batch-race.ts).
import t from 'tap'
import { buildApp } from './fixtures/app.js'
import { raceBatches } from './fixtures/batch-race.js'

t.test('two batches and the single route at once, over two trees, sharing keys and budgets', async (t) => {
  await raceBatches(t, await buildApp(t, { statusCacheTtlMs: 3_600_000 }), Number(process.env.REVIEW_ROUNDS ?? 6))
})
