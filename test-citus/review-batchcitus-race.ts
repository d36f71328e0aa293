// Review of 1f6c1c2 (usage in bulk on Citus), on the cluster (`npm run test:citus -- test-citus/review-batchcitus-race.ts`):
// two batches at once sharing keys and budgets over two trees, with the single route posting the same keys meanwhile
// (test/fixtures/batch-race.ts).
import t from 'tap'
import { distributedApp } from '../test/fixtures/citus-app.js'
import { raceBatches } from '../test/fixtures/batch-race.js'

t.test('on Citus: two batches and the single route at once, over two trees, sharing keys and budgets', async (t) => {
  await raceBatches(t, await distributedApp(t), Number(process.env.REVIEW_ROUNDS ?? 4))
})
