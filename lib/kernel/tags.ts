// Tags: key/value pairs a call carries (the x-relay-tags header) and usage records keep (metadata.tags),
// which tag-filtered budgets match on. The one place their shape is checked outside the JSON schemas.
import { InvalidFieldError } from './errors.js'
import { MOST_TAGS, TAG_KEY_PATTERN, TAG_VALUE_PATTERN } from './schemas.js'

export type Tags = Record<string, string>

const KEY = new RegExp(TAG_KEY_PATTERN)
const VALUE = new RegExp(TAG_VALUE_PATTERN)

/** Throws a 400 naming `field` unless `tags` is an object of at most MOST_TAGS well-formed pairs. */
export function checkTags (tags: unknown, field: string): asserts tags is Tags {
  if (typeof tags !== 'object' || tags === null || Array.isArray(tags)) throw new InvalidFieldError(field, 'must be an object of tag values')
  const entries = Object.entries(tags)
  if (entries.length > MOST_TAGS) throw new InvalidFieldError(field, `must have at most ${MOST_TAGS} tags`)
  for (const [key, value] of entries) {
    if (!KEY.test(key) || typeof value !== 'string' || !VALUE.test(value)) {
      throw new InvalidFieldError(field, 'must be key=value pairs of letters, digits and _ . : / @ + - (keys up to 64 characters, values up to 200)')
    }
  }
}

/** Reads `feature=summarize,env=prod`; a key given twice, an empty pair or a bad character is a 400 naming `field`. */
export function parseTagHeader (header: string, field: string): Tags {
  const tags: Tags = Object.create(null) as Tags
  for (const pair of header.split(',')) {
    const [key, value, extra] = pair.trim().split('=')
    if (key === undefined || value === undefined || extra !== undefined || key in tags) {
      throw new InvalidFieldError(field, 'must be key=value pairs separated by commas, each key once (feature=summarize,env=prod)')
    }
    tags[key] = value
  }
  checkTags(tags, field)
  return { ...tags }
}

/** Tags in one canonical order, as a cache key and as JSON for PostgreSQL. */
export function canonicalTags (tags: Tags | undefined): string {
  if (tags === undefined) return '{}'
  return JSON.stringify(Object.fromEntries(Object.entries(tags).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))))
}
