import t from 'tap'
import fc from 'fast-check'
import { compareMoney, fromUnits, normalizeMoney, numberToDecimal, parseMoney, parsePositiveMoney, toUnits } from '../lib/kernel/money.js'

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

t.test('each refusal says why', async (t) => {
  const refusal = (input: unknown): string => { try { parseMoney(input, 'amount'); return 'accepted' } catch (error) { return (error as Error).message } }
  t.equal(refusal(NaN), "Invalid 'amount': must be a finite number")
  t.equal(refusal(true), "Invalid 'amount': must be a decimal string or a number")
  t.equal(refusal('1e5'), "Invalid 'amount': must be a plain decimal such as \"25.50\"")
  t.equal(refusal('0.00000000001'), "Invalid 'amount': has more than 10 decimal places")
  t.equal(refusal('1234567890123456789'), "Invalid 'amount': has more than 18 digits before the decimal point")
  t.equal(refusal(0.1 + 0.2), "Invalid 'amount': has more than 15 significant digits; send it as a decimal string")
  t.equal(refusal(1e21), "Invalid 'amount': has more than 18 digits before the decimal point", 'a number past 1e21 is written with an exponent, and read whole')
  t.equal(refusal(1.2345678901e-7), "Invalid 'amount': has more than 10 decimal places", 'zeros after the point are places, not significant digits')
  t.equal(refusal(-0.5), 'accepted', 'parseMoney itself takes any sign')
})

t.test('the edges of a plain decimal', async (t) => {
  const cases: Array<[unknown, string]> = [
    [123456789012.345, '123456789012.345'], // 15 significant digits: the most a JSON number keeps
    [-1e-7, '-0.0000001'],
    ['1.00000000000000', '1'], // trailing zeros are no decimal places
    ['000000000000000000001', '1'], ['0012.5', '12.5'], // nor are leading zeros digits
    ['12.34', '12.34'], ['-0', '0'], ['10', '10'], ['0.5', '0.5']
  ]
  for (const [input, expected] of cases) t.equal(parseMoney(input, 'amount'), expected, `${String(input)} -> ${expected}`)
  for (const input of ['.5', '5.', 'x1', '1x', '1 2', '+1', '--1', '1.-2']) {
    t.throws(() => parseMoney(input, 'amount'), { code: 'BUDGET_ERR_VALIDATION', message: /plain decimal/ }, `refuses ${input}`)
  }
})

t.test('units, both ways', async (t) => {
  const cases: Array<[string, bigint]> = [
    ['0', 0n], ['1', 10_000_000_000n], ['1.5', 15_000_000_000n], ['0.0000000001', 1n], ['-0.5', -5_000_000_000n],
    ['-12', -120_000_000_000n], ['123456789012345678.9999999999', 1_234_567_890_123_456_789_999_999_999n]
  ]
  for (const [decimal, units] of cases) {
    t.equal(toUnits(decimal), units, `${decimal} is ${units} units`)
    t.equal(fromUnits(units), decimal, `${units} units are ${decimal}`)
  }
  t.equal(toUnits('2.50000000009'), 25_000_000_000n, 'digits past the tenth place are dropped (what is stored or parsed has none)')
  t.equal(fromUnits(-1n), '-0.0000000001')
  t.equal(fromUnits(10_000_000_010n), '1.000000001', 'zeros inside the fraction are kept')
  t.equal(compareMoney('2', '10'), -1, 'compared as numbers, not as text')
  t.equal(compareMoney('-0.0000000001', '0'), -1)
  t.equal(compareMoney('1', '1.0000000000'), 0)
})

t.test('a number as the decimal it is, exponents expanded', async (t) => {
  const cases: Array<[number, string]> = [
    [25.5, '25.5'], [1e-7, '0.0000001'], [1.25e-7, '0.000000125'], [-2.5e-8, '-0.000000025'], [1e21, '1000000000000000000000'],
    [1.5e22, '15000000000000000000000'], [-1e21, '-1000000000000000000000'], [0.000001, '0.000001'], [12, '12']
  ]
  for (const [value, expected] of cases) t.equal(numberToDecimal(value), expected, `${String(value)} -> ${expected}`)
})

// toUnits reads short amounts through doubles (exact at those lengths) and the rest through BigInt of the
// digits: both paths must agree with plain digit arithmetic on every plain decimal, at every length.
t.test('toUnits agrees with the digits on any plain decimal, short or long, and fromUnits undoes it', async (t) => {
  const SCALE = 10n ** 10n
  const reference = (decimal: string): bigint => {
    const negative = decimal.startsWith('-')
    const [integer = '', fraction = ''] = (negative ? decimal.slice(1) : decimal).split('.')
    const units = BigInt(integer === '' ? '0' : integer) * SCALE + BigInt((fraction + '0000000000').slice(0, 10))
    return negative ? -units : units
  }
  const digits = (min: number, max: number) => fc.array(fc.constantFrom(...'0123456789'), { minLength: min, maxLength: max }).map((chars) => chars.join(''))
  const decimal = fc.tuple(fc.boolean(), digits(1, 19), fc.option(digits(0, 12), { nil: undefined }))
    .map(([negative, integer, fraction]) => `${negative ? '-' : ''}${integer}${fraction === undefined ? '' : `.${fraction}`}`)
  fc.assert(fc.property(decimal, (text) => toUnits(text) === reference(text)), { numRuns: 20_000 })
  fc.assert(fc.property(fc.bigInt({ min: -(10n ** 28n), max: 10n ** 28n }), (units) => toUnits(fromUnits(units)) === units), { numRuns: 20_000 })
  // The edges of the double path: 2^53 units and the 15-digit integer part.
  for (const text of ['900719.9254740991', '900719.9254740992', '900720', '999999999999999', '1000000000000000', '999999999999999.9999999999', '0.0000000001', '-900719.9254740993'])
    t.equal(toUnits(text), reference(text), text)
})

t.test('a text already canonical is answered as itself, and every text as the full reading answers it', async (t) => {
  // parseMoney answers a canonical text at once; a space in front takes the full reading (trim, checks, units):
  // both must agree on every string, canonical or not, or both refuse.
  const answer = (value: string): string => { try { return parseMoney(value, 'amount') } catch (error) { return `refused: ${(error as Error).message}` } }
  const edges = ['-0', '0', '-0.0', '0.0', '1.', '.5', '-', '', '00', '01', '1e5', '-0.1', '0.10', '123456789012345678', '1234567890123456789',
    '0.1234567890', '0.12345678901', '0.0000000001', '-999999999999999999.9999999999', '１２', '+1', '1_000', '1 ', '\u00a01']
  for (const value of edges) t.equal(answer(value), answer(` ${value}`), JSON.stringify(value))
  fc.assert(fc.property(fc.oneof(fc.stringMatching(/^-?\d{0,20}(\.\d{0,12})?$/), fc.string()), (value) => answer(value) === answer(` ${value}`)), { numRuns: 20_000 })
})
