// Budget lines in process: which budgets apply to a caller and their windows, loaded once per caller,
// window and process (budget_line, sql/functions/lines.sql) so no call walks the tree or computes a period in SQL.
// A line is forgotten when its first window ends, after a minute (a budget that starts later), and
// when a budget changed in any process: a change bumps the definitions' versions in its own transaction
// (the global one, and its tree's: sql/functions/definitions.sql), and a newer version than the lines were
// loaded at forgets them all, and with them the leases and rate allowances taken under them
// (lib/gate/definitions-version.ts). Every gate statement reports the global version it saw, but a lease
// admits from memory and runs none, and a tree's version moves without the global one (a crossing whose
// alert does more than notify, a change made by hand in SQL), so the versions (the global one and those of
// the trees lines are in) are also read on a timer while lines are in use, and no line is handed out unless
// a read of them began at most VERSION_FRESH_MS before: a change committed in another process comes into
// force here within that (plus whatever the caller does between its line and its admission). For a line in
// no tree (a caller without a budget), a gate statement that reports the global version (a settlement
// batch, a lease take) counts as a read from when it was sent. No extra connection, nothing to listen for,
// and it works behind any pooler.
import type { Logger } from '../kernel/logger.js'
import { bestEffort } from '../kernel/best-effort.js'
import type { BudgetTerms } from './budget-terms.js'
import type { CallFilter, LineRepository } from './line-repository.js'
import { canonicalTags } from '../kernel/tags.js'
import type { DefinitionsVersion } from './definitions-version.js'

const LONGEST_KEPT_MS = 60_000
const MOST_LINES = 10_000
/** While lines are in use, the definitions' version is read this often, so a call seldom waits for a read. */
const VERSION_POLL_MS = 40
/** A line is handed out only under a version read that began at most this long before it was asked for. */
export const VERSION_FRESH_MS = 80
/** The timer stops when no line was asked for this long; the next call then waits for a read of its own. */
const POLL_IDLE_MS = 5000

interface Cached {
  line: Promise<{ line: BudgetTerms[], definitionsVersion: number }>
  /** The line once its load has answered: what lineNow hands out without waiting. */
  loaded?: { line: BudgetTerms[], definitionsVersion: number }
  validUntil: number
  /** The count of changes heard when the load began: a load that a change overtook is not kept. */
  generation: number
  /** When the load began: it read its trees' versions no earlier. */
  loadedFrom: number
  /** When its trees' versions were first known to the process: a read of the versions that began later covers them. Infinity until then. */
  treesKnownAt: number
  /** Whether the line has a budget, so a tree whose version must be read fresh. */
  inTrees: boolean
}

/** A caller's line as cached: the key it is kept under, and until when it holds. */
export interface CachedLine {
  key: string
  line: BudgetTerms[]
  validUntil: number
  /** The definitions' version the line was loaded under: a statement that sees a newer one knows it is stale. */
  definitionsVersion: number
}

/** The cache's key for a call's line: its scopes, its model and its tags. */
function keyOf (call: CallFilter): string {
  let key = ''
  for (const scope of call.scopes) key += `${scope.type}\u0000${scope.id}\u0001`
  return `${key}${call.model ?? ''}\u0001${canonicalTags(call.tags)}`
}

/** `byTree`: the database is a Citus cluster, and each line is loaded on its first tree's node (line-repository.ts). */
export function createBudgetLines (reservations: LineRepository, versions: DefinitionsVersion, currency: string, log: Logger, { byTree = false }: { byTree?: boolean } = {}) {
  const lines = new Map<string, Cached>()
  versions.onForget(() => { lines.clear() })

  // The version reads: when the newest one that answered began, the one in flight, and when a line was last asked for.
  let checkedAt = 0
  let reading: { startedAt: number, done: Promise<void> } | null = null
  let lastAsked = 0
  let poller: NodeJS.Timeout | null = null

  function readVersion (): Promise<void> {
    const startedAt = Date.now()
    const done = reservations.versions(versions.treesInUse(startedAt)).then(({ version, trees }) => {
      versions.observe(version)
      versions.observeTrees(trees)
      checkedAt = Math.max(checkedAt, startedAt)
    }).finally(() => { if (reading?.done === done) reading = null })
    reading = { startedAt, done }
    return done
  }

  /** When the newest read of the global version began: a read of its own, or a gate statement that reported it (settlements, lease takes). */
  const readAt = (): number => Math.max(checkedAt, versions.reportedAt)

  /**
   * When the newest read of every version the line depends on began: a line in no tree needs the global one
   * only; a line in trees needs a read of the versions that covered its trees (one that began once they were
   * known), or else its own load's.
   */
  const freshFrom = (cached: Cached): number =>
    !cached.inTrees ? readAt() : checkedAt >= cached.treesKnownAt ? checkedAt : cached.loadedFrom

  /** Resolves once a version read that began at most VERSION_FRESH_MS before `asked` has answered (and been observed). */
  async function versionFresh (asked: number): Promise<void> {
    if (asked - readAt() <= VERSION_FRESH_MS) return
    await (reading !== null && asked - reading.startedAt <= VERSION_FRESH_MS ? reading.done : readVersion())
  }

  /** Keeps reading the version while lines are asked for; stops (and lets the process exit) when they are not. */
  function keepPolling (now: number): void {
    lastAsked = now
    if (poller !== null) return
    poller = setInterval(() => {
      const now = Date.now()
      if (now - lastAsked > POLL_IDLE_MS) { stopPolling(); return }
      // Only the reads of its own cover the trees' versions (the statements report the global one)
      if (now - checkedAt < VERSION_POLL_MS) return
      // A failed read loses nothing: the next call waits for a read of its own (and sees its failure). At
      // debug level, since with the database away it fails every VERSION_POLL_MS.
      if (reading === null) void bestEffort(log, readVersion, 'reading the budget definitions\' version in the background failed', {}, 'debug')
    }, VERSION_POLL_MS)
    poller.unref()
  }

  function stopPolling (): void {
    if (poller !== null) clearInterval(poller)
    poller = null
  }

  return {
    /**
     * lineOf when nothing needs waiting for: the call's line is cached, loaded and good, and the versions it
     * depends on were read fresh enough. Null otherwise (lineOf then reads or loads what is needed).
     */
    lineNow (call: CallFilter): CachedLine | null {
      const asked = Date.now()
      const key = keyOf(call)
      const cached = lines.get(key)
      if (cached?.loaded === undefined || asked >= cached.validUntil || asked - freshFrom(cached) > VERSION_FRESH_MS) return null
      keepPolling(asked)
      return { key, line: cached.loaded.line, validUntil: cached.validUntil, definitionsVersion: cached.loaded.definitionsVersion }
    },

    /** The call's line (its caller's, for its model and tags), from the process's cache when it is still good. */
    async lineOf (call: CallFilter): Promise<CachedLine> {
      const key = keyOf(call)
      const asked = Date.now()
      keepPolling(asked)
      await versionFresh(asked) // a change it reveals forgets the lines (and the leases) before any is used
      const cached = lines.get(key)
      const now = Date.now()
      if (cached !== undefined && now < cached.validUntil) {
        const { line, definitionsVersion } = await cached.line
        // its trees' versions read fresh enough too (a read that began now covers them: they are known once loaded)
        if (asked - freshFrom(cached) > VERSION_FRESH_MS) await (reading !== null && reading.startedAt >= cached.treesKnownAt ? reading.done : readVersion())
        if (lines.get(key) === cached) return { key, line, validUntil: cached.validUntil, definitionsVersion }
        // else that read forgot it (or its load was not kept): loaded again below
      }
      if (lines.size >= MOST_LINES) lines.clear() // a crude bound: callers beyond it reload their line
      const entry: Cached = {
        line: reservations.loadLine(call, currency, { byTree }).then(({ line, definitionsVersion, trees }) => {
          for (const budget of line) entry.validUntil = Math.min(entry.validUntil, budget.periodEnd.getTime())
          versions.observe(definitionsVersion)
          const treesCurrent = versions.observeTrees(trees, entry.validUntil)
          entry.treesKnownAt = Date.now()
          entry.inTrees = line.length > 0
          // A load that a change overtook (seen here or by another statement) is used once, not kept.
          if ((entry.generation !== versions.generation || definitionsVersion < versions.seen || !treesCurrent) && lines.get(key) === entry) lines.delete(key)
          else entry.loaded = { line, definitionsVersion }
          return { line, definitionsVersion }
        }),
        validUntil: now + LONGEST_KEPT_MS,
        generation: versions.generation,
        loadedFrom: now,
        treesKnownAt: Infinity,
        inTrees: true
      }
      lines.set(key, entry)
      try {
        const { line, definitionsVersion } = await entry.line
        return { key, line, validUntil: entry.validUntil, definitionsVersion }
      } catch (error) {
        lines.delete(key)
        throw error
      }
    },

    /** Stops reading the version (the plugin closes). */
    close: stopPolling
  }
}

export type BudgetLines = ReturnType<typeof createBudgetLines>
