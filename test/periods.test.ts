// budget_period_window (sql/functions/periods.sql) is the one place periods are computed; it is immutable SQL, so these
// tests call it on PostgreSQL itself: every period kind, leap years, month ends, millisecond edges.
import t from 'tap'
import { migrate } from '../lib/kernel/database/migrate.js'
import { createTestSql } from './fixtures/database.js'

interface Window { start: string, end: string }
type Period = 'daily' | 'weekly' | 'monthly' | 'quarterly' | 'annual' | 'custom'

const { sql } = await createTestSql(t)
await migrate(sql)

async function windowAt (period: Period, start: string, at: string, { end = null as string | null, recurring = true } = {}): Promise<Window | null> {
  const [row] = await sql<Array<{ start: Date, end: Date }>>`
    select period_start as start, period_end as end
    from budget_period_window(${period}, ${start}::timestamptz, ${end}::timestamptz, ${recurring}, ${at}::timestamptz, 'UTC', 1, 'start')`
  return row === undefined ? null : { start: row.start.toISOString(), end: row.end.toISOString() }
}

const iso = (text: string) => new Date(text).toISOString()

t.test('daily and weekly windows, to the millisecond', async (t) => {
  const cases: Array<[Period, string, string, string, string]> = [
    ['daily', '2024-01-01T00:00:00Z', '2024-01-01T00:00:00.000Z', '2024-01-01T00:00:00Z', '2024-01-02T00:00:00Z'],
    ['daily', '2024-01-01T00:00:00Z', '2024-01-01T23:59:59.999Z', '2024-01-01T00:00:00Z', '2024-01-02T00:00:00Z'],
    ['daily', '2024-01-01T00:00:00Z', '2024-01-02T00:00:00.000Z', '2024-01-02T00:00:00Z', '2024-01-03T00:00:00Z'],
    ['daily', '2024-01-01T10:30:00Z', '2024-03-01T10:29:59.999Z', '2024-02-29T10:30:00Z', '2024-03-01T10:30:00Z'],
    ['daily', '2023-12-31T00:00:00Z', '2024-12-31T12:00:00Z', '2024-12-31T00:00:00Z', '2025-01-01T00:00:00Z'],
    ['weekly', '2024-01-01T00:00:00Z', '2024-01-07T23:59:59.999Z', '2024-01-01T00:00:00Z', '2024-01-08T00:00:00Z'],
    ['weekly', '2024-01-01T00:00:00Z', '2024-01-08T00:00:00.000Z', '2024-01-08T00:00:00Z', '2024-01-15T00:00:00Z'],
    ['weekly', '2024-02-26T00:00:00Z', '2024-03-04T00:00:00Z', '2024-03-04T00:00:00Z', '2024-03-11T00:00:00Z']
  ]
  for (const [period, anchor, at, start, end] of cases) {
    t.same(await windowAt(period, anchor, at), { start: iso(start), end: iso(end) }, `${period} from ${anchor} at ${at}`)
  }
})

t.test('monthly windows follow the anchor day, clamped to short months, and return to it', async (t) => {
  const cases: Array<[string, string, string, string]> = [
    ['2024-01-31T00:00:00Z', '2024-02-15T00:00:00Z', '2024-01-31T00:00:00Z', '2024-02-29T00:00:00Z'],
    ['2024-01-31T00:00:00Z', '2024-02-28T23:59:59.999Z', '2024-01-31T00:00:00Z', '2024-02-29T00:00:00Z'],
    ['2024-01-31T00:00:00Z', '2024-02-29T00:00:00Z', '2024-02-29T00:00:00Z', '2024-03-31T00:00:00Z'],
    ['2024-01-31T00:00:00Z', '2024-03-30T23:59:59.999Z', '2024-02-29T00:00:00Z', '2024-03-31T00:00:00Z'],
    ['2024-01-31T00:00:00Z', '2024-03-31T00:00:00Z', '2024-03-31T00:00:00Z', '2024-04-30T00:00:00Z'],
    ['2024-01-31T00:00:00Z', '2024-05-01T00:00:00Z', '2024-04-30T00:00:00Z', '2024-05-31T00:00:00Z'],
    ['2023-01-31T00:00:00Z', '2023-02-28T00:00:00Z', '2023-02-28T00:00:00Z', '2023-03-31T00:00:00Z'],
    ['2023-01-31T00:00:00Z', '2023-02-27T23:59:59.999Z', '2023-01-31T00:00:00Z', '2023-02-28T00:00:00Z'],
    ['2024-01-01T00:00:00Z', '2024-12-31T23:59:59.999Z', '2024-12-01T00:00:00Z', '2025-01-01T00:00:00Z'],
    ['2024-01-15T12:00:00Z', '2024-02-15T11:59:59.999Z', '2024-01-15T12:00:00Z', '2024-02-15T12:00:00Z'],
    ['2024-01-15T12:00:00Z', '2024-02-15T12:00:00Z', '2024-02-15T12:00:00Z', '2024-03-15T12:00:00Z'],
    ['2024-03-30T00:00:00Z', '2025-02-28T00:00:00Z', '2025-02-28T00:00:00Z', '2025-03-30T00:00:00Z']
  ]
  for (const [anchor, at, start, end] of cases) {
    t.same(await windowAt('monthly', anchor, at), { start: iso(start), end: iso(end) }, `monthly from ${anchor} at ${at}`)
  }
})

t.test('quarterly and annual windows, leap days included', async (t) => {
  const cases: Array<[Period, string, string, string, string]> = [
    ['quarterly', '2024-01-01T00:00:00Z', '2024-03-31T23:59:59.999Z', '2024-01-01T00:00:00Z', '2024-04-01T00:00:00Z'],
    ['quarterly', '2024-01-01T00:00:00Z', '2024-04-01T00:00:00Z', '2024-04-01T00:00:00Z', '2024-07-01T00:00:00Z'],
    ['quarterly', '2023-11-30T00:00:00Z', '2024-01-10T00:00:00Z', '2023-11-30T00:00:00Z', '2024-02-29T00:00:00Z'],
    ['quarterly', '2023-11-30T00:00:00Z', '2024-03-01T00:00:00Z', '2024-02-29T00:00:00Z', '2024-05-30T00:00:00Z'],
    ['quarterly', '2024-11-30T00:00:00Z', '2025-02-28T00:00:00Z', '2025-02-28T00:00:00Z', '2025-05-30T00:00:00Z'],
    ['annual', '2024-02-29T00:00:00Z', '2025-02-27T23:59:59.999Z', '2024-02-29T00:00:00Z', '2025-02-28T00:00:00Z'],
    ['annual', '2024-02-29T00:00:00Z', '2025-02-28T00:00:00Z', '2025-02-28T00:00:00Z', '2026-02-28T00:00:00Z'],
    ['annual', '2024-02-29T00:00:00Z', '2028-02-29T00:00:00Z', '2028-02-29T00:00:00Z', '2029-02-28T00:00:00Z'],
    ['annual', '2024-02-29T00:00:00Z', '2028-02-28T23:59:59.999Z', '2027-02-28T00:00:00Z', '2028-02-29T00:00:00Z'],
    ['annual', '2024-01-01T00:00:00Z', '2024-12-31T23:59:59.999Z', '2024-01-01T00:00:00Z', '2025-01-01T00:00:00Z']
  ]
  for (const [period, anchor, at, start, end] of cases) {
    t.same(await windowAt(period, anchor, at), { start: iso(start), end: iso(end) }, `${period} from ${anchor} at ${at}`)
  }
})

t.test('custom windows: one window, or repeats of its length when recurring', async (t) => {
  const start = '2024-03-10T12:00:00Z'
  const end = '2024-03-20T12:00:00Z'
  t.same(await windowAt('custom', start, '2024-03-10T12:00:00Z', { end, recurring: false }), { start: iso(start), end: iso(end) })
  t.same(await windowAt('custom', start, '2024-03-20T11:59:59.999Z', { end, recurring: false }), { start: iso(start), end: iso(end) })
  t.equal(await windowAt('custom', start, '2024-03-20T12:00:00Z', { end, recurring: false }), null, 'ends at its end date')
  t.same(await windowAt('custom', start, '2024-03-20T12:00:00Z', { end }), { start: iso(end), end: iso('2024-03-30T12:00:00Z') }, 'recurring: the next ten days')
  t.same(await windowAt('custom', start, '2024-04-15T00:00:00Z', { end }), { start: iso('2024-04-09T12:00:00Z'), end: iso('2024-04-19T12:00:00Z') })
})

t.test('no window before the start, after a non-recurring budget\'s period, or after the end date', async (t) => {
  t.equal(await windowAt('monthly', '2024-01-01T00:00:00Z', '2023-12-31T23:59:59.999Z'), null, 'a millisecond before the start')
  t.same(await windowAt('monthly', '2024-01-01T00:00:00Z', '2024-01-31T23:59:59.999Z', { recurring: false }), { start: iso('2024-01-01'), end: iso('2024-02-01') })
  t.equal(await windowAt('monthly', '2024-01-01T00:00:00Z', '2024-02-01T00:00:00Z', { recurring: false }), null, 'a non-recurring budget ends with its period')
  const end = '2024-03-15T00:00:00Z'
  t.same(await windowAt('monthly', '2024-01-01T00:00:00Z', '2024-03-14T23:59:59.999Z', { end }), { start: iso('2024-03-01'), end: iso(end) }, 'the last window stops at the end date')
  t.equal(await windowAt('monthly', '2024-01-01T00:00:00Z', end, { end }), null, 'nothing from the end date on')
})

// An independent oracle: calendar arithmetic in JavaScript, for many anchors and instants at once.
function addMonths (anchor: Date, months: number): Date {
  const year = anchor.getUTCFullYear()
  const month = anchor.getUTCMonth() + months
  const lastDay = new Date(Date.UTC(year, month + 1, 0)).getUTCDate()
  const result = new Date(anchor)
  result.setUTCFullYear(year, month, Math.min(anchor.getUTCDate(), lastDay))
  return result
}

function oracle (period: Period, anchor: Date, at: Date): Window {
  const step = (n: number) => {
    switch (period) {
      case 'daily': return new Date(anchor.getTime() + n * 86_400_000)
      case 'weekly': return new Date(anchor.getTime() + n * 7 * 86_400_000)
      case 'monthly': return addMonths(anchor, n)
      case 'quarterly': return addMonths(anchor, 3 * n)
      default: return addMonths(anchor, 12 * n)
    }
  }
  let n = 0
  while (step(n + 1) <= at) n++
  return { start: step(n).toISOString(), end: step(n + 1).toISOString() }
}

t.test('agrees with calendar arithmetic on 2,000 random anchors and instants', async (t) => {
  let seed = 42
  const random = () => { seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31; return seed / 2 ** 31 }
  const periods: Period[] = ['daily', 'weekly', 'monthly', 'quarterly', 'annual']
  const cases = Array.from({ length: 2000 }, (_, i) => {
    const period = periods[i % periods.length]!
    // Anchors on month ends and leap days often, at odd times of day, over 2019-2030.
    const day = random() < 0.5 ? [28, 29, 30, 31][Math.floor(random() * 4)]! : 1 + Math.floor(random() * 28)
    const anchor = new Date(Date.UTC(2019 + Math.floor(random() * 4), Math.floor(random() * 12), day, Math.floor(random() * 24), 0, 0, Math.floor(random() * 1000)))
    const span = { daily: 40, weekly: 200, monthly: 800, quarterly: 2000, annual: 3000 }[period as Exclude<Period, 'custom'>]
    const at = new Date(anchor.getTime() + Math.floor(random() * span * 86_400_000))
    return { period, anchor, at }
  })
  const rows = await sql<Array<{ i: number, start: Date, end: Date }>>`
    select c.i, w.period_start as start, w.period_end as end
    from unnest(${sql.array(cases.map((c) => c.period))}::text[], ${sql.array(cases.map((c) => c.anchor.toISOString()))}::timestamptz[],
                ${sql.array(cases.map((c) => c.at.toISOString()))}::timestamptz[]) with ordinality as c(period, anchor, at, i)
    cross join lateral budget_period_window(c.period, c.anchor, null, true, c.at, 'UTC', 1, 'start') w
    order by c.i`
  t.equal(rows.length, cases.length, 'every instant after its anchor has a window')
  let mismatches = 0
  for (const row of rows) {
    const c = cases[row.i - 1]!
    const expected = oracle(c.period, c.anchor, c.at)
    if (row.start.toISOString() !== expected.start || row.end.toISOString() !== expected.end) {
      mismatches++
      if (mismatches < 5) t.fail(`${c.period} from ${c.anchor.toISOString()} at ${c.at.toISOString()}: ${row.start.toISOString()}..${row.end.toISOString()}, expected ${expected.start}..${expected.end}`)
    }
  }
  t.equal(mismatches, 0, 'no window differs from the oracle')
})
