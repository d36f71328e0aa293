// One policy for holding a slice of a shared limit in this process's memory, so calls on a hot line are
// admitted with no round trip: money leases (leases.ts: a slice of a line's room, a reservation row in
// PostgreSQL that settlements draw from) and rate allowances (rate-limits.ts: a slice of a budget's token
// bucket). What they hold and how it goes back differ; when to take a slice, how large, when to top it
// up and when to give it back are the same, and are decided here.

/** A line or budget is hot when its calls come this close together: then a slice is worth taking. */
export const HOT_WITHIN_MS = 100
/** A slice asks for at least this many calls' worth at the current call's need. */
export const SLICE_CALLS = 64
/** Below this many calls' worth a slice is topped up in the background (and a lease takes none smaller). */
export const LOW_WATER_CALLS = 16
/** A slice unused this long is given back. */
export const IDLE_MS = 2000
/** When calls come faster, a slice asks for what they would use in this long (more than SLICE_CALLS)... */
export const SLICE_MS = 200
/** ...up to this many calls' worth. The database caps every slice as well: an eighth of a line's room, or of a bucket. */
export const MOST_SLICE_CALLS = 4096

/** A slice still holds more than twice what its pace needs, a second or more after its last take: the rest goes back. */
export const TRIM_AFTER_MS = 1000

/** How fast a slice's calls came: counted since its last take was sent. */
export interface SlicePace {
  callsSinceTake: number
  /** Date.now() when the last take was sent (or the slice was made). */
  tookAt: number
  /** The calls' worth the last take asked for (0: none yet). */
  lastAsk: number
}

/** The calls SLICE_MS would bring at the pace seen since the last take (at least SLICE_CALLS). */
function callsAtPace (pace: SlicePace, now: number): number {
  // Over at least 20 ms: calls that came at one instant are not a pace
  const elapsed = Math.max(20, now - pace.tookAt)
  return Math.max(SLICE_CALLS, Math.ceil(pace.callsSinceTake * SLICE_MS / elapsed))
}

/**
 * How many calls' worth a take asks for: SLICE_CALLS, or what SLICE_MS of calls at the pace seen since the
 * last take would use, up to MOST_SLICE_CALLS, and at most twice what the last take asked for (a burst of
 * concurrent calls is not a pace until it lasts). A slice sized for 64 calls lasts 20 ms at 3,000 calls a
 * second, less than a take waiting on a busy window row; calls would find it dry and hold one by one.
 */
export function sliceCalls (pace: SlicePace, now: number): number {
  return Math.min(MOST_SLICE_CALLS, Math.max(SLICE_CALLS, 2 * pace.lastAsk), callsAtPace(pace, now))
}

/**
 * How many calls' worth a held slice should keep, or null to keep it whole: once its last take is
 * TRIM_AFTER_MS old, a slice holding more than twice what its pace needs keeps that need, and gives back
 * the rest. A burst sized it; a trickle that keeps it from the idle give-back must not keep it all from
 * the other processes.
 */
export function trimmedCalls (pace: SlicePace, heldCalls: number, now: number): number | null {
  if (now - pace.tookAt < TRIM_AFTER_MS) return null
  const needed = callsAtPace(pace, now)
  return heldCalls > 2 * needed ? needed : null
}

/** Below this many calls' worth a slice that asked for `slice` calls is topped up: a quarter of it, at least LOW_WATER_CALLS. */
export function lowWaterCalls (slice: number): number {
  return Math.max(LOW_WATER_CALLS, Math.floor(slice / 4))
}

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
