// Work on one request that grows with its body (the estimate: serializing, scanning and tokenizing up to
// the body limit) runs in slices, and between two slices the event loop runs whatever else is waiting
// (other requests' I/O, timers, a health check): one request holds the loop for about a slice however
// large its body, never for the whole of its work (issue 19, item 8). The total work stays what the work
// budget allows (tokens.ts MAX_TOKENIZED_WORK); slicing only spreads it over turns of the loop.
import { performance } from 'node:perf_hooks'

/**
 * A slice ends after SLICE_MS of the clock or SLICE_WORK units of counted work (tokens.ts' units, about
 * 0.1 us each nominally), whichever comes first. The clock bounds what the units do not count (a native
 * JSON.stringify, a machine slower than the units assume); the units make a request that spends much of
 * its budget yield whatever the clock says, so that it yields the same on any machine.
 */
export const SLICE_MS = 4
export const SLICE_WORK = 32_768

/** The slices of one request's work: `spend` counts work, `pause` gives the loop a turn when the slice is spent. */
export interface Slices {
  spend: (work: number) => void
  /** Whether the current slice is spent (by its work or its time). */
  due: () => boolean
  /** Yields to the event loop (setImmediate: after pending I/O) when the slice is spent, and starts the next. */
  pause: () => Promise<void>
  /** How many times this work has yielded so far. */
  readonly yields: number
}

const nextTurn = async (): Promise<void> => { await new Promise<void>((resolve) => setImmediate(resolve)) }

/** A request's slices, of SLICE_MS and SLICE_WORK unless told (tests split finer or not at all). */
export function slices (limits: { ms: number, work: number } = { ms: SLICE_MS, work: SLICE_WORK }): Slices {
  let started = performance.now()
  let work = 0
  let yields = 0
  const due = (): boolean => work >= limits.work || performance.now() - started >= limits.ms
  return {
    spend: (spent) => { work += spent },
    due,
    pause: async () => {
      if (!due()) return
      yields++
      await nextTurn()
      started = performance.now()
      work = 0
    },
    get yields () { return yields }
  }
}
