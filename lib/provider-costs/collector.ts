// One run of one collector: from where its cursor says (the page a run stopped at, or a new window of days),
// page by page to the window's end. Each page is stored with the cursor move past it (cost-repository.ts), so
// a run that fails stores nothing of the failed page and the next run starts at it.
import type { Logger } from '../kernel/logger.js'
import { bestEffort } from '../kernel/best-effort.js'
import type { ProviderCostRepository, StoreCounts } from './cost-repository.js'
import { fetchReport, ReportFetchError, type FetchPolicy } from './fetch-report.js'
import { RepeatedPageTokenError, type ReportClient, type ReportWindow } from './report-page.js'

export interface CollectorSchedule {
  /** Days before today read again each run, so that a bucket the provider corrects is seen. */
  lookbackDays: number
  /** After a long stop, how far back a run reaches to fill the gap since the last complete run. */
  maxCatchUpDays: number
  /**
   * A run reads at most this many pages (a provider that keeps saying has_more is not followed forever). A
   * window of daily buckets is at most maxCatchUpDays + 1 days: at 31 a page, 3 pages.
   */
  maxPagesPerRun: number
}

export interface CollectOutcome extends StoreCounts {
  source: string
  account: string
  status: 'completed' | 'failed'
  pages: number
  /** The window the run read, days [from, to). */
  from: string
  to: string
  error?: string
}

const DAY_MS = 86_400_000
const midnight = (at: Date): Date => new Date(Math.floor(at.getTime() / DAY_MS) * DAY_MS)

/** The days a new run reads: the last lookbackDays and today, reaching back to the day the last complete run ended on (at most maxCatchUpDays). */
export function nextWindow (now: Date, completedThrough: Date | null, schedule: CollectorSchedule): ReportWindow {
  const today = midnight(now)
  let start = new Date(today.getTime() - schedule.lookbackDays * DAY_MS)
  if (completedThrough !== null) {
    // The last run's final day was partial (its window ended at the next midnight): read it again.
    const resume = new Date(midnight(completedThrough).getTime() - DAY_MS)
    const floor = new Date(today.getTime() - schedule.maxCatchUpDays * DAY_MS)
    if (resume < start) start = resume < floor ? floor : resume
  }
  return { start, end: new Date(today.getTime() + DAY_MS) }
}

export async function collectOnce (client: ReportClient, repository: ProviderCostRepository, options: { schedule: CollectorSchedule, fetch: FetchPolicy, now: () => Date, signal: AbortSignal, log: Logger }): Promise<CollectOutcome> {
  const { source, account } = client
  const cursor = await repository.readCursor(source, account)
  let window: ReportWindow
  let page: string | null
  if (cursor?.nextPage != null) {
    window = cursor.window
    page = cursor.nextPage
  } else {
    window = nextWindow(options.now(), cursor?.completedThrough ?? null, options.schedule)
    page = null
    await repository.startWindow(source, account, window)
  }
  const outcome: CollectOutcome = {
    source, account, status: 'completed', pages: 0, inserted: 0, corrected: 0, unchanged: 0, from: window.start.toISOString().slice(0, 10), to: window.end.toISOString().slice(0, 10)
  }
  // The tokens this run asked for: a page that names one of them as next_page is refused, not followed.
  const asked = new Set<string>()
  try {
    do {
      if (outcome.pages >= options.schedule.maxPagesPerRun) throw new Error(`more than ${options.schedule.maxPagesPerRun} pages in one run; the next run goes on from here`)
      if (page !== null) asked.add(page)
      const text = await fetchReport(client.request(window, page), options.fetch, options.signal)
      const read = client.readPage(text)
      if (read.nextPage !== null && asked.has(read.nextPage)) throw new RepeatedPageTokenError(source, read.nextPage)
      const counts = await repository.storePage(source, account, window, page, read.buckets, read.nextPage, { actor: `collector:${source}`, requestId: null })
      outcome.pages++
      outcome.inserted += counts.inserted
      outcome.corrected += counts.corrected
      outcome.unchanged += counts.unchanged
      page = read.nextPage
    } while (page !== null)
    options.log.info({ ...outcome }, 'provider cost report collected')
  } catch (error) {
    outcome.status = 'failed'
    outcome.error = (error as Error).message
    options.log.warn({ ...outcome, err: error }, 'provider cost collection failed; the next run resumes at the page that failed')
    await bestEffort(options.log, async () => {
      // A page token the provider refuses (a 4xx other than 429: expired, say), or one that leads back to itself,
      // would be asked again forever: the next run starts its window anew instead, which stores nothing twice.
      const refusedToken = error instanceof ReportFetchError && error.status >= 400 && error.status < 500 && error.status !== 429
      if ((refusedToken || error instanceof RepeatedPageTokenError) && page !== null) {
        await repository.startWindow(source, account, window)
      }
      await repository.recordFailure(source, account, outcome.error!)
    }, 'recording a cost collection failure failed', { source, account })
  }
  return outcome
}
