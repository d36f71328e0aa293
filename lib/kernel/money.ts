// Exact money: decimal strings at the edges, scaled bigints in between, never a float in arithmetic.
import { InvalidFieldError } from './errors.js'
import { keep } from './kept.js'

/** Digits kept after the decimal point; matches the `numeric(28, 10)` money columns. */
export const MONEY_SCALE = 10
const SCALE_FACTOR = 10n ** BigInt(MONEY_SCALE)
const UNITS_PER_ONE = 10 ** MONEY_SCALE
const MAX_INTEGER_DIGITS = 28 - MONEY_SCALE
// A JSON number survives the trip through a double only up to 15 significant digits.
const MAX_NUMBER_DIGITS = 15
const DECIMAL = /^-?(\d+)(?:\.(\d+))?$/

/** A canonical decimal string: no exponent, no leading or trailing zeros ("25.5", "0.0001", "3"). */
export type Money = string

/**
 * Reads an amount from a request (a decimal string, or a JSON number that was typed as a
 * decimal) into canonical form. Refuses anything that cannot be stored exactly.
 */
export function parseMoney (value: unknown, field: string): Money {
  // An amount already in canonical form (every cost the gate computes, settles and records): itself.
  if (typeof value === 'string' && isCanonical(value)) return value
  let text: string
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new InvalidFieldError(field, 'must be a finite number')
    text = numberToDecimal(value)
    if (significantDigits(text) > MAX_NUMBER_DIGITS) {
      throw new InvalidFieldError(field, `has more than ${MAX_NUMBER_DIGITS} significant digits; send it as a decimal string`)
    }
  } else if (typeof value === 'string') {
    text = value.trim()
  } else {
    throw new InvalidFieldError(field, 'must be a decimal string or a number')
  }
  const match = DECIMAL.exec(text)
  if (match === null) throw new InvalidFieldError(field, 'must be a plain decimal such as "25.50"')
  const [, integer = '', fraction = ''] = match
  if (fraction.replace(/0+$/, '').length > MONEY_SCALE) {
    throw new InvalidFieldError(field, `has more than ${MONEY_SCALE} decimal places`)
  }
  if (integer.replace(/^0+/, '').length > MAX_INTEGER_DIGITS) {
    throw new InvalidFieldError(field, `has more than ${MAX_INTEGER_DIGITS} digits before the decimal point`)
  }
  // Read without keeping the text (toUnits keeps what it reads): a short text trimmed out of a long one would keep the long one alive.
  return fromUnits(parseUnits(text))
}

const CANONICAL_SHAPE = /^-?(?:0|[1-9]\d{0,17})(?:\.\d{0,9}[1-9])?$/

/** A decimal in the form parseMoney answers (fromUnits's): no exponent, no leading or trailing zero, at most 18 digits before the point and 10 after; not "-0". */
function isCanonical (text: string): boolean {
  return text.length <= KEPT_LENGTH && text !== '-0' && CANONICAL_SHAPE.test(text)
}

/** Like parseMoney, and the amount must be greater than zero. */
export function parsePositiveMoney (value: unknown, field: string): Money {
  const money = parseMoney(value, field)
  if (toUnits(money) <= 0n) throw new InvalidFieldError(field, 'must be greater than 0')
  return money
}

// 10^(MONEY_SCALE - digits): what a fraction of `digits` digits is multiplied by to make units.
const FRACTION_SCALE = Array.from({ length: MONEY_SCALE + 1 }, (_, digits) => 10 ** (MONEY_SCALE - digits))
// Digits a double holds exactly as an integer (2^53 has 16).
const EXACT_DIGITS = 15

// The gate reads the same few amounts on every call (a line's limits and spend, a model's estimate): each
// text's units, and each amount's text, are kept once worked out (kept.ts); only short texts are kept (a
// decimal may come padded with zeros).
const KEPT_AMOUNTS = 4096
const KEPT_LENGTH = 48
const unitsOfText = new Map<string, bigint>()
const textOfUnits = new Map<bigint, Money>()

/** The amount in units of 10^-MONEY_SCALE. Input must be a plain decimal (as stored or parsed). */
export function toUnits (decimal: string): bigint {
  if (decimal.length > KEPT_LENGTH) return parseUnits(decimal)
  return unitsOfText.get(decimal) ?? keep(unitsOfText, KEPT_AMOUNTS, decimal, parseUnits(decimal))
}

function parseUnits (decimal: string): bigint {
  const negative = decimal.charCodeAt(0) === 45 // '-'
  const start = negative ? 1 : 0
  const point = decimal.indexOf('.', start)
  const integerEnd = point === -1 ? decimal.length : point
  const fractionEnd = point === -1 ? point : Math.min(decimal.length, point + 1 + MONEY_SCALE)
  let units: bigint
  // The gate reads amounts on every call: short ones of digits only are read through doubles, exact at these
  // lengths (an integer of at most 15 digits, a fraction of at most 10 times a power of ten below 10^10).
  if (integerEnd - start <= EXACT_DIGITS && digitsOnly(decimal, start, integerEnd) && (point === -1 || digitsOnly(decimal, point + 1, decimal.length))) {
    const integer = integerEnd === start ? 0 : Number(decimal.slice(start, integerEnd))
    const fraction = point === -1 || fractionEnd === point + 1 ? 0 : Number(decimal.slice(point + 1, fractionEnd)) * FRACTION_SCALE[fractionEnd - point - 1]!
    const total = integer * UNITS_PER_ONE + fraction
    // Up to 2^53 the units themselves are exact as a double: one BigInt made, not three.
    units = total <= Number.MAX_SAFE_INTEGER ? BigInt(total) : BigInt(integer) * SCALE_FACTOR + BigInt(fraction)
  } else {
    const [integer = '0', fraction = ''] = (negative ? decimal.slice(1) : decimal).split('.')
    units = BigInt(integer) * SCALE_FACTOR + BigInt((fraction + '0'.repeat(MONEY_SCALE)).slice(0, MONEY_SCALE))
  }
  return negative ? -units : units
}

function digitsOnly (text: string, from: number, to: number): boolean {
  for (let index = from; index < to; index++) {
    const code = text.charCodeAt(index)
    if (code < 48 || code > 57) return false
  }
  return true
}

export function fromUnits (units: bigint): Money {
  const kept = textOfUnits.get(units)
  if (kept !== undefined) return kept
  const text = formatUnits(units)
  return text.length > KEPT_LENGTH ? text : keep(textOfUnits, KEPT_AMOUNTS, units, text)
}

function formatUnits (units: bigint): Money {
  const negative = units < 0n
  const magnitude = negative ? -units : units
  const integer = magnitude / SCALE_FACTOR
  const fraction = (magnitude % SCALE_FACTOR).toString().padStart(MONEY_SCALE, '0').replace(/0+$/, '')
  const text = fraction === '' ? integer.toString() : `${integer}.${fraction}`
  return negative ? `-${text}` : text
}

/** Canonical form of a numeric that PostgreSQL returned as text ("25.5000000000" -> "25.5"). */
export function normalizeMoney (decimal: string): Money {
  return fromUnits(toUnits(decimal))
}

export function compareMoney (a: Money, b: Money): -1 | 0 | 1 {
  const difference = toUnits(a) - toUnits(b)
  return difference < 0n ? -1 : difference > 0n ? 1 : 0
}

// String(1e-7) is "1e-7"; expand the exponent so the digits can be counted and stored.
export function numberToDecimal (value: number): string {
  const text = String(value)
  const exponent = /^(-?)(\d)(?:\.(\d+))?e([+-]\d+)$/.exec(text)
  if (exponent === null) return text
  const [, sign = '', head = '', tail = '', power = '0'] = exponent
  const digits = head + tail
  const point = 1 + Number(power)
  if (point <= 0) return `${sign}0.${'0'.repeat(-point)}${digits}`
  if (point >= digits.length) return sign + digits + '0'.repeat(point - digits.length)
  return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`
}

function significantDigits (decimal: string): number {
  return decimal.replace(/[-.]/g, '').replace(/^0+/, '').replace(/0+$/, '').length
}
