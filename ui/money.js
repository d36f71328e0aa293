// Exact money in the page, as the API sends it: decimal strings, added and compared as BigInt units of
// 10^-10 (the API's scale, numeric(28, 10)). A Number appears only as a chart coordinate, never in a sum.
const DIGITS = 10
const SCALE = 10n ** BigInt(DIGITS)

/** "12.5" as units of 10^-10. */
export function toUnits (text) {
  const match = /^(-?)(\d+)(?:\.(\d{1,10}))?$/.exec(text)
  if (match === null) throw new Error(`not an amount: ${text}`)
  const units = BigInt(match[2]) * SCALE + BigInt((match[3] ?? '').padEnd(DIGITS, '0'))
  return match[1] === '-' ? -units : units
}

/** Units back to a decimal string without trailing zeros. */
export function fromUnits (units) {
  const sign = units < 0n ? '-' : ''
  const size = units < 0n ? -units : units
  const fraction = (size % SCALE).toString().padStart(DIGITS, '0').replace(/0+$/, '')
  return `${sign}${size / SCALE}${fraction === '' ? '' : `.${fraction}`}`
}

/** The share `percent` (a threshold, at most 4 decimals) of an amount, rounded toward zero. */
export function percentOf (units, percent) {
  return units * BigInt(Math.round(percent * 10_000)) / 1_000_000n
}

/** For drawing only: the amount as a chart's y coordinate. */
export function coordinate (units) {
  return Number(units) / Number(SCALE)
}

/**
 * An amount for reading: every digit the API sent, as text. Spend of 0.0000108 reads 0.0000108, never 0, and
 * 0.3007836 never 0.3007. String work only (no Number, which would round past 15-17 digits): leading zeros of
 * the whole part and trailing zeros of the fraction go, and -0 reads as 0. Anything else is shown as sent.
 */
export function display (text) {
  const match = /^(-?)0*(\d+?)(?:\.(\d*?)0*)?$/.exec(text)
  if (match === null) return text
  const [, sign, whole, fraction = ''] = match
  const shown = fraction === '' ? whole : `${whole}.${fraction}`
  return /^[0.]+$/.test(shown) ? shown : `${sign}${shown}`
}
