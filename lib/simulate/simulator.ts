// What-if replay: a proposed change to the budgets, tried on the recorded calls of a past range. The proposal
// goes through the registry's own createBudget/updateBudget, inside a transaction that is always rolled
// back (READ ONLY when there is no proposal), so a proposal is held to the same rules as a real change and
// leaves nothing behind; the replay itself is sql/functions/simulate.sql, which calls the gate's and the
// alerts' SQL rules, a slice of the range at a time so the caller hears progress and can cancel.
import type { ReservedSql, Sql, TransactionSql } from 'postgres'
import { AdminTimeoutError, DatabaseUnavailableError, InvalidFieldError } from '../kernel/errors.js'
import { isConflict } from '../kernel/database/db.js'
import { fromUnits, toUnits, type Money } from '../kernel/money.js'
import { parseTimestamp } from '../kernel/timestamps.js'
import { shapeCheck } from '../kernel/validator.js'
import { SimulateRequest, type SimulateResult } from '../kernel/schemas.js'
import { createAuditRepository, type AuditContext } from '../audit/index.js'
import { createBudgetRegistry, type RegistryOptions } from '../budgets/index.js'
import { costFromUsage, type PriceBook, type TokenUsage } from '../pricing/index.js'
import { createSimulateRepository, type DowngradableCall, type ReplayState } from './simulate-repository.js'

const checkRequestShape = shapeCheck(SimulateRequest)
/** 10^18 in units of 10^-10: numeric(28,10)'s bound. */
const MONEY_LIMIT_UNITS = 10n ** 28n

/** Past this, PostgreSQL cancels the replay (the transaction rolls back and nothing was changed anyway). */
export const SIMULATE_STATEMENT_TIMEOUT_MS = 60_000
/** The range is replayed in this many slices of equal time, a progress report after each. */
const SLICES = 20

export interface SimulateProgress {
  type: 'progress'
  /** Slices of the range replayed so far, of `slices`. */
  slice: number
  slices: number
  /** Recorded calls and refusals replayed so far. */
  events: number
  /** The instant replayed up to. */
  through: string
}

export interface SimulateOptions {
  /** Models restrict-models allows (the gate's cheapModels). */
  cheapModels: readonly string[]
  /** The cheaper model auto-downgrade switches each model to (the gate's downgrades). */
  downgrades: Readonly<Record<string, string>>
  /** The gate's price book and its currency: a call auto-downgrade would have switched is priced on the cheaper model. */
  prices: PriceBook
  currency: string
  /** The registry's checks for a proposal: model names, channels. */
  registry: Pick<RegistryOptions, 'modelName' | 'channels'>
}

export interface SimulateRun {
  onProgress?: (progress: SimulateProgress) => void
  /** Aborted: the running statement is cancelled, the transaction rolled back, and the run throws. */
  signal?: AbortSignal
}

export class SimulationCancelledError extends Error {
  constructor () {
    super('The simulation was cancelled')
    this.name = 'SimulationCancelledError'
  }
}

// What the replay cannot know, said in the answer whenever it applies.
const UNKNOWNS: Record<string, string> = {
  spendBeforeRange: 'A period that began before `from` starts from the spend recorded toward the budget before `from`, not from a replay of it.',
  downgradedRepriced: 'A call auto-downgrade would have sent to a cheaper model is priced at the cheaper model\'s rates from the same usage (the tokens the model it really used reported): what the cheaper model would have used is unknown.',
  downgradeHeldAtCost: 'A call auto-downgrade would have switched is held on the cheaper model at its cost there, not at the cheaper model\'s estimate (the request is not stored): where the estimate would not have fit, the replay may let through a call the gate refused.',
  downgradedCost: 'A call auto-downgrade would have sent to a cheaper model, whose recorded usage cannot be priced on that model (no tokens, another currency, or a model the price book does not know), is counted at its recorded cost.',
  upgradedCost: 'A call auto-downgrade sent to a cheaper model in reality, which the replay lets through on the model it asked for, is counted at its recorded cost on the cheaper model: its cost on the model it asked for is unknown.',
  refusedInRealityAdmitted: 'A call that was refused in reality and would have gone ahead is counted at its estimate: it never ran, so its real cost is unknown.',
  approvals: 'Approvals are not replayed: a budget past a require-approval threshold refuses every call after it.',
  restrictModels: 'restrict-models allows only the gate\'s cheapModels in the replay; an alert\'s own allowedModels and maxPricePerMillion are not read.',
  projectedAlerts: 'Projected alerts are not replayed: their crossings depend on forecasts made at the time.',
  recordedThroughApi: 'Usage recorded through the API (not gated) counts toward the budgets it was recorded on, never toward a proposed new budget, and refuses nothing.'
}
// Always true of a replay, whatever the range holds.
const ALWAYS = [
  'Calls are replayed one at a time: a call in flight beside another held room in reality (reserved), which the replay does not.',
  'nearLimit clamps are not replayed: a call that would not fit is counted as refused, not clamped.',
  'Rate limits are not replayed: a call a rate limit refused is left out.'
]

export function createSimulator (sql: Sql, options: SimulateOptions) {
  const replay = createSimulateRepository()
  const audit = createAuditRepository(sql)

  return {
    /** Replays the range under the proposal: the answer per budget. Changes nothing but one audit entry (simulate). */
    async simulate (request: SimulateRequest, who: AuditContext, run: SimulateRun = {}): Promise<SimulateResult> {
      const checked = checkRequestShape(request)
      const from = parseTimestamp(checked.from, 'from')
      const to = parseTimestamp(checked.to, 'to')
      if (to.getTime() <= from.getTime()) throw new InvalidFieldError('to', 'must be after from')
      const writes = (checked.proposal?.create?.length ?? 0) + (checked.proposal?.update?.length ?? 0) > 0
      if (run.signal?.aborted === true) throw new SimulationCancelledError()

      const result = await replayRange(checked.proposal ?? {}, writes, from, to, run)
      // the one trace a simulation leaves: who asked what, after it ran (a refused request leaves none)
      await audit.record(null, 'simulate', who, { after: { from: result.from, to: result.to, proposal: checked.proposal ?? null } })
      return result
    }
  }

  async function replayRange (proposal: NonNullable<SimulateRequest['proposal']>, writes: boolean, from: Date, to: Date, run: SimulateRun): Promise<SimulateResult> {
      const connection = await sql.reserve()
      try {
        // the bound is the whole request's: the proposal's wait for the hierarchy lock counts toward it
        const deadline = Date.now() + SIMULATE_STATEMENT_TIMEOUT_MS
        // relaycore_budgets.simulating (transaction-local) tells the definition triggers and the alerts'
        // follow-up that this transaction rolls back: they lock none of the rows the live gate needs
        // (sql/functions/alerts.sql, sql/functions/window-changes.sql); the replay reads none of them.
        // work_mem: each slice sorts its events twice (by caller, by time); at the default 4 MB a slice of 50,000
        // calls sorted on disk
        await connection.unsafe(`begin${writes ? '' : ' read only'}; set local statement_timeout = ${SIMULATE_STATEMENT_TIMEOUT_MS}; set local work_mem = '64MB'; select set_config('relaycore_budgets.simulating', 'on', true)`)
        try {
          const proposed = writes ? await applyProposal(connection, proposal) : new Set<string>()
          // Only a replay that can downgrade reads the calls again to price them on the cheaper model.
          const downgrading = Object.keys(options.downgrades).length > 0 && await replay.downgradeInForce(connection)
          let state: ReplayState = {}
          const span = to.getTime() - from.getTime()
          for (let slice = 1; slice <= SLICES; slice++) {
            const sliceFrom = new Date(from.getTime() + Math.floor(span * (slice - 1) / SLICES))
            const sliceTo = slice === SLICES ? to : new Date(from.getTime() + Math.floor(span * slice / SLICES))
            if (sliceTo.getTime() <= sliceFrom.getTime()) continue
            // the bound is the whole replay's: each slice may run only for what is left of it
            const left = deadline - Date.now()
            if (left < 1) throw new AdminTimeoutError(SIMULATE_STATEMENT_TIMEOUT_MS)
            await connection.unsafe(`set local statement_timeout = ${left}`)
            const repriced = downgrading ? repricedCalls(await replay.downgradableCalls(connection, sliceFrom, sliceTo, Object.keys(options.downgrades), options.currency)) : { ids: [], costs: [] }
            state = await replay.slice(connection, state, { from: sliceFrom, to: sliceTo, rangeFrom: from, cheapModels: options.cheapModels, downgrades: options.downgrades, repriced }, run.signal)
            run.onProgress?.({ type: 'progress', slice, slices: SLICES, events: state.events ?? 0, through: sliceTo.toISOString() })
          }
          const names = await replay.budgetNames(connection, (state.windows ?? []).map((window) => window.b))
          return answer(state, names, proposed, from, to)
        } finally {
          await connection.unsafe('rollback').catch(() => {})
        }
      } catch (error) {
        if (run.signal?.aborted === true) throw new SimulationCancelledError()
        if ((error as { code?: unknown }).code === '57014') throw new AdminTimeoutError(SIMULATE_STATEMENT_TIMEOUT_MS, { cause: error })
        throw error
      } finally {
        connection.release()
      }
  }

  /**
   * Each call priced as the gate prices a usage (costFromUsage), on the model auto-downgrade switches its model
   * to, at the rates in force when it was made, from the tokens its provider reported. A call whose usage
   * cannot be priced so is left out: the replay counts it at its recorded cost and says so.
   */
  function repricedCalls (calls: DowngradableCall[]): { ids: string[], costs: string[] } {
    const ids: string[] = []
    const costs: string[] = []
    for (const call of calls) {
      const cheaper = Object.hasOwn(options.downgrades, call.model) ? options.downgrades[call.model] : undefined
      if (cheaper === undefined || cheaper === call.model) continue
      const tokens = reportedTokens(call.metadata)
      const cost = tokens === null ? null : costFromUsage({ model: cheaper, ...tokens }, options.prices, call.occurredAt)
      // a cost no money column holds (hostile token counts) is no price: the call keeps its recorded cost
      if (cost === null || toUnits(cost) >= MONEY_LIMIT_UNITS) continue
      ids.push(call.id)
      costs.push(cost)
    }
    return { ids, costs }
  }

  /**
   * The proposal, through the registry's own rules, on the replay's connection (its transactions become that one).
   * A deadlock or serialization failure aborts that one transaction, so running the registry's work again in it
   * (the registry's retryingConflicts) could only fail again: it is passed up at once as the 503 it would end as.
   */
  async function applyProposal (connection: ReservedSql, proposal: NonNullable<SimulateRequest['proposal']>): Promise<Set<string>> {
    const onConnection = new Proxy(connection, {
      get (target, property, receiver) {
        if (property !== 'begin') return Reflect.get(target, property, receiver)
        return async (...args: unknown[]) => {
          try {
            return await (args[args.length - 1] as (tx: TransactionSql) => Promise<unknown>)(connection as unknown as TransactionSql)
          } catch (error) {
            if (isConflict(error)) throw new DatabaseUnavailableError({ cause: error })
            throw error
          }
        }
      }
    }) as unknown as Sql
    const registry = createBudgetRegistry(onConnection, { ...options.registry })
    const proposed = new Set<string>()
    for (const budget of proposal.create ?? []) {
      proposed.add((await registry.createBudget(budget, 'simulate')).id)
    }
    for (const change of proposal.update ?? []) {
      proposed.add((await registry.updateBudget(change.id, change.changes, { actor: 'simulate', requestId: null })).id)
    }
    return proposed
  }
}

/**
 * The tokens a gated call's usage metadata reports (lib/http/gate/charge.ts writes them; costFromUsage checks
 * the counts); null when its price multiplier is not the "numerator/denominator" the gate writes.
 */
function reportedTokens (metadata: Record<string, unknown>): Omit<TokenUsage, 'model'> | null {
  const multiplier = typeof metadata.priceMultiplier === 'string' ? /^(\d{1,15})\/(\d{1,15})$/.exec(metadata.priceMultiplier) : null
  if (metadata.priceMultiplier !== undefined && multiplier === null) return null
  return {
    inputTokens: metadata.inputTokens as number,
    outputTokens: metadata.outputTokens as number,
    cachedInputTokens: metadata.cachedInputTokens as number | undefined,
    cacheWriteTokens: metadata.cacheWriteTokens as number | undefined,
    cacheWrite1hTokens: metadata.cacheWrite1hTokens as number | undefined,
    priceMultiplier: multiplier === null ? undefined : { numerator: Number(multiplier[1]), denominator: Number(multiplier[2]) }
  }
}

function money (decimal: string | number): Money {
  return fromUnits(toUnits(String(decimal)))
}

function iso (instant: string): string {
  return new Date(instant).toISOString()
}

function answer (state: ReplayState, names: Map<string, { name: string, currency: string }>, proposed: Set<string>, from: Date, to: Date): SimulateResult {
  const budgets = new Map<string, SimulateResult['budgets'][number]>()
  const budgetOf = (id: string) => {
    let budget = budgets.get(id)
    if (budget === undefined) {
      budget = { budgetId: id, name: names.get(id)?.name ?? id, proposed: proposed.has(id), currency: names.get(id)?.currency ?? '', periods: [], crossings: [], refused: [], downgraded: [], avoidedSpend: '0' }
      budgets.set(id, budget)
    }
    return budget
  }
  for (const window of state.windows ?? []) {
    budgetOf(window.b).periods.push({ periodStart: iso(window.s), periodEnd: iso(window.e), spent: money(window.spent), calls: Number(window.calls) })
  }
  for (const crossing of state.crossings ?? []) {
    budgetOf(crossing.b).crossings.push({ periodStart: iso(crossing.s), threshold: String(crossing.threshold), at: iso(crossing.at), spent: money(crossing.spent) })
  }
  for (const refusal of state.refusals ?? []) {
    const budget = budgetOf(refusal.b)
    const outcome = { code: refusal.code, count: Number(refusal.count), cost: money(refusal.cost), firstAt: iso(refusal.first) }
    if (refusal.outcome === 'refused') {
      budget.refused.push(outcome)
      budget.avoidedSpend = fromUnits(toUnits(budget.avoidedSpend) + toUnits(String(refusal.avoided)))
    } else {
      budget.downgraded.push(outcome)
    }
  }
  for (const budget of budgets.values()) budget.periods.sort((a, b) => a.periodStart.localeCompare(b.periodStart))
  const unknowns = [...ALWAYS, ...Object.keys(state.unknowns ?? {}).filter((key) => UNKNOWNS[key] !== undefined).map((key) => UNKNOWNS[key]!)]
  return { type: 'result', from: from.toISOString(), to: to.toISOString(), events: state.events ?? 0, budgets: [...budgets.values()], unknowns }
}

export type Simulator = ReturnType<typeof createSimulator>
