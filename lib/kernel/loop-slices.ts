// Work on one request that grows with its body (the estimate: serializing, scanning and tokenizing up to
// the body limit) runs in slices, and between two slices the event loop runs whatever else is waiting
// (other requests' I/O, timers, a health check): one request holds the loop for about a slice however
// large its body, never for the whole of its work (the house target: 20 ms). The total work stays what the work
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
export function slices (limits: { ms: number, work: number } = DEFAULT_LIMITS): Slices {
  return new RequestSlices(limits)
}

const DEFAULT_LIMITS = { ms: SLICE_MS, work: SLICE_WORK }

// A class, not an object of closures: every gated call makes one, and its methods are shared.
class RequestSlices implements Slices {
  private started = performance.now()
  private work = 0
  yields = 0
  constructor (private readonly limits: { ms: number, work: number }) {}

  spend (spent: number): void { this.work += spent }

  due (): boolean { return this.work >= this.limits.work || performance.now() - this.started >= this.limits.ms }

  async pause (): Promise<void> {
    if (!this.due()) return
    this.yields++
    await nextTurn()
    this.started = performance.now()
    this.work = 0
  }
}
