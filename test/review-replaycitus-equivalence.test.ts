// Review (replay on Citus, 069bf5b): on plain PostgreSQL the rewritten budget_simulate_slice answers exactly what
// the version before it (069bf5b^, installed beside it as budget_simulate_slice_old) answered, over random worlds:
// several trees sharing scope ids, API usage with allocations in several trees, true-up corrections with
// adjustments, archived budgets, windows that do not cover the event (custom, ended, starting later, non-recurring),
// time zones, fiscal years, calendar alignment, two currencies with a rate changing mid-range, events at identical
// instants, slices carrying state, a range start after the first events, and proposals in the replay's transaction.
import { execFileSync } from 'node:child_process'
import fc from 'fast-check'
import t from 'tap'
import type { Sql } from 'postgres'
import { migrate } from '../lib/kernel/database/migrate.js'
import { createTestSql } from './fixtures/database.js'
import { buildWorld, iso, R0, R1, DAY, uuid, replaySlices, worldArb, type World } from './fixtures/replay-worlds.js'

/** Each slice's state from both functions, in the calling transaction. */
async function replayBoth (sql: Sql, world: World, gated: string[]): Promise<{ old: string[], now: string[] }> {
  return { old: await replaySlices(sql, world, gated, 'budget_simulate_slice_old'), now: await replaySlices(sql, world, gated) }
}

t.test('the rewritten replay answers what the version before answered, slice by slice, on plain PostgreSQL', async (t) => {
  const { sql } = await createTestSql(t, { max: 1 })
  await migrate(sql)
  const previous = execFileSync('git', ['show', '069bf5b^:sql/functions/simulate.sql'], { encoding: 'utf8' })
  const body = previous.slice(previous.indexOf('create or replace function budget_simulate_slice('))
  t.ok(body.includes('union all') && body.includes('budget_window(d, e.at)'), 'the version before is the one-query line')
  await sql.unsafe(body.replace('create or replace function budget_simulate_slice(', 'create or replace function budget_simulate_slice_old('))

  let compared = 0
  let withApiWindows = 0
  let withCorrections = 0
  let windows = 0
  let refusals = 0
  let crossings = 0
  await fc.assert(fc.asyncProperty(worldArb, async (world) => {
    // each run in a transaction that rolls back: a fresh world on the same schema
    const rollback = new Error('rollback')
    try {
      await sql.begin(async (tx) => {
        const { ids, gated } = await buildWorld(tx, world)
        const [{ corrections }] = await tx<[{ corrections: number }]>`select count(*)::int as corrections from budget_usage_records where correction and metadata ? 'adjusts'`
        if (corrections > 0) withCorrections++
        const base = await replayBoth(tx as unknown as Sql, world, gated)
        if (base.now.at(-1)!.includes('recordedThroughApi')) withApiWindows++
        const last = JSON.parse(base.now.at(-1)!) as { windows: unknown[], refusals: unknown[], crossings: unknown[] }
        windows += last.windows.length; refusals += last.refusals.length; crossings += last.crossings.length
        if (JSON.stringify(base.old) !== JSON.stringify(base.now)) {
          throw new Error(`as the budgets are: the replays differ\nold ${base.old.at(-1)}\nnew ${base.now.at(-1)}`)
        }
        // a proposal, as the replay's transaction holds one
        await tx`select set_config('relaycore_budgets.simulating', 'on', true)`
        const p = world.proposal
        const n = ids.length
        if (p.amount !== null) await tx`update budget_definitions set amount = ${p.amount[1]} where id = ${ids[p.amount[0] % n]!}`
        if (p.period !== null) await tx`update budget_definitions set period = ${p.period[1]}, end_date = null, period_alignment = 'start' where id = ${ids[p.period[0] % n]!}`
        if (p.archive !== null) await tx`update budget_definitions set deleted_at = ${iso(R1)} where id = ${ids[p.archive % n]!}`
        if (p.unarchive) await tx`update budget_definitions set deleted_at = null where deleted_at is not null`
        if (p.newRoot) {
          await tx`insert into budget_definitions (id, root_id, name, scope_type, scope_id, amount, currency, period, start_date, alerts)
                   values (${uuid('f', 1)}, ${uuid('f', 1)}, 'proposed root', 'team', 'tea-a', 2, 'USD', 'daily', ${iso(R0 - 30 * DAY)}, '[{"threshold":50,"actions":["block-all"]}]')`
        }
        if (p.newChild !== null) {
          const parent = p.newChild % n
          const [row] = await tx<Array<{ root_id: string, currency: string }>>`select root_id, currency from budget_definitions where id = ${ids[parent]!}`
          await tx`insert into budget_definitions (id, root_id, parent_id, name, scope_type, scope_id, amount, currency, period, start_date, alerts)
                   values (${uuid('f', 2)}, ${row!.root_id}, ${ids[parent]!}, 'proposed child', 'user', 'use-a', 4, ${row!.currency}, 'weekly', ${iso(R0 - 3 * DAY)}, '[{"threshold":80,"actions":["notify"]}]')`
        }
        const proposed = await replayBoth(tx as unknown as Sql, world, gated)
        if (JSON.stringify(proposed.old) !== JSON.stringify(proposed.now)) {
          throw new Error(`under the proposal: the replays differ\nold ${proposed.old.at(-1)}\nnew ${proposed.now.at(-1)}`)
        }
        compared++
        throw rollback
      })
    } catch (error) {
      if (error !== rollback) throw error
    }
  }), { numRuns: 60, seed: 606888, endOnFailure: true })
  t.equal(compared, 60, 'every world compared, as the budgets are and under a proposal')
  t.comment(`windows ${windows}, refusal groups ${refusals}, crossings ${crossings}`)
  t.ok(windows > 100 && refusals > 20 && crossings > 20, 'the replays met windows, refused and crossed')
  t.comment(`worlds with API usage: ${withApiWindows}, with adjusted corrections: ${withCorrections}`)
  t.ok(withApiWindows > 10 && withCorrections > 3, 'the worlds exercised API usage and true-up adjustments')
})
