// Reading a provider's report page field by field, each field checked against what its reference documents;
// the first field that is not is the page's problem (MalformedReportError names it).
import { JsonNumber, parseExactJson, type ExactJson } from '../kernel/exact-json.js'
import { bucketKey, dimensionProblem, type CostBucket, type CostSource, type DIMENSION_LIMITS } from './cost-bucket.js'
import { MalformedReportError } from './report-page.js'

type JsonObject = { [key: string]: ExactJson }

/** The checks for one page of one source: each throws MalformedReportError naming `where`. */
export function pageReader (source: Exclude<CostSource, 'csv'>) {
  const malformed = (where: string, problem: string): never => { throw new MalformedReportError(source, `${where} ${problem}`) }
  const isObject = (value: ExactJson | undefined): value is JsonObject => typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof JsonNumber)
  return {
    parse (text: string): JsonObject {
      let page: ExactJson
      try {
        page = parseExactJson(text)
      } catch (error) {
        return malformed('the body', `is not JSON (${(error as Error).message})`)
      }
      return isObject(page) ? page : malformed('the body', 'is not an object')
    },
    object (value: ExactJson | undefined, where: string): JsonObject {
      return isObject(value) ? value : malformed(where, 'is not an object')
    },
    array (value: ExactJson | undefined, where: string): ExactJson[] {
      return Array.isArray(value) ? value : malformed(where, 'is not an array')
    },
    boolean (value: ExactJson | undefined, where: string): boolean {
      return typeof value === 'boolean' ? value : malformed(where, 'is not a boolean')
    },
    string (value: ExactJson | undefined, where: string): string {
      return typeof value === 'string' ? value : malformed(where, 'is not a string')
    },
    number (value: ExactJson | undefined, where: string): string {
      return value instanceof JsonNumber ? value.text : malformed(where, 'is not a number')
    },
    /** A string, or '' for null or absent (a dimension the report leaves out). */
    dimension (value: ExactJson | undefined, where: string, name: keyof typeof DIMENSION_LIMITS): string {
      if (value === null || value === undefined) return ''
      if (typeof value !== 'string') return malformed(where, 'is neither a string nor null')
      const problem = dimensionProblem(name, value)
      return problem === null ? value : malformed(where, problem)
    },
    /** The next page's token: a string when has_more, and ignored otherwise. */
    nextPage (page: JsonObject): string | null {
      const hasMore = this.boolean(page.has_more, 'has_more')
      if (!hasMore) return null
      const token = page.next_page
      if (typeof token !== 'string' || token === '' || token.length > 4096 || !/^[\x21-\x7e]+$/.test(token)) {
        return malformed('next_page', 'is not a page token, yet has_more is true')
      }
      return token
    },
    /** Refuses a page that gives one bucket twice: two amounts for one key are not a report we can trust. */
    unique (buckets: CostBucket[]): CostBucket[] {
      const seen = new Set<string>()
      for (const [index, bucket] of buckets.entries()) {
        const key = bucketKey(bucket)
        if (seen.has(key)) malformed(`result ${index}`, `repeats the bucket of ${bucket.date} ${bucket.project} ${bucket.lineItem}`)
        seen.add(key)
      }
      return buckets
    },
    malformed
  }
}
