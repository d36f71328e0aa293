import t from 'tap'
import { parseTimestamp } from '../lib/timestamps.js'

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
    '2024-01-01T10:00:00', '01/02/2024', 'tomorrow', '', '1969-12-31', 20240101, null, new Date('nope')]) {
    t.throws(() => parseTimestamp(input, 'endDate'), { code: 'BUDGET_ERR_VALIDATION', field: 'endDate' }, `refuses ${String(input)}`)
  }
})
