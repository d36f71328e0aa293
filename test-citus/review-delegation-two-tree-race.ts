// On the Citus cluster (`npm run test:citus`), the database distributed once migrated, so that each call is
// delegated to its first tree's worker: the race of test/fixtures/two-tree-race.ts, the same assertions as on
// plain PostgreSQL (test/review-delegation-two-tree-race.test.ts), without what does not run on the cluster yet.
import t from 'tap'
import { migrate } from '../lib/kernel/database/migrate.js'
import { distributeOnCitus } from '../lib/kernel/database/citus.js'
import { createTestSql } from '../test/fixtures/database.js'
import { twoTreeRace } from '../test/fixtures/two-tree-race.js'

t.test('the gate\'s statements naming their trees, racing on two-tree lines: no deadlock, invariants and limits hold', async (t) => {
  const { url, sql } = await createTestSql(t, { max: 2 })
  await migrate(sql)
  await distributeOnCitus(sql)
  await twoTreeRace(t, { url, sql, onCitus: true })
})
