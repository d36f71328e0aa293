// What-if replay: a proposed change to the budgets tried on the recorded calls of a past range
// (lib/simulate/simulator.ts, sql/functions/simulate.sql). It changes nothing but the audit entry of the request.
import type { Sql } from 'postgres'
import { partOf, type Part } from '../kernel/part.js'
import { createSimulator, type SimulateOptions, type Simulator } from './simulator.js'

export { SimulationCancelledError, SIMULATE_STATEMENT_TIMEOUT_MS } from './simulator.js'
export type { Simulator, SimulateOptions, SimulateProgress, SimulateRun } from './simulator.js'

export function createSimulate (sql: Sql, options: SimulateOptions): Part<Simulator> {
  return partOf(createSimulator(sql, options))
}
