// Review of the lines' rewrite in steps: budget_line reads the applicable set, and the budgets' terms, in
// statements of their own. At 0df6ed4 the set and the versions came from one statement (one snapshot). A
// change to a budget committed while a line is being loaded (here: while the line's refresh waits on a window
// row) must not come back as the old set stamped with the new tree version: a process would then keep the
// stale line, since the version it checks against never moves again (the review found it so). The versions
// are now read first: such a line is stamped with the version before the change, which the next read outdates.
import { execFileSync } from 'node:child_process'
import t, { type Test } from 'tap'
import postgres from 'postgres'
import { migrate } from '../lib/kernel/database/migrate.js'
import { createTestSql } from './fixtures/database.js'
import { createLineRepository } from '../lib/gate/line-repository.js'

const oldFile = (path: string) => execFileSync('git', ['show', `0df6ed4:${path}`], { encoding: 'utf8' })

/** The 0df6ed4 budget_applicable / budget_line, and the walk they call, under old_ names. */
function oldLines (): string {
  const tree = oldFile('sql/functions/tree.sql')
  const lineage = tree.slice(tree.indexOf('create or replace function budget_lineage('), tree.indexOf('$$;', tree.indexOf('create or replace function budget_lineage(')) + 3)
  const lines = oldFile('sql/functions/lines.sql')
  return [lineage, lines].join('\n')
    .replaceAll('budget_lineage(', 'old_budget_lineage(')
    .replaceAll('budget_applicable(', 'old_budget_applicable(')
    .replaceAll('budget_line(', 'old_budget_line(')
}

async function scenario (t: Test, fn: 'budget_line' | 'old_budget_line') {
  const { url, sql } = await createTestSql(t)
  await migrate(sql)
  await sql.unsafe(oldLines())
  const blocker = postgres(url, { max: 1, onnotice: () => {} })
  const loader = postgres(url, { max: 1, onnotice: () => {} })
  t.teardown(async () => { await blocker.end({ timeout: 1 }); await loader.end({ timeout: 1 }) })

  // One tree: an org budget, a user budget under it counting only gpt-4o calls. No window rows yet.
  const [org] = await sql<Array<{ id: string }>>`
    insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date)
    values ('org', 'organization', 'o1', 100, 'USD', 'monthly', now() - interval '3 days') returning id`
  const [user] = await sql<Array<{ id: string }>>`
    insert into budget_definitions (name, scope_type, scope_id, parent_id, amount, currency, period, start_date, filter_models)
    values ('user', 'user', 'u1', ${org!.id}, 1, 'USD', 'monthly', now() - interval '3 days', '{gpt-4o}') returning id`

  // Another transaction makes the org's window row and holds it uncommitted: the line's refresh of that row waits.
  let inserted!: () => void
  const made = new Promise<void>((resolve) => { inserted = resolve })
  let line: Promise<unknown> | undefined
  const held = blocker.begin(async (tx) => {
    await tx`insert into budget_status_cache (budget_id, root_id, period_start, period_end)
             select b.id, b.root_id, w.period_start, w.period_end from budget_definitions b, budget_window(b, now()) w where b.id = ${org!.id}`
    inserted()
    await waitFor(async () => (await sql`select 1 from pg_stat_activity where wait_event_type = 'Lock' and query like ${'%' + fn + '%'}`).length === 1)
    // While the line waits: the user budget's filter is changed by hand (SQL, not the registry: the tree's
    // version is bumped at commit by its trigger, the global one is not), so gpt-4o calls no longer count toward it.
    await sql`update budget_definitions set filter_models = '{o3}' where id = ${user!.id}`
    throw new Error('rolled back')
  }).catch((error: Error) => { if (error.message !== 'rolled back') throw error })
  await made
  line = loader.unsafe(`select budget_id::text, tree_version::int, root_id::text from ${fn}('{user,organization}', '{u1,o1}', 'USD', 'gpt-4o', null) order by budget_id`).execute()
  await held
  const loaded = await line as Array<Record<string, unknown>>
  const [tree] = await sql<Array<{ version: number }>>`select version::int from budget_tree_versions where root_id = ${org!.id}`
  // What a process would read next: the set the definitions give now, and the tree's version now.
  const now = await sql.unsafe(`select budget_id::text, tree_version::int, root_id::text from budget_line('{user,organization}', '{u1,o1}', 'USD', 'gpt-4o', null) order by budget_id`)
  return { loaded: loaded.map((r) => ({ ...r })), now: now.map((r) => ({ ...r })), treeVersion: tree!.version, user: user!.id, org: org!.id, sql }
}

async function waitFor (check: () => Promise<boolean>) {
  for (let i = 0; i < 200; i++) {
    if (await check()) return
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
  throw new Error('the line load never waited on the window row')
}

t.test('the version before (0df6ed4): the line read while a change commits is the set at the tree version it reports', async (t) => {
  const { loaded, now, treeVersion } = await scenario(t, 'old_budget_line')
  t.equal(loaded[0]?.tree_version, treeVersion, 'reports the tree version now')
  t.same(loaded, now, 'the set it returns is the set at that version')
})

t.test('budget_line: the line read while a change commits is stamped with the tree version before it, and holds that version\'s set', async (t) => {
  const { loaded, now, treeVersion, user } = await scenario(t, 'budget_line')
  t.ok(loaded.every((row) => (row.tree_version as number) < treeVersion), `stamped with the version before the change (${loaded.map((row) => row.tree_version).join(', ')} < ${treeVersion}): the next read finds it out of date`)
  t.ok(loaded.some((row) => row.budget_id === user), 'it holds the set of that version: the user budget, whose filter matched gpt-4o then')
  t.notOk(now.some((row) => row.budget_id === user), 'a load after the change leaves the user budget out')
})

t.test('the gate\'s line repository: a line loaded across the change is not stamped current', async (t) => {
  const { loaded, sql } = await scenario(t, 'budget_line')
  const repository = createLineRepository(sql)
  const roots = [...new Set(loaded.map((row) => row.root_id as string))]
  const versions = await repository.versions(roots)
  const stamped = Object.fromEntries(loaded.map((row) => [row.root_id, row.tree_version]))
  const current = Object.fromEntries(versions.trees.map((tree) => [tree.rootId, tree.version]))
  const fresh = await repository.loadLine({ scopes: [{ type: 'user', id: 'u1' }, { type: 'organization', id: 'o1' }], model: 'gpt-4o' }, 'USD')
  // a process holding `loaded` sees its trees at the versions it was stamped with: it keeps it; that is only right if it is the line now
  if (JSON.stringify(stamped) === JSON.stringify(current)) {
    t.same(loaded.map((row) => row.budget_id).sort(), fresh.line.map((budget) => budget.budgetId).sort(), 'a line its versions call current is the line now')
  } else {
    t.pass('the versions tell the process the line is stale')
  }
})
