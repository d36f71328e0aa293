// Review of 1f6c1c2 (usage in bulk on Citus), plain PostgreSQL: records every one of which is refused change nothing;
// a budget id written in capitals is the budget, as on the single route (test/fixtures/batch-input.ts).
import t from 'tap'
import { buildApp } from './fixtures/app.js'
import { capitalsNameTheBudget, refusedBatchChangesNothing } from './fixtures/batch-input.js'

t.test('a batch whose every record is refused, some by the database (no rate, past numeric(28,10), keys held in either tree), changes nothing', async (t) => {
  await refusedBatchChangesNothing(t, await buildApp(t), 'held-2')
})

t.test('a budget id in capitals names the budget, in a batch as on the single route', async (t) => {
  await capitalsNameTheBudget(t, await buildApp(t))
})
