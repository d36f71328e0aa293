// On the Citus cluster (`npm run test:citus`): the review's two gateway processes on a two-tree line with
// aborting clients, failing and hanging upstreams and racing sweepers (test/fixtures/two-tree-processes.ts), on a
// database distributed once it is migrated.
import t from 'tap'
import { distributeOnCitus } from '../lib/kernel/database/citus.js'
import { twoTreeProcesses } from '../test/fixtures/two-tree-processes.js'

t.test('two processes, a two-tree line, aborted streams, failing and hanging upstreams, a short TTL: nothing lost or counted twice', async (t) => {
  await twoTreeProcesses(t, 5, distributeOnCitus)
})
