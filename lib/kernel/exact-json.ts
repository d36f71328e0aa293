// JSON read without a float in sight: every number comes back as the text it was written as, so money in a
// provider's report (OpenAI's amount.value is a JSON number) can be made an exact decimal. JSON.parse would
// round 0.12345678901234567 to the nearest double; Node 20 has no reviver that sees a number's source.

/** A JSON number, as written in the text (its grammar checked): `text` is never rounded. */
export class JsonNumber {
  constructor (readonly text: string) {}
}

/** What parseExactJson gives: JSON.parse's values, with JsonNumber for every number. */
export type ExactJson = null | boolean | string | JsonNumber | ExactJson[] | { [key: string]: ExactJson }

/** Deeper than this is no report we read: refused, so a hostile page cannot exhaust the stack. */
const MAX_DEPTH = 64
const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y
const STRING = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y
const SPACE = /[ \t\n\r]*/y

/** Parses one JSON text; throws a SyntaxError where JSON.parse would, and past MAX_DEPTH levels. */
export function parseExactJson (text: string): ExactJson {
  let at = 0
  const fail = (what: string): never => { throw new SyntaxError(`${what} at position ${at} of the JSON text`) }
  const skip = (): void => { SPACE.lastIndex = at; SPACE.test(text); at = SPACE.lastIndex }
  const match = (pattern: RegExp): string | null => {
    pattern.lastIndex = at
    const found = pattern.exec(text)
    if (found === null) return null
    at = pattern.lastIndex
    return found[0]
  }
  const string = (): string => {
    const literal = match(STRING) ?? fail('an unterminated or malformed string')
    return JSON.parse(literal) as string
  }
  const value = (depth: number): ExactJson => {
    if (depth > MAX_DEPTH) fail(`nesting deeper than ${MAX_DEPTH}`)
    skip()
    const char = text[at]
    if (char === '"') return string()
    if (char === '{') {
      at++
      const object: Record<string, ExactJson> = {}
      skip()
      if (text[at] === '}') { at++; return object }
      for (;;) {
        skip()
        if (text[at] !== '"') fail('a key expected')
        const key = string()
        skip()
        if (text[at] !== ':') fail('a colon expected')
        at++
        // An own data property, "__proto__" too (never the prototype), as JSON.parse makes it.
        Object.defineProperty(object, key, { value: value(depth + 1), writable: true, enumerable: true, configurable: true })
        skip()
        if (text[at] === ',') { at++; continue }
        if (text[at] === '}') { at++; return object }
        fail('a comma or a closing brace expected')
      }
    }
    if (char === '[') {
      at++
      const array: ExactJson[] = []
      skip()
      if (text[at] === ']') { at++; return array }
      for (;;) {
        array.push(value(depth + 1))
        skip()
        if (text[at] === ',') { at++; continue }
        if (text[at] === ']') { at++; return array }
        fail('a comma or a closing bracket expected')
      }
    }
    for (const [word, literal] of [['true', true], ['false', false], ['null', null]] as const) {
      if (text.startsWith(word, at)) { at += word.length; return literal }
    }
    const number = match(NUMBER)
    if (number !== null) return new JsonNumber(number)
    return fail('a value expected')
  }
  if (text.charCodeAt(0) === 0xFEFF) at = 1
  const result = value(0)
  skip()
  if (at !== text.length) fail('text after the value')
  return result
}

/**
 * A decimal number's text (a JSON number: sign, digits, point, exponent) as a canonical plain decimal: no
 * exponent, no leading or trailing zeros ("1e-7" is "0.0000001", "1.50E+2" is "150", "-0" is "0"). Null
 * when it has more than `maxDigits` digits before or after the point once written out (1e400 would be a
 * 401-digit string: not an amount, and not something to build).
 */
export function exactDecimal (text: string, maxDigits = 40): string | null {
  const parts = /^(-?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/.exec(text)
  if (parts === null) return null
  const [, sign = '', integer = '', fraction = '', exponentText = '0'] = parts
  if (exponentText.replace(/^[+-]?0*/, '').length > 6) return (integer + fraction).replace(/0/g, '') === '' ? '0' : null
  const exponent = Number(exponentText)
  let digits = (integer + fraction).replace(/^0+/, '')
  // The value is digits × 10^scale (digits an integer with no leading zeros).
  let scale = exponent - fraction.length
  if (digits === '') return '0'
  const trailing = /0*$/.exec(digits)![0].length
  digits = digits.slice(0, digits.length - trailing)
  scale += trailing
  const integerDigits = digits.length + scale
  const fractionDigits = -scale
  if (integerDigits > maxDigits || fractionDigits > maxDigits) return null
  let plain: string
  if (scale >= 0) plain = digits + '0'.repeat(scale)
  else if (integerDigits > 0) plain = `${digits.slice(0, integerDigits)}.${digits.slice(integerDigits)}`
  else plain = `0.${'0'.repeat(-integerDigits)}${digits}`
  return sign + plain
}

/** `decimal` (canonical, from exactDecimal) divided by 10^places, exactly: cents to dollars is places 2. */
export function shiftDecimal (decimal: string, places: number): string {
  const negative = decimal.startsWith('-')
  const [integer = '0', fraction = ''] = (negative ? decimal.slice(1) : decimal).split('.')
  const shifted = exactDecimal(`${integer}.${fraction === '' ? '0' : fraction}e-${places}`, Number.MAX_SAFE_INTEGER)!
  return negative && shifted !== '0' ? `-${shifted}` : shifted
}
