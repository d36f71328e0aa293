// The gate's stores, one per concern, composed into the one object the gate is built from (lib/repositories.ts
// builds it once on the root's database handle). Each part of the gate takes only the store of its concern.
import type { Db } from '../kernel/database/db.js'
import { createHoldRepository } from './hold-repository.js'
import { createLeaseRepository } from './lease-repository.js'
import { createLineRepository } from './line-repository.js'
import { createRateRepository } from './rate-repository.js'
import { createSettlementRepository } from './settlement-repository.js'
import { createShadowRepository } from './shadow-repository.js'
import { createStandingRepository } from './standing-repository.js'
import { createSweeperRepository } from './sweeper-repository.js'

export function createReservationRepository (sql: Db) {
  return {
    ...createLineRepository(sql), // lines: budget_line, the definitions' version
    ...createHoldRepository(sql), // holds: budget_hold_batch
    ...createSettlementRepository(sql), // settlements: budget_settle_batch, budget_settle_leased
    ...createLeaseRepository(sql), // leases: take, renew, check, return
    ...createRateRepository(sql), // rate buckets: take, give back
    ...createSweeperRepository(sql), // the sweeper: budget_sweep_expired
    ...createStandingRepository(sql), // reads that hold nothing: the checks and the caller's summary
    ...createShadowRepository(sql) // shadow budgets: verdicts counted, holds marked
  }
}

export type ReservationRepository = ReturnType<typeof createReservationRepository>
