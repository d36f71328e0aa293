// What this process knows of the budget definitions: the newest version a statement reported, and the
// parts of the gate derived from them (budget lines, leases, rate allowances), which are forgotten when
// it moves. A change bumps budget_definitions_version in its own transaction (sql/functions/definitions.sql):
// every gate statement reports the version it saw, so another process's change is heard at the next
// statement (and within the lines' freshness bound, lib/gate/budget-lines.ts), this process's at once.
// Built first by the plugin's root and handed to every part that reads or derives from the definitions.

export interface DefinitionsVersion {
  /**
   * A statement saw `seen`: newer than any before forgets everything derived from the definitions. `sentAt`
   * (Date.now() when it was sent): it read the version no earlier than that, as a read of the version would
   * (budget-lines.ts counts it as one, so a process whose statements report often need not poll).
   */
  observe: (seen: number, sentAt?: number) => void
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
    forget,
    onForget (listener: () => void): void {
      listeners.push(listener)
    },
    get seen () { return seen },
    get reportedAt () { return reportedAt },
    get generation () { return generation }
  }
}
