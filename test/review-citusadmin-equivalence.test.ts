// Adversarial review of 96e60fe on plain PostgreSQL: budget_status_windows (the status window), the alerts that
// follow a definition and the carry of live reservations after a window change give exactly what the definitions
// before the commit gave (git show 96e60fe^), on random budgets, periods, time zones, alignments, custom, ended
// and not-started budgets, thresholds with sorted and unsorted actions, projected alerts.
import { execFileSync } from 'node:child_process'
import { isDeepStrictEqual } from 'node:util'
import { randomUUID } from 'node:crypto'
import t from 'tap'
import fc from 'fast-check'
import type postgres from 'postgres'
import { migrate } from '../lib/kernel/database/migrate.js'
import { createTestSql } from './fixtures/database.js'
import { createStatusRepository } from '../lib/usage/status-repository.js'

const oldFile = (path: string) => execFileSync('git', ['show', `96e60fe^:${path}`], { encoding: 'utf8' })
const block = (text: string, start: string) => {
  const at = text.indexOf(start)
  if (at < 0) throw new Error(`no ${start}`)
  return text.slice(at, text.indexOf('$$;', text.indexOf('$$', at) + 2) + 3)
}
const oldFunctions = () => [
  block(oldFile('sql/functions/alerts.sql'), 'create or replace function budget_alerts_follow_definition(')
    .replace('budget_alerts_follow_definition(', 'old_budget_alerts_follow_definition('),
  block(oldFile('sql/functions/window-changes.sql'), 'create or replace function budget_carry_reservations(')
    .replace('budget_carry_reservations(', 'old_budget_carry_reservations(')
].join('\n')

// (a projected crossing's measure is a forecast of now(), which the two runs read at different instants: compared
// by its threshold, basis, actions and state only)

// findWindows as status-repository.ts had it before the commit
const oldFindWindows = async (sql: postgres.Sql, pairs: Array<{ budgetId: string, at: Date }>) => {
  const rows = await sql<Array<{ ord: number, periodStart: Date, periodEnd: Date, state: string }>>`
    select p.ord::int as ord, w.period_start as "periodStart", w.period_end as "periodEnd",
      case when p.at < b.start_date then 'scheduled' when w.ordinal = 0 then 'active' else 'ended' end as state
    from unnest(${pairs.map((p) => p.budgetId)}::text[]::uuid[], ${pairs.map((p) => p.at.toISOString())}::text[]::timestamptz[])
      with ordinality as p(budget_id, at, ord)
    join budget_definitions b on b.id = p.budget_id
    cross join lateral (
      select 0 as ordinal, * from budget_window(b, greatest(p.at, b.start_date))
      union all
      select 1, * from budget_window(b, b.end_date - interval '1 microsecond')
      union all
      select 2, * from budget_window(b, b.start_date)
      order by ordinal
      limit 1
    ) w`
  const windows = new Array<unknown>(pairs.length).fill(null)
  for (const { ord, ...window } of rows) windows[ord - 1] = window
  return windows
}

const DAY = 86_400_000
const ZONES = ['UTC', 'America/New_York', 'Asia/Kolkata', 'Australia/Lord_Howe', 'Pacific/Chatham', 'Europe/London']
const ACTIONS = ['notify', 'block-all', 'restrict-models', 'require-approval', 'downgrade']
const alert = fc.record({
  threshold: fc.constantFrom(1, 10, 25, 50, 50.0, 75.5, 80, 90, 100, 120),
  basis: fc.constantFrom(undefined, 'current', 'projected'),
  actions: fc.subarray(ACTIONS, { minLength: 0, maxLength: 3 }).chain((a) => fc.shuffledSubarray(a, { minLength: a.length, maxLength: a.length }))
})
const definition = fc.record({
  period: fc.constantFrom('daily', 'weekly', 'monthly', 'quarterly', 'annual', 'custom'),
  startMs: fc.oneof(fc.integer({ min: -400 * DAY, max: -1 }), fc.integer({ min: -3 * DAY, max: 5 * DAY })),
  lengthMs: fc.option(fc.integer({ min: 3_600_000, max: 500 * DAY }), { nil: null }),
  recurring: fc.boolean(),
  timezone: fc.constantFrom(...ZONES),
  fiscal: fc.integer({ min: 1, max: 12 }),
  calendar: fc.boolean(),
  amount: fc.constantFrom('1', '10', '100', '3.3333333333'),
  alerts: fc.array(alert, { maxLength: 4 })
})
type Def = { period: string, startMs: number, lengthMs: number | null, recurring: boolean, timezone: string, fiscal: number, calendar: boolean, amount: string, alerts: Array<{ threshold: number, basis: string | undefined, actions: string[] }> }
const columns = (d: Def, now: number) => {
  const end = d.lengthMs ?? (d.period === 'custom' ? 7 * DAY : null)
  return {
    period: d.period, start_date: new Date(now + d.startMs), end_date: end === null ? null : new Date(now + d.startMs + end),
    recurring: d.recurring, timezone: d.timezone, fiscal_year_start_month: d.fiscal,
    period_alignment: d.calendar && d.period !== 'custom' ? 'calendar' : 'start', amount: d.amount,
    alerts: d.alerts.map((a) => ({ threshold: a.threshold, ...(a.basis === undefined ? {} : { basis: a.basis }), actions: a.actions }))
  }
}

// asserts only on a difference (the runs are many): the first one fails the property with its counterexample
const same = (t: any, found: unknown, wanted: unknown, message: string) => {
  if (!isDeepStrictEqual(JSON.parse(JSON.stringify(found)), JSON.parse(JSON.stringify(wanted)))) { t.same(found, wanted, message); throw new Error(message) }
}

class Rollback extends Error { constructor (readonly value: unknown) { super('rollback') } }
const rolledBack = async <T>(sql: postgres.Sql, fn: (tx: postgres.TransactionSql) => Promise<T>): Promise<T> => {
  try { await sql.begin(async (tx) => { throw new Rollback(await fn(tx)) }) } catch (error) { if (error instanceof Rollback) return error.value as T; throw error }
  throw new Error('unreachable')
}

t.test('budget_status_windows gives the windows and states the lateral union gave', async (t) => {
  const { sql } = await createTestSql(t)
  await migrate(sql)
  const repo = createStatusRepository(sql as any)
  let compared = 0
  await fc.assert(fc.asyncProperty(fc.array(definition, { minLength: 1, maxLength: 4 }), fc.array(fc.integer({ min: -900 * DAY, max: 900 * DAY }), { minLength: 1, maxLength: 6 }),
    async (defs, offsets) => {
      const now = Date.now()
      const ids: string[] = []
      for (const d of defs) {
        const c = columns(d, now)
        const [row] = await sql`insert into budget_definitions ${sql({ ...c, alerts: sql.json(c.alerts as any), name: 'b', scope_type: 'team', scope_id: 't', currency: 'USD' } as any)} returning id, start_date, end_date`
        ids.push(row!.id)
        // the instants at the edges too
        offsets.push(row!.start_date.getTime() - now, row!.start_date.getTime() - now - 1)
        if (row!.end_date !== null) offsets.push(row!.end_date.getTime() - now, row!.end_date.getTime() - now - 1)
      }
      const pairs = [...ids, randomUUID()].flatMap((budgetId) => offsets.map((o) => ({ budgetId, at: new Date(now + o) })))
      const found = await repo.findWindows(pairs)
      const wanted = await oldFindWindows(sql, pairs)
      compared += pairs.length
      same(t, found, wanted, 'the same windows')
      for (const [i, pair] of pairs.entries()) {
        const one = await repo.findWindow(pair.budgetId, pair.at)
        same(t, one, wanted[i], 'findWindow alone')
        if (i > 3) break
      }
    }), { numRuns: 60 })
  t.ok(compared > 100, `${compared} windows compared`)
})

t.test('budget_alerts_follow_definition resolves and records what the version before did', async (t) => {
  const { sql } = await createTestSql(t)
  await migrate(sql)
  await sql.unsafe(oldFunctions())
  let resolvedSome = 0
  await fc.assert(fc.asyncProperty(definition, fc.array(alert, { maxLength: 4 }), fc.array(fc.constantFrom('0.5', '2', '5', '40', '90'), { maxLength: 4 }),
    fc.array(alert, { maxLength: 3 }), fc.constantFrom('1', '10', '100', '50'),
    async (d, history, spends, newAlerts, newAmount) => {
      const now = Date.now()
      const c = columns({ ...d, startMs: Math.min(d.startMs, -DAY), lengthMs: d.lengthMs === null ? null : Math.max(d.lengthMs, 30 * DAY) }, now)
      const [b] = await sql`insert into budget_definitions ${sql({ ...c, alerts: sql.json(c.alerts as any), name: 'b', scope_type: 'team', scope_id: 't', currency: 'USD', enforcement: 'soft' } as any)} returning id, root_id`
      for (const [i, s] of spends.entries()) await sql`insert into budget_usage_records (budget_id, amount, currency, idempotency_key) values (${b!.id}, ${s}, 'USD', ${`k-${b!.id}-${i}`})`
      const [w] = await sql`select period_start from budget_window((select d from budget_definitions d where d.id = ${b!.id}), now())`
      if (w?.period_start != null) {
        // crossings in the history with actions in any order, some of them active
        for (const h of history) {
          await sql`insert into budget_alert_history (budget_id, root_id, period_start, threshold, basis, actions, spent, limit_amount)
            values (${b!.id}, ${b!.root_id}, ${w.period_start}, ${h.threshold}, ${h.basis ?? 'current'}, ${h.actions}::text[], 1, 1) on conflict do nothing`
        }
      }
      const newer = columns({ ...d, alerts: newAlerts }, now).alerts
      const run = async (fn: string) => await rolledBack(sql, async (tx) => {
        await tx`update budget_definitions set alerts = ${tx.json(newer as any)}, amount = ${newAmount} where id = ${b!.id}`
        const [r] = await tx.unsafe(`select recorded, resolved from ${fn}($1)`, [b!.id])
        const rows = await tx`select threshold::text, basis, actions, resolved_at is null as active,
          case when basis = 'current' then spent::text end as spent from budget_alert_history where budget_id = ${b!.id} order by threshold, basis, actions::text, resolved_at is null`
        return { r, rows }
      })
      const wanted = await run('old_budget_alerts_follow_definition')
      const found = await run('budget_alerts_follow_definition')
      if ((wanted.r as any).resolved > 0) resolvedSome++
      same(t, found, wanted, 'the same crossings recorded and resolved')
    }), { numRuns: 120 })
  t.ok(resolvedSome > 5, `${resolvedSome} runs resolved crossings`)
})

t.test('the carry of live reservations after a window change moves what the version before moved', async (t) => {
  const { sql } = await createTestSql(t)
  await migrate(sql)
  await sql.unsafe(oldFunctions())
  let moved = 0
  await fc.assert(fc.asyncProperty(definition, definition, fc.array(fc.record({ agoMs: fc.integer({ min: 0, max: 60 * DAY }), lease: fc.boolean(), amount: fc.constantFrom('0.1', '1', '2.5') }), { minLength: 1, maxLength: 5 }),
    async (d, changed, holds) => {
      const now = Date.now()
      const c = columns({ ...d, startMs: Math.min(d.startMs, -DAY) }, now)
      const [b] = await sql`insert into budget_definitions ${sql({ ...c, alerts: sql.json([] as any), name: 'b', scope_type: 'team', scope_id: 't', currency: 'USD' } as any)} returning id, root_id`
      let held = 0
      for (const h of holds) {
        const at = new Date(now - h.agoMs)
        const [w] = await sql`select period_start, period_end from budget_window((select d from budget_definitions d where d.id = ${b!.id}), ${at})`
        if (w === undefined) continue
        await sql`insert into budget_status_cache (budget_id, root_id, period_start, period_end, reserved_amount) values (${b!.id}, ${b!.root_id}, ${w.period_start}, ${w.period_end}, ${h.amount})
          on conflict (budget_id, period_start, root_id) do update set reserved_amount = budget_status_cache.reserved_amount + excluded.reserved_amount`
        await sql`insert into budget_reservations (id, budget_id, root_id, period_start, amount, scope_matched, scope_rank, currency, request_id, created_at, expires_at, lease)
          values (${randomUUID()}, ${b!.id}, ${b!.root_id}, ${w.period_start}, ${h.amount}, true, 0, 'USD', 'r', ${at}, now() + interval '1 hour', ${h.lease})`
        held++
      }
      if (held === 0) return
      await sql`insert into budget_usage_records (budget_id, amount, currency, idempotency_key, occurred_at) values (${b!.id}, 1, 'USD', ${`k-${b!.id}`}, now() - interval '2 days')`
      const n = columns({ ...changed, startMs: Math.min(changed.startMs, d.startMs) }, now)
      // both in one transaction, each in a savepoint rolled back: the same now() for both (a window that ends at
      // the test's instant, which the generators favour, would otherwise fall between two transactions)
      const { wanted, found } = await rolledBack(sql, async (tx) => {
        const run = async (fn: string) => {
          try {
            await tx.savepoint(async (sp) => {
              await sp.unsafe(`create or replace trigger budget_definitions_window_changed after update of period, start_date, end_date, recurring, timezone,
                fiscal_year_start_month, period_alignment on budget_definitions for each row execute function ${fn}()`)
              await sp`update budget_definitions set period = ${n.period}, start_date = ${n.start_date}, end_date = ${n.end_date}, recurring = ${n.recurring},
                timezone = ${n.timezone}, fiscal_year_start_month = ${n.fiscal_year_start_month}, period_alignment = ${n.period_alignment} where id = ${b!.id}`
              throw new Rollback({
                reservations: await sp`select amount::text, period_start, lease, created_at from budget_reservations where budget_id = ${b!.id} order by created_at, amount, lease`,
                windows: await sp`select period_start, period_end, reserved_amount::text, current_amount::text, usage_count::int from budget_status_cache where budget_id = ${b!.id} order by period_start`
              })
            })
          } catch (error) {
            if (error instanceof Rollback) return error.value
            throw error
          }
          throw new Error('unreachable')
        }
        return { wanted: await run('old_budget_carry_reservations'), found: await run('budget_carry_reservations') }
      })
      moved++
      same(t, found, wanted, 'the same reservations and windows')
    }), { numRuns: 300 })
  t.ok(moved > 40, `${moved} changes compared`)
})
