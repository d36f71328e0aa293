// The gate's machinery, built once per plugin: the process's cache of budget lines, the leases on hot
// lines, the queues that take holds and commit settlements in groups, the rate-limit allowances, and the
// Budget Integration on top of them. What is derived from the definitions is forgotten when they move
// (lib/gate/definitions-version.ts), and stop() gives back what the process still holds.
import { bestEffort } from '../kernel/best-effort.js'
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

/** Pauses between rounds of giving back holds whose batch met a connection error (each round retries for seconds itself). */
const GIVE_BACK_PAUSES_MS = [1000, 5000]

export interface GateStores {
  reservations: ReservationRepository
  findBudget: (id: string) => Promise<BudgetDefinition | null>
  recordUnbudgeted: RecordUnbudgeted
}

export interface Gate {
  /** The admission API: check, reserve, settle, release (lib/gate/integration.ts). */
  integration: BudgetIntegration
  /** The tracker the instance shows: the ledger's, with the gate's check on one budget. */
  tracker: BudgetTracker
}

export function createGate (stores: GateStores, usageTracker: UsageTracker, versions: DefinitionsVersion, options: IntegrationOptions, log: Logger): Part<Gate> {
  const { reservations } = stores
  const lines = createBudgetLines(reservations, versions, options.currency, log)
  const ledger = createWindowLedger() // each window's money as this process knows it, for leased admissions
  const settlements = createSettlementQueue(reservations, { ttlMs: options.reservationTtlMs, observe: versions.observe, recordUnbudgeted: stores.recordUnbudgeted }, log)
  // Holds whose batch met a connection error go back through the settlement queue, which retries a database
  // that is away for a few seconds; past that, again after longer pauses, and only then is the failure logged.
  const giveBack = async (reservationIds: string[]): Promise<void> => {
    for (let round = 0; ; round++) {
      const last = round >= GIVE_BACK_PAUSES_MS.length
      const given = await bestEffort(log, async () => await Promise.all(reservationIds.map(async (reservationId) =>
        await settlements.settle({ reservationId, actualCost: null, source: 'gateway', description: null, metadata: {} }))),
      last
        ? 'giving back holds after a connection error failed: any that PostgreSQL committed stay until they expire, and are then counted as spent at their estimate'
        : 'giving back holds after a connection error failed; trying again', { reservationIds }, last ? 'warn' : 'debug')
      if (given || last) return
      await new Promise((resolve) => setTimeout(resolve, GIVE_BACK_PAUSES_MS[round]))
    }
  }
  const holds = createHoldQueue(reservations, ledger, { currency: options.currency, ttlMs: options.reservationTtlMs, giveBack }, log)
  const leases = createLeases(reservations, settlements, ledger, { currency: options.currency, ttlMs: options.reservationTtlMs, observe: versions.observe }, log)
  versions.onForget(leases.forgetAll) // a changed budget ends the leases taken under the old one
  const rateLimits = createRateLimits(reservations, log) // request and token buckets, allowance held in process
  versions.onForget(rateLimits.forgetAll) // and the allowance taken under the old definitions
  const integration = createBudgetIntegration({ reservations, lines, leases, holds, settlements, rateLimits, versions, findBudget: stores.findBudget, ledger }, usageTracker, options, log)
  const tracker: BudgetTracker = { ...usageTracker, checkBudgetConstraints: integration.checkBudgetConstraints }
  return {
    api: { integration, tracker },
    /** Settles what is queued, then gives back what is left of the leases and rate allowances. */
    async stop (): Promise<void> {
      await settlements.drain()
      await leases.close()
      await rateLimits.close()
      lines.close() // no more version reads
    }
  }
}
