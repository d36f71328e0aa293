// PostgreSQL text and jsonb hold neither NUL characters nor unpaired UTF-16 surrogates (which JSON can
// carry as "\ud800"), and a value nested thousands deep overflows the stack of whatever serializes it
// (JSON.stringify in the driver); such input is refused with a 400 that names the field, never left to
// fail as a 500.
import { InvalidFieldError } from './errors.js'
import { slices as newSlices, type Slices } from './loop-slices.js'

// With the u flag a surrogate range matches only a surrogate that is not half of a pair.
const UNSTORABLE = /[\0\ud800-\udfff]/u
const UNSTORABLE_ALL = /[\0\ud800-\udfff]/gu
// with the u flag a whole surrogate pair is one code point, so only a half matches
const UNPAIRED_SURROGATE = /[\ud800-\udfff]/gu
/** Deeper than any budget field, metadata or chat request (tool schemas included) that anyone sends. */
export const MAX_NESTING = 64

/**
 * Whether a parsed JSON value nests more than `most` levels; iterative, so any depth is safe to ask
 * about. Two flat stacks and no per-node arrays: a 1 MB body of 20,000 messages is walked in a few ms.
 */
export function deeperThan (value: unknown, most: number): boolean {
  return walkForDepthOrKey(value, most, null) === 'deep'
}

/**
 * One walk for both refusals of a request body: 'deep' when it nests more than `most` levels, 'key'
 * when a key named `key` is anywhere in it (its path is then found by pathOfKey, on that rare path
 * only), else null.
 */
export function walkForDepthOrKey (value: unknown, most: number, key: string | null): 'deep' | 'key' | null {
  const values: unknown[] = [value]
  const depths: number[] = [0]
  while (values.length > 0) {
    const current = values.pop()
    const depth = depths.pop()!
    if (typeof current !== 'object' || current === null) continue
    if (depth >= most) return 'deep'
    if (Array.isArray(current)) {
      for (let i = 0; i < current.length; i++) {
        const child: unknown = current[i]
        if (typeof child === 'object' && child !== null) { values.push(child); depths.push(depth + 1) }
      }
    } else {
      for (const name in current) {
        if (name === key) return 'key'
        const child: unknown = (current as Record<string, unknown>)[name]
        if (typeof child === 'object' && child !== null) { values.push(child); depths.push(depth + 1) }
      }
    }
  }
  return null
}

/** How many characters a scan over a JSON text goes before it asks whether its slice is spent. */
export const SCAN_STRIDE = 65_536

/** A plain array or object, which JSON.stringify writes from its own keys (no toJSON, no class of its own). */
function isPlainContainer (value: unknown): value is Record<string, unknown> | unknown[] {
  if (typeof value !== 'object' || value === null || typeof (value as { toJSON?: unknown }).toJSON === 'function') return false
  const prototype = Object.getPrototypeOf(value)
  return Array.isArray(value) ? prototype === Array.prototype : prototype === Object.prototype || prototype === null
}

/**
 * The most children of an array or object that JSON.stringify writes at once when none of them is an
 * object: a larger one is written child by child too (a flat object of 35,000 keys takes 10 ms at once).
 */
const FLAT_CHILDREN = 64

/**
 * JSON.stringify(value) when it has at most FLAT_CHILDREN children and none is an object, else null. It
 * stops at the first child past that, but a large object's keys are enumerated first all the same (a
 * for-in on 35,000 keys takes some ms): called on children, never twice on the same value.
 */
function flatText (value: Record<string, unknown> | unknown[]): string | null {
  if (Array.isArray(value)) {
    if (value.length > FLAT_CHILDREN) return null
    for (const child of value) if (typeof child === 'object' && child !== null) return null
    return JSON.stringify(value)
  }
  let children = 0
  for (const key in value) {
    const child = value[key]
    if (++children > FLAT_CHILDREN || (typeof child === 'object' && child !== null)) return null
  }
  return JSON.stringify(value)
}

/**
 * JSON.stringify's text of `child` as the value of `key` in its holder: a toJSON method is called with
 * its key, as JSON.stringify calls it (standing alone it would get ""), so it is written inside a
 * holder of its own and the holder's text is cut off.
 */
function childText (key: string, child: unknown): string | undefined {
  if (typeof child !== 'object' || child === null || typeof (child as { toJSON?: unknown }).toJSON !== 'function') return JSON.stringify(child)
  const held = JSON.stringify({ [key]: child })
  return held === '{}' ? undefined : held.slice(JSON.stringify(key).length + 2, -1)
}

/**
 * JSON.stringify(value), the same text, written child by child so that the loop gets a turn between
 * children when `slices` is spent: one field of a body up to the body limit (a response_format of
 * 35,000 properties) takes 10 ms and more in one native call. A small flat array or object (at most
 * FLAT_CHILDREN children, no object among them), and anything that is not a plain one, is written by
 * JSON.stringify at once; so is whatever lies deeper than MAX_NESTING (the estimate refuses it), so
 * that a cycle or a value nested deeper than the stack throws what JSON.stringify throws (a turn of the
 * loop would otherwise reset the stack, and a cycle be written for ever).
 */
export async function jsonTextInSlices (value: unknown, slices: Slices, depth = 1): Promise<string | undefined> {
  if (depth > MAX_NESTING || !isPlainContainer(value)) return JSON.stringify(value)
  const parts: string[] = []
  const array = Array.isArray(value)
  // An array's elements by index (a hole is written null), an object's own keys in their order: JSON.stringify's.
  // The keys are enumerated once (a large object's take some ms), and nothing enumerates them again.
  const keys = array ? Array.from({ length: value.length }, (_, index) => String(index)) : Object.keys(value)
  if (keys.length <= FLAT_CHILDREN && keys.every((key) => { const child = (value as Record<string, unknown>)[key]; return typeof child !== 'object' || child === null })) return JSON.stringify(value)
  for (const key of keys) {
    const child = (value as Record<string, unknown>)[key]
    let text = isPlainContainer(child) ? flatText(child) : childText(key, child)
    if (text === null) {
      // Not flat: written child by child, after a turn if flatText's look at it spent the slice.
      if (slices.due()) await slices.pause()
      text = await jsonTextInSlices(child, slices, depth + 1)
    }
    if (array) parts.push(text ?? 'null')
    else if (text !== undefined) parts.push(`${JSON.stringify(key)}:${text}`)
    if (slices.due()) await slices.pause()
  }
  return array ? `[${parts.join(',')}]` : `{${parts.join(',')}}`
}

/**
 * Where the JSON string that opens at `at` (a `"`) in a JSON text closes: the next `"` not escaped (not
 * after an odd run of backslashes), found by indexOf, so that a long string costs a native search and
 * not a loop over its characters. The text's length when it never closes.
 */
export function endOfString (text: string, at: number): number {
  for (let end = text.indexOf('"', at + 1); end !== -1; end = text.indexOf('"', end + 1)) {
    let backslashes = 0
    while (text.charCodeAt(end - 1 - backslashes) === 92) backslashes++
    if (backslashes % 2 === 0) return end
  }
  return text.length
}

/**
 * What a value's JSON text (JSON.stringify's) shows of both refusals: how deep its arrays and objects
 * nest (the value itself at 1, so that a field's text answers for the field nested at depth 1 in its
 * body), and whether a key named `key` is anywhere in it. One pass over characters: on a body of many
 * small objects (a wide response_format, 35,000 keys) it takes a tenth of walking the parsed value with
 * for-in, and the text is what the estimate serializes anyway. A key is a string that follows `{` or
 * `,` and precedes `:`; inside a string JSON.stringify writes every `"` as `\"`, so `,"key":` cannot be
 * string content. In `slices` (loop-slices.ts): the loop gets a turn between them.
 */
export async function jsonTextShape (text: string, key: string | null, slices: Slices = newSlices()): Promise<{ depth: number, hasKey: boolean }> {
  let depth = 0
  let deepest = 0
  for (let i = 0, next = SCAN_STRIDE; i < text.length; i++) {
    const code = text.charCodeAt(i)
    if (code === 34) i = endOfString(text, i)
    else if (code === 123 || code === 91) {
      if (++depth > deepest) deepest = depth
    } else if (code === 125 || code === 93) depth--
    // A text up to the body limit takes some ms to scan: the loop gets a turn when the slice is spent.
    if (i >= next) {
      next = i + SCAN_STRIDE
      if (slices.due()) await slices.pause()
    }
  }
  const hasKey = key !== null && (text.includes(`{${JSON.stringify(key)}:`) || text.includes(`,${JSON.stringify(key)}:`))
  return { depth: deepest, hasKey }
}

/**
 * The path (dot-separated) of the first key named `key` anywhere in a parsed JSON value, or null; the
 * same iterative walk, each node noting only its parent's index and its own key, so that a path is
 * built only for the key found.
 */
export function pathOfKey (value: unknown, key: string): string | null {
  const values: unknown[] = [value]
  const at: number[] = [-1]
  const parents: number[] = []
  const keys: string[] = []
  while (values.length > 0) {
    const current = values.pop()
    const self = at.pop()!
    if (typeof current !== 'object' || current === null) continue
    const visit = (child: unknown, name: string): string | null => {
      if (name === key) return [...pathTo(self), name].join('.')
      if (typeof child === 'object' && child !== null) { parents.push(self); keys.push(name); values.push(child); at.push(parents.length - 1) }
      return null
    }
    if (Array.isArray(current)) {
      for (let i = 0; i < current.length; i++) {
        const child: unknown = current[i]
        if (typeof child === 'object' && child !== null) { parents.push(self); keys.push(String(i)); values.push(child); at.push(parents.length - 1) }
      }
    } else {
      for (const name in current) {
        const found = visit((current as Record<string, unknown>)[name], name)
        if (found !== null) return found
      }
    }
  }
  return null
  function pathTo (node: number): string[] {
    const path: string[] = []
    for (let i = node; i >= 0; i = parents[i]!) path.unshift(keys[i]!)
    return path
  }
}

export function isStorableText (text: string): boolean {
  return !UNSTORABLE.test(text)
}

/** `text` with each NUL and unpaired surrogate replaced by U+FFFD: for text the plugin stores but did not get from a caller (an upstream's error). */
export function storableText (text: string): string {
  return text.replace(UNSTORABLE_ALL, '\ufffd')
}

/**
 * `text` with each unpaired surrogate replaced by U+FFFD, as the driver writes a text parameter's (UTF-8 has no
 * half characters): for text sent inside a JSON document instead, whose parser refuses an escaped half.
 */
export function wellFormedText (text: string): string {
  return text.replace(UNPAIRED_SURROGATE, '\ufffd')
}

/**
 * A string a library caller gives that the plugin stores as it is (an actor, a request id): refused with a 400
 * naming `field` unless it is a string, within `length` characters when given, that PostgreSQL can store.
 */
export function checkStorableString (value: unknown, field: string, length?: { min: number, max: number }): string {
  if (typeof value !== 'string') throw new InvalidFieldError(field, length === undefined ? 'must be a string' : `must be a string of ${length.min} to ${length.max} characters`)
  if (length !== undefined && (value.length < length.min || value.length > length.max)) throw new InvalidFieldError(field, `must be a string of ${length.min} to ${length.max} characters`)
  checkStorable(value, field)
  return value
}

/**
 * Walks a parsed request part (keys and values) and throws for the first string that cannot be stored.
 * Iterative: a body nested thousands deep is the schema's to refuse, not a reason to overflow the stack.
 */
export function checkStorable (value: unknown, path: string): void {
  const pending: Array<[unknown, string, number]> = [[value, path, 0]]
  for (let next = pending.pop(); next !== undefined; next = pending.pop()) {
    const [current, where, depth] = next
    if (typeof current === 'string') {
      if (!isStorableText(current)) throw new InvalidFieldError(where || 'body', 'contains a NUL character or an unpaired surrogate, which cannot be stored')
      continue
    }
    if (typeof current !== 'object' || current === null) continue
    if (depth >= MAX_NESTING) throw new InvalidFieldError(where || 'body', `is nested more than ${MAX_NESTING} levels deep`)
    for (const [key, child] of Object.entries(current)) {
      if (!isStorableText(key)) throw new InvalidFieldError(where || 'body', `has a key with a NUL character or an unpaired surrogate: ${JSON.stringify(key)}`)
      pending.push([child, where === '' ? key : `${where}.${key}`, depth + 1])
    }
  }
}
