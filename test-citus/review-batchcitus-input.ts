// Review of 1f6c1c2 (usage in bulk on Citus), on the cluster (`npm run test:citus -- test-citus/review-batchcitus-input.ts`):
// records every one of which is refused change nothing; a budget id written in capitals is the budget, as on the
// single route (test/fixtures/batch-input.ts).
import t from 'tap'
import { distributedApp } from '../test/fixtures/citus-app.js'
import { capitalsNameTheBudget, refusedBatchChangesNothing } from '../test/fixtures/batch-input.js'

t.test('on Citus: a batch whose every record is refused, some by the database (no rate, past numeric(28,10), keys held in the tree), changes nothing', async (t) => {
  await refusedBatchChangesNothing(t, await distributedApp(t), 'held-1')
})

t.test('on Citus: a budget id in capitals names the budget, in a batch as on the single route', async (t) => {
  await capitalsNameTheBudget(t, await distributedApp(t))
})
