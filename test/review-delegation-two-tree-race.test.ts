// Review of 2d6ae2f on plain PostgreSQL: the race of test/fixtures/two-tree-race.ts (the gate's statements naming
// their trees, on lines that span two trees), with usage batches and alert thresholds crossed.
import t from 'tap'
import { migrate } from '../lib/kernel/database/migrate.js'
import { createTestSql } from './fixtures/database.js'
import { twoTreeRace } from './fixtures/two-tree-race.js'

t.test('the gate\'s statements naming their trees, racing on two-tree lines: no deadlock, invariants and limits hold', async (t) => {
  const { url, sql } = await createTestSql(t, { max: 2 })
  await migrate(sql)
  await twoTreeRace(t, { url, sql, onCitus: false })
})
