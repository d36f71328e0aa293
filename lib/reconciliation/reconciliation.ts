// Reconciliation as the admin API offers it: the mappings from provider dimensions to budgets, the report of
// the provider's amount beside the gate's, the drift check, and the true-up.
import type { AuditContext } from '../audit/index.js'
import { BudgetNotFoundError, CostMappingConflictError, CostMappingNotFoundError, CostReportMissingError, InvalidFieldError, TrueUpRefusedError } from '../kernel/errors.js'
import type { CostMapping, MappingKind, ReconciliationRepository, ReportLine, TrueUpOutcome } from './reconciliation-repository.js'
import { daysBefore, driftsPast, readDay, readRange, reportCsv, utcDay } from './reconciliation-rules.js'

export interface ReportQuery { from?: string, to?: string, provider?: string, budgetId?: string }
export type ReportLineWithDrift = Omit<ReportLine, 'filtered'> & { drift: boolean }

/** How far back the drift check looks each time: the collectors read a few days again, a CSV may be late. */
export const EVALUATE_DAYS = 62

export function createReconciliationService (repository: ReconciliationRepository,
  inTransaction: <T>(work: (repository: ReconciliationRepository) => Promise<T>) => Promise<T>, tolerance: string, now: () => Date) {
  /** A mapping's budget exists, its dimension is not mapped already, and the budget is mapped to no other provider. */
  async function checkMapping (tx: ReconciliationRepository, mapping: { provider: string, kind: MappingKind, value: string, budgetId: string }, except: string | null): Promise<void> {
    if (!await tx.budgetExists(mapping.budgetId)) throw new BudgetNotFoundError(mapping.budgetId)
    if (await tx.dimensionTaken(mapping.provider, mapping.kind, mapping.value, except)) {
      throw new CostMappingConflictError(`${mapping.provider} ${mapping.kind} '${mapping.value}' is mapped already`)
    }
    const others = await tx.otherProviders(mapping.budgetId, mapping.provider, except)
    if (others.length > 0) throw new CostMappingConflictError(`budget '${mapping.budgetId}' is mapped to ${others.join(', ')}: a budget is compared with one provider's bill`)
  }

  /**
   * A mapping moved to another budget, or deleted, would leave its budget's corrections for a bill no longer
   * mapped to it, which no true-up could adjust or undo: refused while no other mapping keeps that (provider, budget).
   */
  async function refuseStranding (tx: ReconciliationRepository, before: CostMapping): Promise<void> {
    const days = await tx.strandedCorrections(before.provider, before.budgetId, before.id)
    if (days.length === 0) return
    const shown = days.length > 5 ? `${days.slice(0, 5).join(', ')} and ${days.length - 5} more` : days.join(', ')
    throw new CostMappingConflictError(`budget '${before.budgetId}' has ${before.provider} true-up corrections (${shown}) that only this mapping keeps adjustable: ` +
      'moving or deleting it would strand them')
  }

  async function report (query: ReportQuery): Promise<{ tolerance: string, lines: ReportLineWithDrift[] }> {
    const { from, to } = readRange(query, utcDay(now()))
    const lines = await repository.report(from, to, query.provider ?? null, query.budgetId ?? null)
    return { tolerance, lines: lines.map(({ filtered: _, ...line }) => ({ ...line, drift: driftsPast(line, tolerance) })) }
  }

  return {
    async listMappings (): Promise<{ mappings: CostMapping[] }> {
      return { mappings: await repository.listMappings() }
    },

    async createMapping (body: { provider: string, kind: MappingKind, value: string, budgetId: string, trueUp?: boolean }, context: AuditContext): Promise<CostMapping> {
      return await inTransaction(async (tx) => {
        await tx.lockMappings()
        await checkMapping(tx, body, null)
        return await tx.insertMapping({ ...body, trueUp: body.trueUp ?? false }, context)
      })
    },

    async updateMapping (id: string, changes: { value?: string, budgetId?: string, trueUp?: boolean }, context: AuditContext): Promise<CostMapping> {
      return await inTransaction(async (tx) => {
        await tx.lockMappings()
        const before = await tx.findMapping(id, true)
        if (before === null) throw new CostMappingNotFoundError(id)
        await checkMapping(tx, { provider: before.provider, kind: before.kind, value: changes.value ?? before.value, budgetId: changes.budgetId ?? before.budgetId }, id)
        if (changes.budgetId !== undefined && changes.budgetId !== before.budgetId) await refuseStranding(tx, before)
        return await tx.updateMapping(before, changes, context)
      })
    },

    async deleteMapping (id: string, context: AuditContext): Promise<void> {
      await inTransaction(async (tx) => {
        await tx.lockMappings()
        const before = await tx.findMapping(id, true)
        if (before === null) throw new CostMappingNotFoundError(id)
        await refuseStranding(tx, before)
        await tx.deleteMapping(before, context)
      })
    },

    report,

    async reportCsv (query: ReportQuery): Promise<string> {
      return reportCsv((await report(query)).lines)
    },

    /** Records each drift past the tolerance on the days before today (the last EVALUATE_DAYS), once per day and scope, and queues its notifications. */
    async evaluate (): Promise<{ drifts: Array<{ id: string, provider: string, day: string, budgetId: string }> }> {
      const today = utcDay(now())
      return { drifts: await inTransaction(async (tx) => await tx.evaluate(tolerance, daysBefore(today, EVALUATE_DAYS), today)) }
    },

    /** Writes (or adjusts) the correction for one provider, day before today, and budget, whose mapping allows a true-up. */
    async trueUp (body: { provider: string, day: string, budgetId: string }, context: AuditContext): Promise<Omit<TrueUpOutcome, 'status' | 'amount'> & { status: 'created' | 'adjusted' | 'unchanged', amount: string }> {
      const day = readDay('day', body.day)
      if (day >= utcDay(now())) throw new InvalidFieldError('day', 'must be a day before today (UTC): a day\'s report is final only once it has ended')
      return await inTransaction(async (tx) => {
        await tx.lockMappingsShared()
        const [line] = await tx.report(day, day, body.provider, body.budgetId)
        if (!await tx.budgetExists(body.budgetId)) throw new BudgetNotFoundError(body.budgetId)
        const mappings = (await tx.listMappings()).filter((mapping) => mapping.provider === body.provider && mapping.budgetId === body.budgetId)
        if (mappings.length === 0) throw new TrueUpRefusedError(`budget '${body.budgetId}' is not mapped to ${body.provider}`)
        if (!mappings.some((mapping) => mapping.trueUp)) throw new TrueUpRefusedError(`the ${body.provider} mapping of budget '${body.budgetId}' does not allow a true-up (trueUp: false)`)
        if (line === undefined) throw new CostReportMissingError(body.provider, day)
        if (line.filtered) throw new TrueUpRefusedError(`budget '${body.budgetId}' has model or tag filters, which the provider's bill cannot follow: it is not trued up`)
        const outcome = await tx.trueUp(body.provider, day, body.budgetId, context)
        // No bucket of the mapped dimension that day (a mistyped mapping value, say): an amount of 0 is no bill.
        if (outcome.status === 'no-report' || outcome.status === 'no-bucket') throw new CostReportMissingError(body.provider, day)
        return { ...outcome, status: outcome.status, amount: outcome.amount ?? '0' }
      })
    }
  }
}

export type Reconciliation = ReturnType<typeof createReconciliationService>
