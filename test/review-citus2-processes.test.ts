// Review of ebaffca / 14647b9 (locks.sql tree by tree, the sweeper's SKIP LOCKED of every row) on plain
// PostgreSQL: two gateway processes on a two-tree line with aborting clients, failing and hanging upstreams and
// racing sweepers (test/fixtures/two-tree-processes.ts).
import t from 'tap'
import { twoTreeProcesses } from './fixtures/two-tree-processes.js'

t.test('two processes, a two-tree line, aborted streams, failing and hanging upstreams, a short TTL: nothing lost or counted twice', async (t) => {
  await twoTreeProcesses(t, 6)
})
