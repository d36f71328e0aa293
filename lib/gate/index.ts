// The gate: admission of model calls against every budget that applies (hold, lease, settle), rate
// limits, and the decision log. The HTTP hooks that call it are in lib/http/gate/.
import type { Sql } from 'postgres'
import type { Registry } from 'prom-client'
import type { Logger } from '../kernel/logger.js'
import type { Part } from '../kernel/part.js'
import { createDecisionLog, type DecisionLog, type DecisionLogOptions } from './decision-log.js'
import { createDecisionRepository } from './decision-repository.js'

export { createGate } from './gate.js'
export type { Gate, GateStores } from './gate.js'
export { createDefinitionsVersion } from './definitions-version.js'
export type { DefinitionsVersion } from './definitions-version.js'
export { bindingOf } from './decision-log.js'
export type { DecisionLog } from './decision-log.js'
export type { Decision, DecisionOutcome } from './decision-repository.js'
export type { BudgetConstraintCheck, ShadowOutcome, ShadowVerdict } from './decision.js'
export type { BudgetIntegration, BudgetTracker, Reservation } from './integration.js'
export type { RateRefusal } from './rate-limits.js'
export { sweptBeforeSettling } from './settlements.js'

/** The decision log: refusals, clamps and downgrades noted in memory, written in batches, swept past their retention. */
export function createDecisions (sql: Sql, options: DecisionLogOptions, log: Logger, registry: Registry): Part<DecisionLog> {
  const decisions = createDecisionLog(createDecisionRepository(sql), options, log, registry)
  return { api: decisions, start: decisions.start, stop: decisions.close }
}
