// Adversarial review of 4f18cbf on plain PostgreSQL: budget_shadow_note_in_trees (each budget's tree from the line)
// and budget_shadow_note (the argument list before, reading the trees) count and mark exactly what budget_shadow_note
// did before the commit (git show 4f18cbf^), on random notes over two trees; and through the gateway, a line spanning
// two trees with a shadow budget in each, concurrent calls: each tree's counts equal the verdicts the calls answered.
import { execFileSync } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { isDeepStrictEqual } from 'node:util'
import t from 'tap'
import fc from 'fast-check'
import type postgres from 'postgres'
import { twoTreeCalls } from './fixtures/two-tree-calls.js'
import { buildGateway } from './fixtures/gateway.js'
import { findViolations } from './fixtures/invariants.js'
import { startUpstream } from './fixtures/upstream.js'

const oldNote = () => {
  const text = execFileSync('git', ['show', '4f18cbf^:sql/functions/shadow.sql'], { encoding: 'utf8' })
  const at = text.indexOf('create or replace function budget_shadow_note(')
  return text.slice(at, text.indexOf('$$;', text.indexOf('$$', at) + 2) + 3).replace('budget_shadow_note(', 'old_budget_shadow_note(')
}

class Rollback extends Error { constructor (readonly value: unknown) { super('rollback') } }
const rolledBack = async <T>(sql: postgres.Sql, fn: (tx: postgres.TransactionSql) => Promise<T>): Promise<T> => {
  try { await sql.begin(async (tx) => { throw new Rollback(await fn(tx)) }) } catch (error) { if (error instanceof Rollback) return error.value as T; throw error }
  throw new Error('unreachable')
}

t.test('the shadow note by trees, and by the old argument list, count and mark what the version before did', async (t) => {
  const s = await twoTreeCalls(t)
  await s.sql.unsafe(oldNote())
  await s.sql`update budget_definitions set enforcement = 'shadow'`
  const ids = [randomUUID(), randomUUID()]
  t.ok((await s.hold(ids[0]!, '1'))[0]!.fits, 'held on the three budgets, two trees')
  t.ok((await s.hold(ids[1]!, '1', [s.user, s.org]))[0]!.fits, 'held on the user and the organization')
  const rootOf: Record<string, string> = { [s.user]: s.U, [s.team]: s.O, [s.org]: s.O }
  const windows = await s.sql`select budget_id, period_start from budget_status_cache`
  const startOf = (b: string) => windows.find((w) => w.budget_id === b)!.period_start as Date
  // some counts there already
  await s.sql`insert into budget_shadow_counts (budget_id, root_id, period_start, code, outcome, calls) values (${s.team}, ${s.O}, ${startOf(s.team)}, 'budget_exceeded', 'refused', 3)`
  const note = fc.record({ budget: fc.constantFrom(s.user, s.team, s.org), code: fc.constantFrom('budget_exceeded', 'rate_limited', 'max_call_cost'), outcome: fc.constantFrom('refused', 'clamped', 'downgraded'), excluded: fc.option(fc.boolean(), { nil: null }) })
  let compared = 0
  await fc.assert(fc.asyncProperty(fc.constantFrom<string | null>(ids[0]!, ids[1]!, null, randomUUID()), fc.array(note, { minLength: 1, maxLength: 6 }), fc.boolean(), async (reservation, notes, premark) => {
    const args: any[] = [reservation, notes.map((n) => n.budget), notes.map((n) => startOf(n.budget).toISOString()), notes.map((n) => n.code), notes.map((n) => n.outcome), notes.map((n) => n.excluded === null ? null : String(n.excluded))]
    const state = async (tx: postgres.TransactionSql) => ({
      counts: await tx`select budget_id, root_id, period_start, code, outcome, calls::int from budget_shadow_counts order by 1, 2, 3, 4, 5`,
      marks: await tx`select id, budget_id, as_if_excluded from budget_reservations order by id, budget_id`
    })
    const run = async (how: 'old' | 'wrapper' | 'trees') => await rolledBack(s.sql, async (tx) => {
      if (premark) await tx`update budget_reservations set as_if_excluded = true where budget_id = ${s.team}`
      if (how === 'trees') {
        await tx`select budget_shadow_note_in_trees(${args[0]}::uuid, ${args[1]}::uuid[], ${notes.map((n) => rootOf[n.budget]!)}::uuid[], ${args[2]}::timestamptz[], ${args[3]}::text[], ${args[4]}::text[], ${args[5]}::boolean[])`
      } else {
        await tx.unsafe(`select ${how === 'old' ? 'old_' : ''}budget_shadow_note($1::uuid, $2::uuid[], $3::timestamptz[], $4::text[], $5::text[], $6::boolean[])`, args)
      }
      return JSON.parse(JSON.stringify(await state(tx)))
    })
    const wanted = await run('old')
    for (const how of ['wrapper', 'trees'] as const) {
      const found = await run(how)
      if (!isDeepStrictEqual(found, wanted)) { t.same(found, wanted, `${how}: the same counts and marks`); throw new Error(how) }
    }
    compared++
  }), { numRuns: 150 })
  t.ok(compared >= 150, `${compared} notes compared`)
})

t.test('a line spanning two trees, a shadow budget in each, concurrent calls: each tree counts every verdict', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json' })
  const a = await buildGateway(t, { upstreamServer: upstream.url, captureLogs: true })
  const b = await buildGateway(t, { upstreamServer: upstream.url, captureLogs: true, gatewayDatabase: async () => a.url })
  const user = await a.createBudget({ name: 'user', scopeType: 'user', scopeId: 'ada', amount: '0.0001', enforcement: 'shadow' })
  const org = await a.createBudget({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '10', enforcement: 'hard' })
  const team = await a.createBudget({ name: 'team', scopeType: 'team', scopeId: 'platform', amount: '0.0002', enforcement: 'shadow', parentId: org.id })
  const named = new Map<string, number>()
  const errors: string[] = []
  await Promise.all(Array.from({ length: 40 }, async (_, i) => {
    const answer = await (i % 2 === 0 ? a : b).call({ user: 'ada', team: 'platform', organization: 'acme' }, { model: 'gpt-4o', max_tokens: 200 })
    if (answer.statusCode !== 200) { errors.push(`${answer.statusCode} ${answer.body.slice(0, 200)}`); return }
    const header = String(answer.headers['x-budget-shadow'] ?? '')
    for (const part of header.split(',').map((p) => p.trim()).filter((p) => p !== '')) {
      const key = part.split(';').slice(0, 3).join(';')
      named.set(key, (named.get(key) ?? 0) + 1)
    }
  }))
  t.same(errors, [], 'every call admitted (shadow budgets refuse nothing)')
  await a.settled(20_000)
  const counts = await a.sql`select budget_id, code, outcome, calls::int, root_id from budget_shadow_counts order by budget_id, code, outcome`
  const counted = new Map(counts.map((row) => [`${row.budget_id as string};code=${row.code as string};outcome=${row.outcome as string}`, row.calls as number]))
  t.same(Object.fromEntries(counted), Object.fromEntries(named), 'the counts are the verdicts the calls answered with')
  t.ok([...named.keys()].some((k) => k.startsWith(user.id)) && [...named.keys()].some((k) => k.startsWith(team.id)), 'verdicts in both trees')
  t.same(counts.filter((row) => row.root_id !== (row.budget_id === user.id ? user.id : org.id)).length, 0, 'each count in its budget\'s tree')
  t.same(await findViolations(a.sql), [], 'invariants')
  const marked = await a.sql`select count(*)::int as n from budget_reservations where as_if_excluded`
  t.equal(marked[0]!.n, 0, 'nothing left held')
  t.same([...a.logs, ...b.logs].filter((line) => /shadow/.test(line.msg ?? '')).map((line) => line.msg), [], 'no shadow note failed')
})
