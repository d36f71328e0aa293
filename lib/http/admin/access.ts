// Scoped admin access on the admin routes: each route says what it needs, and a scoped principal touches only
// the budgets of its area (lib/access). A route that says nothing is for platform admins: access fails closed.
import type { FastifyRequest } from 'fastify'
import { allows, type Area, type BudgetAccess, type Permission, type Principal } from '../../access/index.js'
import { ForbiddenError, IdempotencyConflictError, OutOfScopeError } from '../../kernel/errors.js'
import type { BudgetConstraintCheck } from '../../gate/index.js'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** What the route needs (lib/access/principal.ts); a route that names nothing needs a platform admin. */
    access?: Permission
    /** Its `:id` names a budget, which must lie in a scoped principal's area. */
    budgetParam?: boolean
  }
  interface FastifyRequest {
    /** Who called the admin API and what they may do; null outside it. */
    budgetPrincipal: Principal | null
    /** The budgets a scoped principal may touch; null for one without scopes, and outside the admin API. */
    budgetArea: Area | null
  }
}

const DOING: Record<Permission, string> = {
  read: 'read budgets',
  write: 'change budgets or record usage',
  approve: 'decide approvals',
  platform: 'change what every tree shares (exchange rates, channels, provider bills) or read across every tree'
}

/** The onRequest hook after authorization: the route's permission, then, for a scoped principal, its area. */
export function checkAccess (access: BudgetAccess) {
  return async (request: FastifyRequest): Promise<void> => {
    if (request.is404) return // no route: the not-found handler answers, whoever asks
    const principal = request.budgetPrincipal!
    const { access: permission = 'platform', budgetParam = false } = request.routeOptions.config
    if (!allows(principal, permission)) throw new ForbiddenError(principal.role, DOING[permission])
    if (principal.scopes === null) return
    request.budgetArea = await access.areaOf(principal)
    if (budgetParam) requireInArea(request, (request.params as { id: string }).id)
  }
}

/** Refuses a scoped principal on a host's own route that reads every tree at once (budgetAdminGuard). */
export function requireEveryTree (principal: Principal): void {
  if (principal.scopes !== null) throw new OutOfScopeError('This route reads or changes every tree at once; it is open to principals without scopes only')
}

/**
 * Refuses a budget outside a scoped principal's area, with the same answer whether it exists or not.
 * `field`: the request's field that named it (none: the path's id).
 */
export function requireInArea (request: FastifyRequest, budgetId: string, field?: string): void {
  const area = request.budgetArea
  if (area !== null && !area.budgets.has(budgetId.toLowerCase())) {
    throw new OutOfScopeError(`${field === undefined ? '' : `Invalid '${field}': `}budget '${budgetId}' is not one of the budgets you may touch`, field)
  }
}

/** Refuses a change to a budget a scoped principal's scopes name: its area's roots are set by whoever granted them. */
export function requireBelowRoots (request: FastifyRequest, budgetId: string): void {
  requireInArea(request, budgetId)
  if (request.budgetArea?.roots.has(budgetId.toLowerCase()) === true) {
    throw new OutOfScopeError(`Budget '${budgetId}' is a root of the budgets you may touch: it is changed by whoever granted you access, not from within`)
  }
}

/**
 * Runs a usage write for a scoped principal: a key used before by another request answers the conflict
 * without that record's budget or amount, since the record may lie outside the area (keys are shared by every tree).
 */
export async function keyConflictsWithinArea<T> (request: FastifyRequest, key: string, write: () => Promise<T>): Promise<T> {
  try {
    return await write()
  } catch (error) {
    if (request.budgetArea === null || !(error instanceof IdempotencyConflictError)) throw error
    throw conflictElsewhere(key)
  }
}

function conflictElsewhere (key: string): IdempotencyConflictError {
  return new IdempotencyConflictError(key, 'by another request; a retry repeats the first request')
}

/**
 * A usage batch's check of each record, for a scoped principal (none for one without scopes): the record names
 * a budget of its area by budgetId. Records given by a caller's scopes are refused: those may reach budgets
 * outside the area (another team's project, the organization above).
 */
export function batchRecordCheck (request: FastifyRequest): ((record: { budgetId?: string, scopes?: unknown }) => void) | undefined {
  if (request.budgetArea === null) return undefined
  return (record) => {
    if (record.scopes !== undefined) throw new OutOfScopeError("Invalid 'scopes': a principal with scopes names each record's budget by budgetId, since a caller's scopes may reach budgets it may not touch", 'scopes')
    requireInArea(request, record.budgetId!, 'budgetId')
  }
}

/** A usage batch's answer as a scoped principal sees it: each record as recordWithinArea shows it, and a key conflict as keyConflictsWithinArea words it. */
export function batchWithinArea<Answer extends { results: BatchResult[] }> (request: FastifyRequest, records: Array<{ metadata?: unknown }>, answer: Answer): Answer {
  if (request.budgetArea === null) return answer
  return {
    ...answer,
    results: answer.results.map((result) => {
      if (result.record !== undefined) return { ...result, record: recordWithinArea(request, result.record) }
      if (result.error?.code !== 'BUDGET_ERR_IDEMPOTENCY_CONFLICT') return result
      const key = String((records[result.index]?.metadata as { requestId?: unknown } | undefined)?.requestId)
      const conflict = conflictElsewhere(key)
      return { ...result, error: { ...result.error, message: conflict.message } }
    })
  }
}

interface BatchResult {
  index: number
  record?: { budgetId: string | null }
  error?: { code: string, message: string }
}

/** A usage record as a scoped principal sees it: one stored on a budget outside its area does not name that budget. */
export function recordWithinArea<UsageRecord extends { budgetId: string | null }> (request: FastifyRequest, record: UsageRecord): UsageRecord {
  const area = request.budgetArea
  return area === null || record.budgetId === null || area.budgets.has(record.budgetId) ? record : { ...record, budgetId: null }
}

/** A usage page as a scoped principal sees it (recordWithinArea). */
export function usageWithinArea<Page extends { records: Array<{ budgetId: string | null }> }> (request: FastifyRequest, page: Page): Page {
  return request.budgetArea === null ? page : { ...page, records: page.records.map((record) => recordWithinArea(request, record)) }
}

/**
 * A constraint check as a scoped principal sees it: the budgets above its area are left out, and when one of
 * them binds, the answer says that it refuses (or would be the tightest) without naming it or its numbers.
 */
export function checkWithinArea (request: FastifyRequest, check: BudgetConstraintCheck): BudgetConstraintCheck {
  const area = request.budgetArea
  if (area === null) return check
  const budgets = check.budgets.filter((budget) => area.budgets.has(budget.budgetId))
  const shadow = check.shadow.filter((verdict) => area.budgets.has(verdict.budgetId))
  if (check.bindingBudgetId === null || area.budgets.has(check.bindingBudgetId)) return { ...check, budgets, shadow }
  return {
    ...check,
    budgets,
    shadow,
    reason: check.canProceed ? 'Within every budget' : 'A budget above the ones you may see refuses this cost',
    bindingBudgetId: null, limit: null, currentAmount: null, reservedAmount: null, remaining: null, currency: null, bindingEstimate: null, status: null
  }
}

/** A read's filter: the budget ids a scoped principal may see, or null (every budget). */
export function visibleBudgets (request: FastifyRequest): ReadonlySet<string> | null {
  return request.budgetArea?.budgets ?? null
}
