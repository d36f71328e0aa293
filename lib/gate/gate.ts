// The gate's machinery, built once per plugin: the process's cache of budget lines, the leases on hot
// lines, the queues that take holds and commit settlements in groups, the rate-limit allowances, and the
// Budget Integration on top of them. What is derived from the definitions is forgotten when they move
// (lib/gate/definitions-version.ts), and stop() gives back what the process still holds.
import type { Logger } from '../kernel/logger.js'
import type { Part } from '../kernel/part.js'
import type { BudgetDefinition } from '../kernel/schemas.js'
import type { UsageTracker } from '../usage/index.js'
import { createBudgetLines } from './budget-lines.js'
import type { DefinitionsVersion } from './definitions-version.js'
import { createHoldQueue } from './holds.js'
import { createBudgetIntegration, type BudgetIntegration, type BudgetTracker, type IntegrationOptions } from './integration.js'
import { createLeases } from './leases.js'
import { createRateLimits } from './rate-limits.js'
import type { ReservationRepository } from './reservation-repository.js'
import { createSettlementQueue, type RecordUnbudgeted } from './settlements.js'
import { createWindowLedger } from './window-ledger.js'

/**
 * When holds whose batch met a connection error are given back, in ms after the error. The batch may still
 * be running in PostgreSQL (the cut reached the client, not the backend): waiting for a window's lock (2 s
 * lock_timeout per lock, budget_hold_batch; no statement_timeout on the gate's statements), it commits its
 * holds after the first round found none. So every round runs, past one that found nothing, until each hold
 * was given back; each round retries a database that is away for seconds itself (the settlement queue).
 * What commits after the last round is swept when it expires (counted at its estimate).
 */
const GIVE_BACK_AT_MS = [0, 500, 2500, 6000, 15_000]

export interface GateStores {
  reservations: ReservationRepository
  findBudget: (id: string) => Promise<BudgetDefinition | null>
  recordUnbudgeted: RecordUnbudgeted
  /** The database is a Citus cluster: holds and settlements are batched by the trees of their lines (holds.ts, settlements.ts), lines are loaded on their tree's node, and the sweeper sweeps a tree a call. */
  onCitus: boolean
}

export interface Gate {
  /** The admission API: check, reserve, settle, release (lib/gate/integration.ts). */
  integration: BudgetIntegration
  /** The tracker the instance shows: the ledger's, with the gate's check on one budget. */
  tracker: BudgetTracker
}

export function createGate (stores: GateStores, usageTracker: UsageTracker, versions: DefinitionsVersion, options: IntegrationOptions, log: Logger): Part<Gate> {
  const { reservations } = stores
  const lines = createBudgetLines(reservations, versions, options.currency, log, { byTree: stores.onCitus })
  const ledger = createWindowLedger() // each window's money as this process knows it, for leased admissions
  const settlements = createSettlementQueue(reservations, { ttlMs: options.reservationTtlMs, byTree: stores.onCitus, observe: versions.observe, recordUnbudgeted: stores.recordUnbudgeted, stamp: ledger.stamp }, log)
  let stopped = false
  // Holds whose batch met a connection error go back through the settlement queue, by id, in rounds
  // (GIVE_BACK_AT_MS) until each was released. The pauses keep no process alive (unref), and a stopped gate
  // sends no more rounds: what is left is swept when it expires.
  const giveBack = async (reservationIds: string[]): Promise<void> => {
    let left = reservationIds
    const start = Date.now()
    for (let round = 0; round < GIVE_BACK_AT_MS.length && left.length > 0; round++) {
      const pause = start + GIVE_BACK_AT_MS[round]! - Date.now()
      if (pause > 0) await new Promise((resolve) => setTimeout(resolve, pause).unref())
      if (stopped) return
      const last = round === GIVE_BACK_AT_MS.length - 1
      const outcomes = await Promise.all(left.map(async (reservationId) => await settlements.settle({ reservationId, actualCost: null, source: 'gateway', description: null, metadata: {} })
        .then((settled) => settled.outcome, (error: unknown) => {
          log[last ? 'warn' : 'debug']({ err: error, reservationId }, last
            ? 'giving back a hold after a connection error failed: if PostgreSQL committed it, it stays until it expires, and is then counted as spent at its estimate'
            : 'giving back a hold after a connection error failed; trying again')
          return 'failed'
        })))
      left = left.filter((_id, index) => outcomes[index] !== 'released')
    }
  }
  const holds = createHoldQueue(reservations, ledger, { currency: options.currency, ttlMs: options.reservationTtlMs, byTree: stores.onCitus, giveBack }, log)
  const leases = createLeases(reservations, settlements, ledger, { currency: options.currency, ttlMs: options.reservationTtlMs, observe: versions.observe }, log)
  versions.onForget(leases.forgetAll) // a changed budget ends the leases taken under the old one
  const rateLimits = createRateLimits(reservations, log) // request and token buckets, allowance held in process
  versions.onForget(rateLimits.forgetAll) // and the allowance taken under the old definitions
  const integration = createBudgetIntegration({ reservations, lines, leases, holds, settlements, rateLimits, versions, findBudget: stores.findBudget, ledger, onCitus: stores.onCitus }, usageTracker, options, log)
  const tracker: BudgetTracker = { ...usageTracker, checkBudgetConstraints: integration.checkBudgetConstraints }
  return {
    api: { integration, tracker },
    /** Settles what is queued, then gives back what is left of the leases and rate allowances. */
    async stop (): Promise<void> {
      stopped = true // no more give-back rounds (they wait for nothing here)
      await settlements.drain()
      await leases.close()
      await rateLimits.close()
      lines.close() // no more version reads
    }
  }
}
