// One policy for holding a slice of a shared limit in this process's memory, so calls on a hot line are
// admitted with no round trip: money leases (leases.ts: a slice of a line's room, a reservation row in
// PostgreSQL that settlements draw from) and rate allowances (rate-limits.ts: a slice of a budget's token
// bucket). What they hold and how it goes back differ; when to take a slice, how large, when to top it
// up and when to give it back are the same, and are decided here.

/** A line or budget is hot when its calls come this close together: then a slice is worth taking. */
export const HOT_WITHIN_MS = 100
/** A slice asks for this many calls' worth at the current call's need. */
export const SLICE_CALLS = 64
/** Below this many calls' worth a slice is topped up in the background (and a lease takes none smaller). */
export const LOW_WATER_CALLS = 16
/** A slice unused this long is given back. */
export const IDLE_MS = 2000

/** Whether a call at `now` after one at `lastUse` (undefined: none yet) makes its line or budget hot. */
export function isHot (lastUse: number | undefined, now: number): boolean {
  return lastUse !== undefined && now - lastUse <= HOT_WITHIN_MS
}

/**
 * The timer that gives idle slices back (and keeps the others alive): started by the first use, so a
 * plugin whose gate takes nothing runs none; unref'd, so it never keeps a process up; stopped at close.
 */
export function idleTimer (tick: () => void, everyMs: number): { start: () => void, stop: () => void } {
  let timer: NodeJS.Timeout | null = null
  return {
    start () {
      if (timer !== null) return
      timer = setInterval(tick, everyMs)
      timer.unref()
    },
    stop () {
      if (timer !== null) clearInterval(timer)
    }
  }
}
