// Review of the rewrite in steps: on plain PostgreSQL budget_applicable,
// budget_line, budget_lineage and budget_subtree give what they gave at 0df6ed4, on random forests and callers;
// and budget_line naming the trees budget_scope_trees reads (the line load on Citus) gives the same line.
// The 0df6ed4 definitions are loaded beside the current ones under old_ names.
import { execFileSync } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import t from 'tap'
import fc from 'fast-check'
import { NIL_ROOT } from '../lib/kernel/database/db.js'
import { migrate } from '../lib/kernel/database/migrate.js'
import { createTestSql } from './fixtures/database.js'

const oldFile = (path: string) => execFileSync('git', ['show', `0df6ed4:${path}`], { encoding: 'utf8' })
const block = (text: string, start: string) => {
  const at = text.indexOf(start)
  return text.slice(at, text.indexOf('$$;', text.indexOf('$$', at) + 2) + 3)
}

function oldFunctions (): string {
  const tree = oldFile('sql/functions/tree.sql')
  const definitions = oldFile('sql/functions/definitions.sql')
  return [
    block(tree, 'create or replace function budget_lineage('),
    block(tree, 'create or replace function budget_subtree('),
    block(definitions, 'create or replace function budget_matches('),
    oldFile('sql/functions/lines.sql')
  ].join('\n')
    .replaceAll('budget_lineage(', 'old_budget_lineage(')
    .replaceAll('budget_subtree(', 'old_budget_subtree(')
    .replaceAll('budget_matches(', 'old_budget_matches(')
    .replaceAll('budget_applicable(', 'old_budget_applicable(')
    .replaceAll('budget_line(', 'old_budget_line(')
}

const SCOPE_TYPES = ['organization', 'team', 'user', 'project'] as const
const SCOPE_IDS = ['a', 'b', 'c']
const MODELS = [null, 'gpt-4o', 'gpt-4o-mini', 'o3', 'claude-3', 'gpt-']
const PATTERNS = ['gpt-4o', 'gpt-4o*', 'gpt-*', 'o3', 'claude*', 'o*']
const TAGS = [null, {}, { feature: 'x' }, { feature: 'y' }, { feature: 'x', env: 'prod' }]
const FILTER_TAGS = [null, { feature: 'x' }, { env: 'prod' }, { feature: 'x', env: 'prod' }]

const budget = fc.record({
  parent: fc.nat(20), // an index into the earlier budgets of its tree; past the end: a root
  scopeType: fc.constantFrom(...SCOPE_TYPES),
  scopeId: fc.constantFrom(...SCOPE_IDS),
  period: fc.constantFrom('daily', 'weekly', 'monthly', 'quarterly', 'annual', 'custom'),
  startDays: fc.oneof(fc.integer({ min: -500, max: -1 }), fc.integer({ min: -40, max: 20 })), // days from now: some have not started
  endDays: fc.option(fc.integer({ min: 1, max: 600 }), { nil: null }), // days after the start: some have ended
  recurring: fc.boolean(),
  timezone: fc.constantFrom('UTC', 'America/New_York', 'Asia/Kolkata'),
  calendar: fc.boolean(),
  models: fc.option(fc.uniqueArray(fc.constantFrom(...PATTERNS), { minLength: 1, maxLength: 3 }), { nil: null, freq: 3 }),
  tags: fc.oneof(fc.constant(null), fc.constant(null), fc.constantFrom(...FILTER_TAGS)),
  archived: fc.integer({ min: 0, max: 4 }).map((n) => n === 0)
})
const forest = fc.array(fc.array(budget, { minLength: 1, maxLength: 6 }), { minLength: 1, maxLength: 5 })
const caller = fc.record({
  scopes: fc.uniqueArray(fc.tuple(fc.constantFrom(...SCOPE_TYPES), fc.constantFrom(...SCOPE_IDS)), { minLength: 1, maxLength: 6 }),
  duplicate: fc.boolean(),
  model: fc.constantFrom(...MODELS),
  tags: fc.constantFrom(...TAGS),
  atDays: fc.oneof(fc.constant(0), fc.constant(0), fc.integer({ min: -600, max: 400 }))
})

t.test('budget_applicable, budget_line, budget_lineage and budget_subtree give what they gave at 0df6ed4', async (t) => {
  const { sql } = await createTestSql(t)
  await migrate(sql)
  await sql.unsafe(oldFunctions())
  let run = 0
  const same = (found: unknown, wanted: unknown, message: string) => { if (!t.same(found, wanted, message)) throw new Error(message) }
  let nonEmpty = 0
  let nonEmptyLines = 0
  await fc.assert(fc.asyncProperty(forest, fc.array(caller, { minLength: 1, maxLength: 4 }), async (trees, callers) => {
    run++
    const prefix = `r${run}-`
    const ids: string[] = []
    for (const tree of trees) {
      const made: Array<{ id: string, depth: number }> = []
      for (const b of tree) {
        const parentAt = made.length === 0 ? -1 : b.parent % (made.length + 1) - 1
        const parent = parentAt >= 0 && made[parentAt]!.depth < 4 ? made[parentAt]! : (made[0]?.depth ?? 9) < 4 ? made[0]! : null
        const id = randomUUID()
        const custom = b.period === 'custom'
        const endDays = custom ? (b.endDays ?? 7) : b.endDays
        await sql`
          insert into budget_definitions (id, name, scope_type, scope_id, parent_id, amount, currency, period, start_date, end_date, recurring,
                                          timezone, period_alignment, filter_models, filter_tags, deleted_at)
          values (${id}, 'b', ${b.scopeType}, ${prefix + b.scopeId}, ${parent?.id ?? null}, 10, 'USD', ${b.period},
                  date_trunc('hour', now()) + ${b.startDays} * interval '1 day',
                  ${endDays === null ? null : sql`date_trunc('hour', now()) + ${b.startDays + endDays} * interval '1 day'`},
                  ${b.recurring}, ${b.timezone}, ${b.calendar && !custom ? 'calendar' : 'start'}, ${b.models}::text[],
                  ${b.tags === null ? null : JSON.stringify(b.tags)}::text::jsonb, ${b.archived ? sql`now()` : null})`
        made.push({ id, depth: parent === null ? 1 : parent.depth + 1 })
        ids.push(id)
      }
    }
    for (const c of callers) {
      const scopes = c.duplicate && c.scopes.length > 0 ? [...c.scopes, c.scopes[0]!] : c.scopes
      const types = scopes.map(([type]) => type)
      const scopeIds = scopes.map(([, id]) => prefix + id)
      const tags = c.tags === null ? null : JSON.stringify(c.tags)
      const applicable = (fn: string) => sql.unsafe(`
        select budget_id::text, scope_matched, scope_rank, period_start::text, period_end::text
        from ${fn}($1::text[], $2::text[], 'USD', now() + $3 * interval '1 day', $4, $5::text::jsonb) order by budget_id, period_start`,
      [types, scopeIds, c.atDays, c.model, tags])
      const now = await applicable('budget_applicable')
      const before = await applicable('old_budget_applicable')
      same(now.map((r) => ({ ...r })), before.map((r) => ({ ...r })), 'budget_applicable')
      if (now.length > 0) nonEmpty++
      const roots = await sql.unsafe(`select count(*)::int as n from budget_applicable($1::text[], $2::text[], 'USD', now() + $3 * interval '1 day', $4, $5::text::jsonb) a
                                      join budget_definitions d on d.id = a.budget_id where d.root_id is distinct from a.root_id`, [types, scopeIds, c.atDays, c.model, tags])
      t.equal(roots[0]!.n, 0, 'each budget comes with its root')
      const line = (fn: string) => sql.unsafe(`select *, period_start::text as ps, period_end::text as pe from ${fn}($1::text[], $2::text[], 'USD', $3, $4::text::jsonb)`, [types, scopeIds, c.model, tags])
      const lineNow = await line('budget_line')
      const lineBefore = await line('old_budget_line')
      if (lineNow.length > 0) nonEmptyLines++
      same(lineNow.map((r) => ({ ...r })), lineBefore.map((r) => ({ ...r })), 'budget_line, in its order')
      // as the gate loads it on Citus: the trees first (budget_scope_trees), then the line in those trees only
      const [named] = await sql<Array<{ roots: string[] }>>`select roots from budget_scope_trees(${types}::text[], ${scopeIds}::text[])`
      const lineByTree = await sql.unsafe(`select *, period_start::text as ps, period_end::text as pe from budget_line_in_trees($1::text[], $2::text[], 'USD', $3, $4::text::jsonb, $5::uuid[], $6::uuid)`,
        [types, scopeIds, c.model, tags, named!.roots, named!.roots[0] ?? NIL_ROOT])
      same(lineByTree.map((r) => ({ ...r })), lineNow.map((r) => ({ ...r })), 'budget_line naming the trees budget_scope_trees read: the same line')
    }
    const some = [...ids.filter((_, i) => i % 3 === run % 3), randomUUID()]
    for (const id of [...some, ...ids.slice(0, 3)]) {
      const lineage = (fn: string) => sql.unsafe(`select * from ${fn}($1::uuid)`, [id])
      same((await lineage('budget_lineage')).map((r) => ({ ...r })), (await lineage('old_budget_lineage')).map((r) => ({ ...r })), 'budget_lineage, nearest first')
    }
    const subtree = (fn: string, list: string[]) => sql.unsafe(`select id::text, depth from ${fn}($1::uuid[]) order by id`, [list])
    for (const list of [some, ids, [ids[0]!], []]) {
      same((await subtree('budget_subtree', list)).map((r) => ({ ...r })), (await subtree('old_budget_subtree', list)).map((r) => ({ ...r })), 'budget_subtree')
    }
  }), { numRuns: 60 })
  t.ok(nonEmpty > 20 && nonEmptyLines > 10, `callers matched budgets (${nonEmpty} non-empty, ${nonEmptyLines} lines)`)
})
