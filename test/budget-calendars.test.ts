// Budgets on their own calendars, through the API: a time zone, a fiscal year, calendar or startDate
// alignment; what is refused, and how usage lands in local windows. (The period function itself, at
// every DST edge and against a JavaScript calendar, is test/timezones.test.ts.)
import t from 'tap'
import { PREFIX, budgetRequest, buildApp, snapshotTables, type TestApp } from './fixtures/app.js'

const HOUR = 3_600_000
const DAY = 24 * HOUR

async function windowAt (sql: TestApp['sql'], budgetId: string, at: string): Promise<[string, string]> {
  const [row] = await sql<Array<{ start: Date, end: Date }>>`
    select w.period_start as start, w.period_end as end
    from budget_definitions b cross join lateral budget_window(b, ${at}::timestamptz) w where b.id = ${budgetId}`
  return [row!.start.toISOString(), row!.end.toISOString()]
}

t.test("the issue's example: a monthly budget in America/New_York has its November window from the city's midnight", async (t) => {
  const { admin, sql } = await buildApp(t)
  const dated = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ timezone: 'America/New_York', startDate: '2026-01-01' }) })
  t.equal(dated.statusCode, 201)
  t.match(dated.json(), { timezone: 'America/New_York', periodAlignment: 'calendar', fiscalYearStartMonth: 1, startDate: '2026-01-01T05:00:00.000Z' },
    'a date alone is midnight in the budget\'s zone; naming a zone asks for calendar windows')
  t.same(await windowAt(sql, dated.json().id, '2026-11-29T12:00:00Z'), ['2026-11-01T04:00:00.000Z', '2026-12-01T05:00:00.000Z'],
    'November in New York: from 00:00 EDT on the 1st (the clocks go back at 02:00 that day) to 00:00 EST on December 1st')
  const instant = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeId: 'team-b', timezone: 'America/New_York', startDate: '2026-01-01T00:00:00Z' }) })
  t.same(await windowAt(sql, instant.json().id, '2026-11-29T12:00:00Z'), ['2026-11-01T04:00:00.000Z', '2026-12-01T05:00:00.000Z'],
    'a startDate given as a UTC instant (19:00 on Dec 31st in New York) still gets the calendar months')
})

t.test('defaults: a budget that names no zone keeps UTC windows stepped from its startDate', async (t) => {
  const { admin, sql } = await buildApp(t)
  const plain = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ startDate: '2024-01-15T12:00:00Z' }) })).json()
  t.match(plain, { timezone: 'UTC', periodAlignment: 'start', fiscalYearStartMonth: 1 })
  t.same(await windowAt(sql, plain.id, '2024-03-01T00:00:00Z'), ['2024-02-15T12:00:00.000Z', '2024-03-15T12:00:00.000Z'])
  const custom = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeId: 'c', period: 'custom', timezone: 'Asia/Tokyo', startDate: '2024-01-01', endDate: '2024-01-11' }) })).json()
  t.match(custom, { periodAlignment: 'start', startDate: '2023-12-31T15:00:00.000Z', endDate: '2024-01-10T15:00:00.000Z' }, 'a custom period is a length of time; its dates are still read in its zone')
  const stepped = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeId: 's', period: 'daily', timezone: 'Europe/Berlin', periodAlignment: 'start', startDate: '2024-03-01T01:30:00Z' }) })).json()
  t.equal(stepped.periodAlignment, 'start')
  t.same(await windowAt(sql, stepped.id, '2024-03-31T12:00:00Z'), ['2024-03-31T01:30:00.000Z', '2024-04-01T00:30:00.000Z'],
    'stepped from 02:30 Berlin time: on the day the clocks go forward, 02:30 CET does not exist and is read as 03:30 CEST; the day after, 02:30 CEST')
})

t.test('fiscal quarters and years follow fiscalYearStartMonth on the local calendar', async (t) => {
  const { admin, sql } = await buildApp(t)
  const quarter = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ period: 'quarterly', timezone: 'Europe/London', fiscalYearStartMonth: 4, startDate: '2024-04-01' }) })).json()
  t.match(quarter, { periodAlignment: 'calendar', fiscalYearStartMonth: 4, startDate: '2024-03-31T23:00:00.000Z' })
  t.same(await windowAt(sql, quarter.id, '2026-11-29T12:00:00Z'), ['2026-09-30T23:00:00.000Z', '2027-01-01T00:00:00.000Z'], 'Q3 of the fiscal year: October (BST) to January (GMT)')
  const year = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeId: 'y', period: 'annual', timezone: 'Asia/Kolkata', fiscalYearStartMonth: 4, startDate: '2024-06-15' }) })).json()
  t.same(await windowAt(sql, year.id, '2026-11-29T12:00:00Z'), ['2026-03-31T18:30:00.000Z', '2027-03-31T18:30:00.000Z'], 'India\'s fiscal year, April 1st at midnight IST')
  t.same(await windowAt(sql, year.id, '2024-06-15T00:00:00Z'), ['2024-03-31T18:30:00.000Z', '2025-03-31T18:30:00.000Z'], 'the first window is the fiscal year that holds startDate')
})

t.test('status shows the zone, and usage lands in the local day it happened in', async (t) => {
  const { admin } = await buildApp(t)
  // Tokyo has no daylight-saving time: its day starts at 15:00 UTC, always.
  const budget = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ period: 'daily', timezone: 'Asia/Tokyo', startDate: '2024-01-01', amount: '100' }) })).json()
  const localMidnight = Math.floor((Date.now() + 9 * HOUR) / DAY) * DAY - 9 * HOUR
  const status = (await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/status` })).json()
  t.match(status, { timezone: 'Asia/Tokyo', periodStart: new Date(localMidnight).toISOString(), periodEnd: new Date(localMidnight + DAY).toISOString(), state: 'active' })
  const record = async (at: number, amount: string) => await admin({
    method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: { amount, currency: 'USD', source: 'test', occurredAt: new Date(at).toISOString() }
  })
  t.equal((await record(localMidnight - 1, '7')).statusCode, 201, 'a millisecond before Tokyo midnight: yesterday')
  t.equal((await record(localMidnight, '3')).statusCode, 201, 'Tokyo midnight: today')
  const after = (await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/status` })).json()
  t.equal(after.currentAmount, '3', 'only today\'s usage counts toward today\'s window')
})

t.test('a child may keep another zone than its parent, and its usage counts in both calendars', async (t) => {
  const { admin, sql } = await buildApp(t)
  const parent = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeType: 'organization', scopeId: 'acme', timezone: 'America/New_York', startDate: '2024-01-01', amount: '1000' }) })).json()
  const child = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ parentId: parent.id, period: 'daily', timezone: 'Asia/Tokyo', startDate: '2024-01-01', amount: '10' }) })
  t.equal(child.statusCode, 201)
  // 2024-03-01T02:00Z is Feb 29th in New York and March 1st in Tokyo.
  const recorded = await admin({ method: 'POST', url: `${PREFIX}/${child.json().id}/usage`, body: { amount: '4', currency: 'USD', source: 'test', occurredAt: '2024-03-01T02:00:00Z' } })
  t.equal(recorded.statusCode, 201)
  const rows = await sql<Array<{ budget: string, start: Date }>>`
    select case when budget_id = ${parent.id} then 'parent' else 'child' end as budget, period_start as start
    from budget_status_cache where current_amount = 4 order by 1`
  t.same(rows.map((row) => [row.budget, row.start.toISOString()]), [['child', '2024-02-29T15:00:00.000Z'], ['parent', '2024-02-01T05:00:00.000Z']],
    'the child\'s Tokyo March 1st, the parent\'s New York February')
})

t.test('refused with a 400 that names the field, and nothing changes', async (t) => {
  const { admin, sql } = await buildApp(t)
  const budget = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ timezone: 'Europe/Paris' }) })).json()
  const before = await snapshotTables(sql)
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['an unknown zone', { timezone: 'Mars/Olympus_Mons' }, 'timezone'],
    ['a zone in the wrong case', { timezone: 'europe/paris' }, 'timezone'],
    ['a POSIX rule, not a zone name', { timezone: 'EST5EDT,M3.2.0,M11.1.0' }, 'timezone'],
    ['an offset, not a zone', { timezone: '+05:00' }, 'timezone'],
    ['an empty zone', { timezone: '' }, 'timezone'],
    ['a zone name AT TIME ZONE would read as a fixed abbreviation (CET without summer time)', { timezone: 'CET' }, 'timezone'],
    ['the server\'s own zone', { timezone: 'localtime' }, 'timezone'],
    ['a tz database file that is not a place', { timezone: 'posixrules' }, 'timezone'],
    ['a fiscal month 13', { fiscalYearStartMonth: 13 }, 'fiscalYearStartMonth'],
    ['a fiscal month that is not a whole number', { fiscalYearStartMonth: 4.5 }, 'fiscalYearStartMonth'],
    ['a fiscal year on windows stepped from startDate', { period: 'quarterly', fiscalYearStartMonth: 4, periodAlignment: 'start' }, 'fiscalYearStartMonth'],
    ['a custom period on the calendar', { period: 'custom', endDate: '2024-02-01', periodAlignment: 'calendar' }, 'periodAlignment'],
    ['an unknown alignment', { periodAlignment: 'lunar' }, 'periodAlignment'],
    ['a date that does not exist', { timezone: 'Asia/Tokyo', startDate: '2024-02-30' }, 'startDate'],
    ['local midnight before 1970 in UTC', { timezone: 'Asia/Tokyo', startDate: '1970-01-01' }, 'startDate']
  ]
  for (const [name, fields, field] of cases) {
    const created = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeId: 'new', ...fields }) })
    t.equal(created.statusCode, 400, `create: ${name}`)
    t.match(created.json().message ?? '', field, `create: ${name}: the message names ${field}`)
    if (!['period', 'endDate'].some((key) => key in fields)) {
      const updated = await admin({ method: 'PUT', url: `${PREFIX}/${budget.id}`, body: fields })
      t.equal(updated.statusCode, 400, `update: ${name}`)
    }
  }
  t.same(await snapshotTables(sql), before, 'no table changed')
})

t.test('an update moves the windows to the new zone', async (t) => {
  const { admin, sql } = await buildApp(t)
  const budget = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ period: 'daily', timezone: 'UTC', startDate: '2024-01-01' }) })).json()
  t.same(await windowAt(sql, budget.id, '2024-07-01T12:00:00Z'), ['2024-07-01T00:00:00.000Z', '2024-07-02T00:00:00.000Z'])
  const moved = await admin({ method: 'PUT', url: `${PREFIX}/${budget.id}`, body: { timezone: 'America/Los_Angeles' } })
  t.equal(moved.statusCode, 200)
  t.match(moved.json(), { timezone: 'America/Los_Angeles', periodAlignment: 'calendar', startDate: '2024-01-01T00:00:00.000Z' }, 'the stored startDate instant stays')
  t.same(await windowAt(sql, budget.id, '2024-07-01T12:00:00Z'), ['2024-07-01T07:00:00.000Z', '2024-07-02T07:00:00.000Z'], 'Los Angeles days, in PDT')
  const custom = await admin({ method: 'PUT', url: `${PREFIX}/${budget.id}`, body: { period: 'custom', endDate: '2024-01-08' } })
  t.match(custom.json(), { period: 'custom', periodAlignment: 'start', endDate: '2024-01-08T08:00:00.000Z' }, 'becoming custom leaves the calendar; the date is Los Angeles midnight')
})
