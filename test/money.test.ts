import t from 'tap'
import { compareMoney, fromUnits, normalizeMoney, parseMoney, parsePositiveMoney, toUnits } from '../lib/kernel/money.js'

t.test('reads decimal strings and JSON numbers into canonical decimals', async (t) => {
  const cases: Array<[unknown, string]> = [
    ['25.50', '25.5'], [25.5, '25.5'], ['0.0001', '0.0001'], [0.0001, '0.0001'], [1e-7, '0.0000001'],
    [1e17, '100000000000000000'], ['007.100', '7.1'], [10000, '10000'], ['0', '0'], ['-3.25', '-3.25'],
    ['0.0000000001', '0.0000000001'], ['123456789012345678.9', '123456789012345678.9'], [' 12 ', '12']
  ]
  for (const [input, expected] of cases) t.equal(parseMoney(input, 'amount'), expected, `${String(input)} -> ${expected}`)
})

t.test('refuses what cannot be stored exactly, naming the field', async (t) => {
  const cases: unknown[] = [
    NaN, Infinity, -Infinity, 'abc', '1e5', '', '1.2.3', '0x10', true, null, {}, [],
    '0.00000000001', // 11 decimal places
    '1234567890123456789', // 19 digits before the point
    0.1 + 0.2, // 0.30000000000000004: 17 significant digits, not what anyone typed
    1234567890123456, 1e21
  ]
  for (const input of cases) {
    t.throws(() => parseMoney(input, 'amount'), { code: 'BUDGET_ERR_VALIDATION', field: 'amount' }, `refuses ${String(input)}`)
  }
})

t.test('a positive amount must be above zero', async (t) => {
  t.equal(parsePositiveMoney('0.0000000001', 'amount'), '0.0000000001')
  for (const input of [0, '0', '0.000', -1, '-0.5']) {
    t.throws(() => parsePositiveMoney(input, 'amount'), { code: 'BUDGET_ERR_VALIDATION', field: 'amount', message: /greater than 0/ })
  }
})

t.test('units round-trip and add up exactly', async (t) => {
  let total = 0n
  for (let i = 0; i < 10_000; i++) total += toUnits('0.0001')
  t.equal(fromUnits(total), '1', '10,000 x 0.0001 is exactly 1')
  t.equal(fromUnits(toUnits('-12.0500')), '-12.05')
  t.equal(normalizeMoney('25.5000000000'), '25.5')
  t.equal(normalizeMoney('0.0000000000'), '0')
  t.equal(compareMoney('10', '9.9999999999'), 1)
  t.equal(compareMoney('0.1', '0.10'), 0)
  t.equal(compareMoney('-1', '0'), -1)
})
