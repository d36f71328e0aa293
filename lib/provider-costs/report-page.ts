// What a provider's cost report client hands the collector: one page of buckets and where the next one is.
import type { CostBucket, CostSource } from './cost-bucket.js'

export interface ReportPage {
  buckets: CostBucket[]
  /** The provider's token for the page after this one; null when this was the last. */
  nextPage: string | null
}

/** The days a run asks for: [start, end), both at UTC midnight. */
export interface ReportWindow {
  start: Date
  end: Date
}

/** A page of a report that does not read as the provider documents it: the run stops, and nothing of the page is stored. */
export class MalformedReportError extends Error {
  constructor (source: CostSource, problem: string) {
    super(`${source} cost report page is malformed: ${problem}`)
    this.name = 'MalformedReportError'
  }
}

/**
 * A page whose next_page is a token this run asked for already: followed, it would be asked for again and
 * again, and a run resuming at it would do the same. The collector's next run starts the window anew.
 */
export class RepeatedPageTokenError extends MalformedReportError {
  constructor (source: CostSource, token: string) {
    super(source, `next_page repeats the token '${token.slice(0, 64)}' this run already asked for`)
    this.name = 'RepeatedPageTokenError'
  }
}

/** One provider's report, as the collector reads it a page at a time. */
export interface ReportClient {
  source: Exclude<CostSource, 'csv'>
  account: string
  /** The request for one page (null: the window's first); `fetchReport` sends it. */
  request: (window: ReportWindow, page: string | null) => { url: string, headers: Record<string, string> }
  /** Reads a page's text; throws MalformedReportError when it is not the documented shape. */
  readPage: (text: string) => ReportPage
}
