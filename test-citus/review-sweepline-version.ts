// Adversarial review of 2b62b3c on the Citus cluster (`npm run test:citus -- test-citus/review-sweepline-version.ts`):
// budget_scope_trees reads the definitions' global version (a reference table, read on the coordinator's own
// placement) and then the trees the scopes name (the shards, on the workers). A budget made in a new tree commits
// on the coordinator first and on the workers after (two-phase commit, no distributed snapshot): a read in between
// sees the new version without the new tree, and the line loaded by tree was stamped current while missing a budget
// that applies to the caller; the process's line cache then kept it. The registry on Citus now bumps the version
// again once the change has committed, past any such read: this checks that through the registry itself.
import t from 'tap'
import postgres from 'postgres'
import { randomUUID } from 'node:crypto'
import { distributeOnCitus } from '../lib/kernel/database/citus.js'
import { migrate } from '../lib/kernel/database/migrate.js'
import { createLineRepository, type ScopeTrees } from '../lib/gate/line-repository.js'
import { createBudgetLines } from '../lib/gate/budget-lines.js'
import { createDefinitionsVersion } from '../lib/gate/definitions-version.js'
import { createBudgetRegistry } from '../lib/budgets/registry.js'
import { createTestSql } from '../test/fixtures/database.js'

const quiet = { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} }

t.test('a budget made in a new tree: any line read before its rows were seen everywhere is stamped older than the version its change leaves', async (t) => {
  const { sql, url } = await createTestSql(t, { max: 2 })
  await migrate(sql)
  await distributeOnCitus(sql)
  const org = randomUUID()
  await sql`insert into budget_definitions (id, root_id, name, scope_type, scope_id, amount, currency, period, start_date, enforcement)
            values (${org}, ${org}, 'org', 'organization', 'acme', 100, 'USD', 'monthly', '2024-01-01', 'hard')`
  const writer = postgres(url, { max: 2, onnotice: () => {} })
  const reader = postgres(url, { max: 3, onnotice: () => {} })
  t.teardown(async () => { await writer.end({ timeout: 1 }); await reader.end({ timeout: 1 }) })
  // the registry as the plugin makes it on Citus: the global version bumped again once the change has committed
  const registry = createBudgetRegistry(writer, { bumpAfterCommit: true })
  const lines = createLineRepository(reader)
  const stale: Array<{ user: string, id: string, named: ScopeTrees, after: number }> = []
  let reads = 0
  const deadline = Date.now() + 45_000
  for (let i = 0; i < 2000 && stale.length < 3 && Date.now() < deadline; i++) {
    const user = `u-${i}`
    const scopes = [{ type: 'user' as const, id: user }, { type: 'organization' as const, id: 'acme' }]
    const before = Number((await sql`select budget_definitions_version()::text as v`)[0]!.v)
    let done = false
    // a new tree: the user's own budget is its root
    const created = registry.createBudget({ name: user, scopeType: 'user', scopeId: user, amount: '1', currency: 'USD', period: 'monthly', startDate: '2024-01-01', enforcement: 'hard' })
      .finally(() => { done = true })
    const seen: ScopeTrees[] = []
    // three readers at once, as three processes loading the line
    await Promise.all([0, 1, 2].map(async () => {
      while (!done) {
        seen.push(await lines.scopeTrees(scopes))
        reads++
      }
    }))
    const { id } = await created
    const after = Number((await sql`select budget_definitions_version()::text as v`)[0]!.v)
    for (const named of seen) {
      if (named.version > before && !named.roots.includes(id)) stale.push({ user, id, named, after })
    }
  }
  t.comment(`${reads} reads, ${stale.length} saw a creation's version before its tree`)
  for (const { named, after } of stale) {
    t.ok(named.version < after, `a read that saw the version (${named.version}) without the tree is older than the version the change left (${after})`)
  }
  if (stale.length === 0) return

  // what the gate's line cache does with such a read: loadLine by tree is scopeTrees, then loadLineIn naming them
  const { user, id, named } = stale[0]!
  const call = { scopes: [{ type: 'user' as const, id: user }, { type: 'organization' as const, id: 'acme' }], model: 'gpt-4o-mini' }
  const versions = createDefinitionsVersion()
  let first = true
  const repository = {
    ...createLineRepository(reader),
    loadLine: async (c: typeof call, currency: string) => {
      if (first) { first = false; return await lines.loadLineIn(c, currency, named) } // the racy read, replayed
      return await lines.loadLine(c, currency, { byTree: true })
    }
  }
  const cache = createBudgetLines(repository as never, versions, 'USD', quiet, { byTree: true })
  t.teardown(() => { cache.close() })
  const loaded = await cache.lineOf(call)
  t.ok(loaded.line.every((b) => b.budgetId !== id), 'the line loaded from that read misses the user\'s hard budget')
  await new Promise((resolve) => setTimeout(resolve, 500)) // several version polls
  const later = await cache.lineOf(call)
  t.ok(later.line.some((b) => b.budgetId === id), 'half a second (many version reads) later, the line has the user\'s budget')
})
