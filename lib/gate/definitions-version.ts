// What this process knows of the budget definitions: the newest versions statements reported, and the
// parts of the gate derived from them (budget lines, leases, rate allowances), which are forgotten when
// one moves. Two versions move (sql/functions/definitions.sql):
// - the global one, bumped by the registry in every change's own transaction: every gate statement reports
//   the one it saw, so another process's change is heard at the next statement (and within the lines'
//   freshness bound, lib/gate/budget-lines.ts), this process's at once;
// - each tree's, bumped by any change to a budget of the tree and by a crossing whose alert does more than
//   notify: read with the global one for the trees this process has lines in, and by each line's load.
// Built first by the plugin's root and handed to every part that reads or derives from the definitions.
import type { TreeVersion } from './line-repository.js'

export interface DefinitionsVersion {
  /**
   * A statement saw `seen`: newer than any before forgets everything derived from the definitions. `sentAt`
   * (Date.now() when it was sent): it read the version no earlier than that, as a read of the version would
   * (budget-lines.ts counts it as one, so a process whose statements report often need not poll).
   */
  observe: (seen: number, sentAt?: number) => void
  /**
   * A read saw these trees' versions: one newer than seen before forgets everything derived from the
   * definitions. `inUseUntil`: a line in these trees is kept until then (a line's load), and their versions
   * are read until then (treesInUse). False when one is older than seen: what was read with it is out of date.
   */
  observeTrees: (trees: readonly TreeVersion[], inUseUntil?: number) => boolean
  /** The trees a line kept at `now` is in: the versions to read. */
  treesInUse: (now: number) => string[]
  /** Forgets everything derived from the definitions (this process changed one, or found a line out of date). */
  forget: () => void
  /** Calls `listener` whenever the definitions are forgotten: a part that keeps something derived from them subscribes. */
  onForget: (listener: () => void) => void
  /** The newest version seen (-1 before the first). */
  readonly seen: number
  /** When the latest statement that reported the version with its send time was sent (0: none yet). */
  readonly reportedAt: number
  /** How many times the definitions were forgotten: a load that began before a forget is not kept. */
  readonly generation: number
}

export function createDefinitionsVersion (): DefinitionsVersion {
  const listeners: Array<() => void> = []
  let seen = -1
  let generation = 0
  let reportedAt = 0
  const trees = new Map<string, { version: number, inUseUntil: number }>()
  const forget = () => {
    generation++
    for (const listener of listeners) listener()
  }
  return {
    observe (version: number, sentAt?: number): void {
      // A version older than one seen still tells of the time it was read: nothing newer had committed before.
      if (sentAt !== undefined && sentAt > reportedAt) reportedAt = sentAt
      if (version <= seen) return
      const first = seen === -1
      seen = version
      if (!first) forget()
    },
    observeTrees (seenTrees: readonly TreeVersion[], inUseUntil = 0): boolean {
      let newer = false
      let older = false
      for (const { rootId, version } of seenTrees) {
        const known = trees.get(rootId)
        if (known === undefined) {
          trees.set(rootId, { version, inUseUntil })
          continue
        }
        if (version > known.version) { newer = true; known.version = version }
        if (version < known.version) older = true
        if (inUseUntil > known.inUseUntil) known.inUseUntil = inUseUntil
      }
      if (newer) forget()
      return !older
    },
    treesInUse (now: number): string[] {
      const roots: string[] = []
      for (const [rootId, tree] of trees) {
        // no line in it is kept any longer: its version is not read, and is learnt again with the next line
        if (tree.inUseUntil <= now) trees.delete(rootId)
        else roots.push(rootId)
      }
      return roots
    },
    forget,
    onForget (listener: () => void): void {
      listeners.push(listener)
    },
    get seen () { return seen },
    get reportedAt () { return reportedAt },
    get generation () { return generation }
  }
}
