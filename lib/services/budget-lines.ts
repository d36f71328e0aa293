// Budget lines in process: which budgets apply to a caller and their windows, loaded once per caller,
// window and process (budget_line, sql/006) so no call walks the tree or computes a period in SQL.
// A line is forgotten when its first window ends, after a minute (a budget that starts later), and
// when any budget changed in any process: every statement of the gate reports the definitions'
// version it saw (budget_definitions_version, sql/006), and a newer one than the lines were loaded at
// forgets them all. No extra connection, nothing to listen for, and it works behind any pooler.
import type { CallFilter, LineBudget, ReservationRepository } from '../repository/reservations.js'
import { canonicalTags } from '../tags.js'

const LONGEST_KEPT_MS = 60_000
const MOST_LINES = 10_000
const EMPTY_RECHECK_MS = 100

interface Cached {
  line: Promise<{ line: LineBudget[], definitionsVersion: number }>
  validUntil: number
  /** The count of changes heard when the load began: a load that a change overtook is not kept. */
  generation: number
  /** When an empty line last asked whether the definitions changed. */
  checkedAt: number
}

/** A caller's line as cached: the key it is kept under, and until when it holds. */
export interface CachedLine {
  key: string
  line: LineBudget[]
  validUntil: number
  /** The definitions' version the line was loaded under: a statement that sees a newer one knows it is stale. */
  definitionsVersion: number
}

export function createBudgetLines (reservations: ReservationRepository, currency: string) {
  const lines = new Map<string, Cached>()
  const forgotten: Array<() => void> = []
  let generation = 0
  /** The newest definitions' version seen: lines loaded under an older one are forgotten. */
  let version = -1
  const forget = () => {
    generation++
    lines.clear()
    for (const listener of forgotten) listener()
  }
  const observe = (seen: number) => {
    if (seen > version) {
      const first = version === -1
      version = seen
      if (!first) forget()
    }
  }

  /**
   * A caller with no budget runs no statement that would report a change, so its empty line asks for
   * the definitions' version itself, at most every EMPTY_RECHECK_MS: a new budget for it takes effect
   * within that. True when the definitions changed since the line was loaded.
   */
  async function emptyLineChanged (cached: Cached, loadedAt: number, now: number): Promise<boolean> {
    if (now - cached.checkedAt < EMPTY_RECHECK_MS) return false
    cached.checkedAt = now
    const seen = await reservations.definitionsVersion()
    observe(seen)
    return seen > loadedAt
  }

  return {
    /** The call's line (its caller's, for its model and tags), from the process's cache when it is still good. */
    async lineOf (call: CallFilter): Promise<CachedLine> {
      const key = [...call.scopes.map((scope) => `${scope.type}\u0000${scope.id}`), call.model ?? '', canonicalTags(call.tags)].join('\u0001')
      const cached = lines.get(key)
      const now = Date.now()
      if (cached !== undefined && now < cached.validUntil) {
        const { line, definitionsVersion } = await cached.line
        if (line.length > 0 || !await emptyLineChanged(cached, definitionsVersion, now)) {
          return { key, line, validUntil: cached.validUntil, definitionsVersion }
        }
      }
      if (lines.size >= MOST_LINES) lines.clear() // a crude bound: callers beyond it reload their line
      const entry: Cached = {
        line: reservations.loadLine(call, currency),
        validUntil: now + LONGEST_KEPT_MS,
        generation,
        checkedAt: now
      }
      lines.set(key, entry)
      try {
        const { line, definitionsVersion } = await entry.line
        observe(definitionsVersion)
        for (const budget of line) entry.validUntil = Math.min(entry.validUntil, budget.periodEnd.getTime())
        // A load that a change overtook (seen here or by another statement) is used once, not kept.
        if ((entry.generation !== generation || definitionsVersion < version) && lines.get(key) === entry) lines.delete(key)
        return { key, line, validUntil: entry.validUntil, definitionsVersion }
      } catch (error) {
        lines.delete(key)
        throw error
      }
    },

    /** Forgets every line (a budget changed, or the line's windows were found out of date). */
    forget,

    /** Calls `listener` whenever the lines are forgotten (what was derived from them must go too). */
    onForget (listener: () => void): void {
      forgotten.push(listener)
    },

    /** Takes note of the definitions' version a statement saw; a newer one than before forgets every line. */
    observe
  }
}

export type BudgetLines = ReturnType<typeof createBudgetLines>
