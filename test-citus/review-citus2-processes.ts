// On the Citus cluster (`npm run test:citus`): the review's two gateway processes on a two-tree line with
// aborting clients, failing and hanging upstreams and racing sweepers (test/fixtures/two-tree-processes.ts), on a
// database distributed once it is migrated.
import t from 'tap'
import { distributeOnCitus } from '../lib/kernel/database/citus.js'
import { twoTreeProcesses } from '../test/fixtures/two-tree-processes.js'

t.test('two processes, a two-tree line, aborted streams, failing and hanging upstreams, a short TTL: nothing lost or counted twice', async (t) => {
  // 16 calls at once on one two-tree line through the coordinator on two cores: alone on a quiet machine a fifth
  // of them waited past the gate's 3 s for PostgreSQL (a 503, fail-closed), and under CI's load every one did.
  // The test is about the records, not the wait.
  await twoTreeProcesses(t, 5, distributeOnCitus, { GATE_TIMEOUT_MS: '20000' })
})
