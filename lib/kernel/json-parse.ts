// A request body's JSON parsed in slices, so that parsing a large body never holds the event loop for
// long: JSON.parse of a 1 MiB body of many short keys took 32 ms in one stretch, before any handler ran.
// What it gives is what Fastify's default JSON parser gives (secure-json-parse's parse, prototype
// poisoning refused): the same value, or a throw where that throws (test/json-parse.test.ts checks both
// against it on arbitrary values and texts). Work stays native where it can: a large object or array is
// walked member by member, but its members are parsed by JSON.parse in groups of up to GROUP characters,
// and only a member larger than that is walked in turn.
import { endOfString } from './json-limits.js'
import { slices as newSlices, type Slices } from './loop-slices.js'

/** Texts up to this many characters are parsed by one JSON.parse (the costliest shape, many short keys, about 4 ms). */
export const NATIVE_LIMIT = 131_072
/** The most characters of members parsed by one JSON.parse in a large object or array. */
export const GROUP = 16_384

// secure-json-parse's own tests (the version Fastify 5 uses): a key that is "__proto__" or "constructor"
// in any spelling JSON allows, followed by its colon. When neither is in a text, nothing can be poisoned.
const SUSPECT_PROTO = /"(?:_|\\u005[Ff])(?:_|\\u005[Ff])(?:p|\\u0070)(?:r|\\u0072)(?:o|\\u006[Ff])(?:t|\\u0074)(?:o|\\u006[Ff])(?:_|\\u005[Ff])(?:_|\\u005[Ff])"\s*:/
const SUSPECT_CONSTRUCTOR = /"(?:c|\\u0063)(?:o|\\u006[Ff])(?:n|\\u006[Ee])(?:s|\\u0073)(?:t|\\u0074)(?:r|\\u0072)(?:u|\\u0075)(?:c|\\u0063)(?:t|\\u0074)(?:o|\\u006[Ff])(?:r|\\u0072)"\s*:/
const suspect = (text: string): boolean => SUSPECT_PROTO.test(text) || SUSPECT_CONSTRUCTOR.test(text)

const POISONED = 'Object contains forbidden prototype property'
const hasOwn = (value: object, key: string): boolean => Object.prototype.hasOwnProperty.call(value, key)

/**
 * secure-json-parse's filter with both actions 'error' (Fastify's defaults), breadth first as it is:
 * throws when an object owns a "__proto__" key, or a "constructor" object that owns a "prototype" key.
 */
async function refusePoisoned (root: unknown, slices: Slices): Promise<void> {
  let next: object[] = root !== null && typeof root === 'object' ? [root] : []
  while (next.length > 0) {
    const nodes = next
    next = []
    for (const node of nodes) {
      if (hasOwn(node, '__proto__')) throw new SyntaxError(POISONED)
      const constructor = hasOwn(node, 'constructor') ? (node as { constructor: unknown }).constructor : null
      if (constructor !== null && typeof constructor === 'object' && hasOwn(constructor, 'prototype')) throw new SyntaxError(POISONED)
      for (const key in node) {
        const value = (node as Record<string, unknown>)[key]
        if (value !== null && typeof value === 'object') next.push(value)
      }
      if (slices.due()) await slices.pause()
    }
  }
}

const isSpace = (code: number): boolean => code === 32 || code === 10 || code === 13 || code === 9
function skipSpace (text: string, at: number): number {
  while (at < text.length && isSpace(text.charCodeAt(at))) at++
  return at
}
const malformed = (): SyntaxError => new SyntaxError('Unexpected token in JSON')

const QUOTE = 34
const COMMA = 44
const COLON = 58
const OPEN_ARRAY = 91
const CLOSE_ARRAY = 93
const OPEN_OBJECT = 123
const CLOSE_OBJECT = 125

/** An object or array being walked member by member: its value so far, and where it goes in its parent. */
interface Open { value: Record<string, unknown> | unknown[], array: boolean, key: string, members: number, afterMember: boolean }

/** Sets `key` as JSON.parse does (an own data property, "__proto__" too: it must be found and refused, not set the prototype). */
function setMember (target: Record<string, unknown>, key: string, value: unknown): void {
  if (key === '__proto__') Object.defineProperty(target, key, { value, writable: true, enumerable: true, configurable: true })
  else target[key] = value
}

/**
 * Parses one JSON text as Fastify's default parser does (a leading byte order mark dropped, JSON.parse,
 * prototype poisoning refused with a SyntaxError), giving the loop a turn between `slices`. `limits`:
 * NATIVE_LIMIT and GROUP unless told (tests make them small, so that every shape is walked).
 */
export async function parseJsonInSlices (text: string, slices: Slices = newSlices(), limits = { native: NATIVE_LIMIT, group: GROUP }): Promise<unknown> {
  const { native, group } = limits
  if (text.charCodeAt(0) === 0xFEFF) text = text.slice(1)
  const start = skipSpace(text, 0)
  const root = text.charCodeAt(start)
  // Small texts, and a text that is one string or number (one native pass however long), at once.
  if (text.length <= native || (root !== OPEN_OBJECT && root !== OPEN_ARRAY)) {
    const value: unknown = JSON.parse(text)
    if (value !== null && typeof value === 'object' && suspect(text)) await refusePoisoned(value, slices)
    return value
  }

  // Where the value that starts at `at` ends, or null for an object or array that does not close within
  // GROUP characters (it is walked). The last scan that gave up is remembered (`closes`, up to
  // `scanned`), so that the members it saw are not scanned again: nesting costs one scan, not one a level.
  let closes = new Map<number, number>()
  let scanned = -1
  const endOfValue = (at: number): number | null => {
    const code = text.charCodeAt(at)
    if (code === QUOTE) {
      const end = endOfString(text, at)
      if (end === text.length) throw malformed()
      return end + 1
    }
    if (code !== OPEN_OBJECT && code !== OPEN_ARRAY) {
      let end = at
      while (end < text.length) {
        const next = text.charCodeAt(end)
        if (next === COMMA || next === CLOSE_ARRAY || next === CLOSE_OBJECT || isSpace(next)) break
        end++
      }
      if (end === at) throw malformed()
      return end
    }
    if (at < scanned) return closes.get(at) ?? null
    const opened: number[] = []
    const limit = Math.min(text.length, at + group)
    const seen = new Map<number, number>()
    for (let i = at; i < limit; i++) {
      const inner = text.charCodeAt(i)
      if (inner === QUOTE) i = endOfString(text, i)
      else if (inner === OPEN_OBJECT || inner === OPEN_ARRAY) opened.push(i)
      else if (inner === CLOSE_OBJECT || inner === CLOSE_ARRAY) {
        const from = opened.pop()
        if (from === undefined) throw malformed()
        if (opened.length === 0) return i + 1
        seen.set(from, i + 1)
      }
    }
    closes = seen
    scanned = limit
    return null
  }

  const stack: Open[] = []
  let result: unknown
  let poisonable = false
  const open = (at: number, key: string): number => {
    stack.push({ value: text.charCodeAt(at) === OPEN_ARRAY ? [] : {}, array: text.charCodeAt(at) === OPEN_ARRAY, key, members: 0, afterMember: false })
    return skipSpace(text, at + 1)
  }
  let at = open(start, '')
  while (stack.length > 0) {
    const current = stack[stack.length - 1]!
    const code = text.charCodeAt(at)
    if (code === (current.array ? CLOSE_ARRAY : CLOSE_OBJECT) && (current.members === 0 || current.afterMember)) {
      stack.pop()
      const parent = stack[stack.length - 1]
      if (parent === undefined) result = current.value
      else {
        if (parent.array) (parent.value as unknown[]).push(current.value)
        else setMember(parent.value as Record<string, unknown>, current.key, current.value)
        parent.afterMember = true
      }
      at = skipSpace(text, at + 1)
      // Closing half a million nested levels is a loop of its own: it gets its turns too.
      if (slices.due()) await slices.pause()
      continue
    }
    if (current.afterMember) {
      if (code !== COMMA) throw malformed()
      at = skipSpace(text, at + 1)
      current.afterMember = false
    }
    // A group of members, each ending within GROUP characters, up to GROUP characters in all, parsed at
    // once; it ends early at a member that does not end within GROUP (opened and walked).
    const groupStart = at
    let groupEnd = -1
    let large: { at: number, key: string } | null = null
    for (;;) {
      let valueAt = at
      let keyEnd = at
      if (!current.array) {
        if (text.charCodeAt(at) !== QUOTE) throw malformed()
        keyEnd = endOfString(text, at) + 1
        if (keyEnd > text.length) throw malformed()
        const colon = skipSpace(text, keyEnd)
        if (text.charCodeAt(colon) !== COLON) throw malformed()
        valueAt = skipSpace(text, colon + 1)
      }
      if (valueAt >= text.length) throw malformed()
      const end = endOfValue(valueAt)
      if (end === null) {
        large = { at: valueAt, key: current.array ? '' : JSON.parse(text.slice(at, keyEnd)) as string }
        break
      }
      groupEnd = end
      const next = skipSpace(text, end)
      if (text.charCodeAt(next) === COMMA && groupEnd - groupStart < group) {
        at = skipSpace(text, next + 1)
        continue
      }
      at = next
      break
    }
    if (groupEnd !== -1) {
      const members = text.slice(groupStart, groupEnd)
      if (current.array) {
        const values = JSON.parse(`[${members}]`) as unknown[]
        for (const value of values) (current.value as unknown[]).push(value)
      } else {
        const values = JSON.parse(`{${members}}`) as Record<string, unknown>
        for (const key of Object.keys(values)) setMember(current.value as Record<string, unknown>, key, values[key])
      }
      poisonable ||= suspect(members)
      current.members++
      current.afterMember = true
    }
    if (large !== null) {
      poisonable ||= large.key === '__proto__' || large.key === 'constructor'
      current.members++
      current.afterMember = false
      at = open(large.at, large.key)
    }
    if (slices.due()) await slices.pause()
  }
  if (at !== text.length) throw malformed()
  if (poisonable) await refusePoisoned(result, slices)
  return result
}
