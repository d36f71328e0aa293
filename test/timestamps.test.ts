import t from 'tap'
import { parseTimestamp } from '../lib/kernel/timestamps.js'

t.test('reads dates as midnight UTC and date-times with their zone', async (t) => {
  t.equal(parseTimestamp('2024-01-01', 'startDate').toISOString(), '2024-01-01T00:00:00.000Z')
  t.equal(parseTimestamp('2024-02-29', 'startDate').toISOString(), '2024-02-29T00:00:00.000Z')
  t.equal(parseTimestamp('2024-01-01T10:30:00Z', 'startDate').toISOString(), '2024-01-01T10:30:00.000Z')
  t.equal(parseTimestamp('2024-01-01T10:30:00.123+02:00', 'startDate').toISOString(), '2024-01-01T08:30:00.123Z')
  t.equal(parseTimestamp('2024-01-01T10:30Z', 'startDate').toISOString(), '2024-01-01T10:30:00.000Z')
  const date = new Date('2024-03-01T00:00:00Z')
  t.equal(parseTimestamp(date, 'startDate'), date)
})

t.test('refuses days that do not exist, local times and other shapes, naming the field', async (t) => {
  for (const input of ['2023-02-29', '2024-13-01', '2024-04-31', '2024-01-01T24:00:00Z', '2024-01-01T10:60:00Z',
    '2024-01-01T10:00:00', '01/02/2024', 'tomorrow', '', '1969-12-31', 20240101, null, new Date('nope'),
    // offsets no zone has, and instants past 9999 once the offset is applied (they used to reach PostgreSQL and answer 500)
    '2024-01-01T00:00:00+99:00', '2024-01-01T00:00:00+14:30', '2024-01-01T00:00:00-15:00', '2024-01-01T00:00:00-13:00', '2024-01-01T00:00:00-12:30', '2024-01-01T00:00:00+05:60',
    '9999-12-31T23:59:59-14:00', '9999-12-31T23:00:00-01:00', new Date(Date.UTC(10000, 0, 1))]) {
    t.throws(() => parseTimestamp(input, 'endDate'), { code: 'BUDGET_ERR_VALIDATION', field: 'endDate' }, `refuses ${String(input)}`)
  }
})

t.test('the extremes that remain are real instants with four-digit years', async (t) => {
  t.equal(parseTimestamp('2024-01-01T00:00:00+14:00', 'at').toISOString(), '2023-12-31T10:00:00.000Z')
  t.equal(parseTimestamp('2024-01-01T00:00:00-12:00', 'at').toISOString(), '2024-01-01T12:00:00.000Z')
  t.equal(parseTimestamp('9999-12-31T23:59:59Z', 'at').toISOString(), '9999-12-31T23:59:59.000Z')
  t.equal(parseTimestamp('1970-01-01T00:00:00+00:00', 'at').toISOString(), '1970-01-01T00:00:00.000Z')
})
