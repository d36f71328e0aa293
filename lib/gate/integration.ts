// The Budget Integration service: budgets for a model call's caller. The gate's hooks and gateway code
// outside them use it alike, so there is one decision (decide) and one way to reserve and settle.
import { randomUUID } from 'node:crypto'
import { bestEffort } from '../kernel/best-effort.js'
import { isUuid } from '../kernel/database/db.js'
import type { Logger } from '../kernel/logger.js'
import { BudgetNotFoundError, DatabaseUnavailableError } from '../kernel/errors.js'
import { checkStorableString } from '../kernel/json-limits.js'
import type { BudgetDefinition, NearLimitPolicy } from '../kernel/schemas.js'
import { parsePositiveMoney, toUnits, type Money } from '../kernel/money.js'
import { leasable, treesOf, withinCaps, type BudgetNumbers, type BudgetTerms } from './budget-terms.js'
import type { Hold } from './hold-repository.js'
import type { CallFilter } from './line-repository.js'
import type { StandingRepository } from './standing-repository.js'
import type { SweeperRepository } from './sweeper-repository.js'
import type { ShadowRepository } from './shadow-repository.js'
import type { BudgetLines } from './budget-lines.js'
import type { DefinitionsVersion } from './definitions-version.js'
import type { HeldShare, HoldQueue } from './holds.js'
import { decidedOn, type Admission, type Leases } from './leases.js'
import { NOTHING_TAKEN, isRateRefusal, type RateAdmission, type RateLimits, type RateRefusal } from './rate-limits.js'
import { sweptBeforeSettling, type SettleOutcome, type SettlementQueue } from './settlements.js'
import type { Settlement } from './settlement-repository.js'
import { bindingBudget, decide, shadowOutcome, type BudgetConstraintCheck, type ModelPolicy } from './decision.js'
import type { BudgetStatusInfo } from '../usage/index.js'
import type { WindowLedger } from './window-ledger.js'
import type { UsageTracker, UsageMetadata } from '../usage/index.js'
import { toScopes, type CallerScopes } from '../kernel/scopes.js'

/**
 * A call's line found changed under its hold (a window changed, a budget created or changed) is loaded
 * and held on again for as long as the gate's deadline allows: changes landing during one admission
 * are admitted on the line as it ends up, and only a line that changes under every try until the
 * deadline is refused 503. After the first tries, a pause that grows to LINE_PAUSE_MS between tries
 * lets a burst of admin changes finish instead of meeting each of them.
 */
const LINE_PAUSE_MS = 50

/**
 * A request id a library caller gives is stored with its hold, its usage record and its lease's calls:
 * refused before any budget work when PostgreSQL could not store it (a NUL failed a whole hold batch with
 * 22021, and a leased call's settlement after it was served), as the admin API refuses it (1 to 200 characters).
 */
const checkRequestId = (requestId: unknown): string => checkStorableString(requestId, 'requestId', { min: 1, max: 200 })

export interface IntegrationOptions {
  /** The currency of estimates and costs; a budget in another currency applies too, converted at the rate in force (budget_convert). */
  currency: string
  /** Prices, cheap models and downgrades: how restrict-models and auto-downgrade treat a model. */
  models: Omit<ModelPolicy, 'model'>
  reservationTtlMs: number
  /** The longest the gate waits for PostgreSQL before answering by its failure mode. */
  timeoutMs: number
  /** The gate's nearLimit: whether a shadow budget without its own would have clamped a call it had no room for. */
  nearLimit: NearLimitPolicy
}

export interface Reservation {
  check: BudgetConstraintCheck
  /** Null when nothing was reserved: refused, or no budget applies. */
  reservationId: string | null
  /** The rate limit that refused the call (check.code 'rate_limit_exceeded'), with the numbers of OpenAI's 429. */
  rateLimited?: RateRefusal
}

/** What reserveCall takes beside the caller and the estimate: the request's id (stored with the hold), the model, the call's worst-case tokens (rate limits). */
export interface ReserveOptions {
  requestId?: string
  model?: string
  tokens?: number
}

export interface SettleInfo {
  source?: string
  description?: string
  metadata?: UsageMetadata
}

interface Admitted {
  /** The id the call's hold (if any) was taken under. */
  reservationId: string
  line: BudgetTerms[]
  admission: Admission | null
  hold: Hold
  rate: RateAdmission | RateRefusal
}

/** The tokens a settled call used, from its usage metadata; null when it does not say. */
function usedTokens (metadata: Record<string, unknown>): number | null {
  const { inputTokens, outputTokens } = metadata
  return typeof inputTokens === 'number' && typeof outputTokens === 'number' ? inputTokens + outputTokens : null
}

/** What a lease's take decides for calls to one model: the same for every estimate, since the take fits the call whatever it is (Admission.take). */
interface TakeDecision { canProceed: boolean, activeActions: readonly string[], downgradeTo: string | null }

/**
 * A leased call's check. It is DECIDED on the lease's take (decidedOn): the lease never spans a threshold
 * whose alert does more than notify, and its slice holds the call. The window ledger's numbers
 * (admission.numbers: fresher, but counted by this process alone, window-ledger.ts) only feed what the check
 * reports: remaining, the binding budget, its spend and reservations. Where they would refuse the call or
 * bring an action into force that the take did not, they are not reported, and the take's decision is.
 * The take's decision does not depend on the estimate (every number but the estimate is the take's, and
 * the call fits), so it is made once per take and model (`decisions`), and a call runs one decide().
 */
function leasedCheck (line: BudgetTerms[], admission: Admission, estimate: Money, policy: ModelPolicy | undefined,
  decisions: WeakMap<readonly BudgetNumbers[], Map<string, TakeDecision>>): BudgetConstraintCheck {
  let byModel = decisions.get(admission.take)
  if (byModel === undefined) decisions.set(admission.take, byModel = new Map())
  const model = policy === undefined ? '' : `:${policy.model}`
  let taken = byModel.get(model)
  if (taken === undefined) {
    const { canProceed, activeActions, downgradeTo } = decide(line, decidedOn(admission), estimate, policy)
    byModel.set(model, taken = { canProceed, activeActions, downgradeTo })
  }
  if (taken.canProceed) {
    const reported = decide(line, admission.numbers, estimate, policy)
    const sameActions = reported.activeActions.length === taken.activeActions.length && reported.activeActions.every((action) => taken.activeActions.includes(action))
    if (reported.canProceed && sameActions && reported.downgradeTo === taken.downgradeTo) return reported
  }
  return decide(line, decidedOn(admission), estimate, policy)
}

/** What stands for a hold when a lease admitted the call (one object for all of them, never changed). */
const LEASED: Hold = { current: true, reserved: true, numbers: [], definitionsVersion: -1 }

/** The decision for a call a rate limit refused: no money was looked at. */
function rateLimitedCheck (refusal: RateRefusal, estimate: Money): BudgetConstraintCheck {
  const per = refusal.dimension === 'requests' ? `${refusal.requestsPerMinute ?? 0} requests` : `${refusal.tokensPerMinute ?? 0} tokens`
  return {
    canProceed: false,
    code: 'rate_limit_exceeded',
    reason: refusal.tooLarge
      ? `Request too large for budget '${refusal.name}' on tokens per minute: limit ${per} a minute; the call's worst case needs more. Lower max_tokens or the prompt.`
      : `Rate limit reached for budget '${refusal.name}' on ${refusal.dimension} per minute: limit ${per} a minute. Please try again in ${refusal.retryAfterMs}ms.`,
    suggestedActions: [refusal.tooLarge ? 'Lower max_tokens or shorten the prompt' : `Retry after ${refusal.retryAfterMs} ms`],
    estimatedCost: estimate,
    bindingBudgetId: refusal.budgetId,
    limit: null,
    currentAmount: null,
    reservedAmount: null,
    remaining: null,
    currency: null,
    bindingEstimate: null,
    status: null,
    activeActions: [],
    downgradeTo: null,
    budgets: [],
    shadow: []
  }
}

/** The parts the integration works with, each built once by the plugin (lib/index.ts). */
export interface GateMachinery {
  /** The reads that hold nothing (the checks, the summary) and the sweeper. */
  reservations: StandingRepository & SweeperRepository & ShadowRepository
  lines: BudgetLines
  leases: Leases
  holds: HoldQueue
  settlements: SettlementQueue
  rateLimits: RateLimits
  /** The definitions as this process knows them: what a statement saw, and what to forget when they move. */
  versions: DefinitionsVersion
  /** A live budget by id, null for any other id (the budgets' own store). */
  findBudget: (id: string) => Promise<BudgetDefinition | null>
  /** Each window's money as this process knows it: what a leased admission reports. */
  ledger: WindowLedger
  /** The database is a Citus cluster: the sweeper sweeps tree by tree, each call on its tree's node. */
  onCitus: boolean
}

export function createBudgetIntegration ({ reservations, lines, leases, holds, settlements, rateLimits, versions, findBudget, ledger, onCitus }: GateMachinery, tracker: UsageTracker, options: IntegrationOptions,
  log: Logger) {
  /** The call as filtered budgets see it: the model by its price-table name (a dated snapshot matches as its base model). */
  function callOf (caller: CallerScopes, model: string | undefined): CallFilter {
    // The scope ids and the model's name go to PostgreSQL as text: one it cannot hold (a NUL) is the caller's
    // mistake, answered as one, not a database error. (The name a price resolves to has none.)
    const scopes = toScopes(caller)
    for (const scope of scopes) checkStorableString(scope.id, `caller.${scope.type}`)
    const name = model === undefined ? null : options.models.prices.resolve(model)?.model ?? checkStorableString(model, 'model')
    return { scopes, model: name, ...(caller.tags === undefined ? {} : { tags: caller.tags }) }
  }

  /** Waits at most timeoutMs; a late answer is handed to `late` (to undo what it did). */
  async function withDeadline<T> (work: Promise<T>, late: (result: T) => unknown = () => {}): Promise<T> {
    let timer: NodeJS.Timeout | undefined
    let timedOut = false
    const deadline = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => { timedOut = true; reject(new DatabaseUnavailableError()) }, options.timeoutMs)
    })
    work.then((result) => {
      if (timedOut) void bestEffort(log, async () => await late(result), 'undoing an admission answered after the gate\'s deadline failed')
    }, (error: unknown) => {
      // Before the deadline the race throws it. After, the caller had its 503 and the admission took nothing (it gives back what it took when it fails).
      if (timedOut) log.debug({ err: error }, 'an admission failed after the gate\'s deadline had answered the call')
    })
    try {
      return await Promise.race([work, deadline])
    } catch (error) {
      const code = (error as { code?: string }).code
      if (code === '55P03') throw new DatabaseUnavailableError({ cause: error }) // a queue on a hot budget: answer now
      throw error
    } finally {
      clearTimeout(timer)
    }
  }

  /**
   * Ends a call's hold or lease admission: records `actualCost` once (null or 0: nothing to charge) and
   * releases the hold. Resolves with what the settlement did, each case by name: recorded (with the usage
   * record's id), released, already recorded (another reservation of the request recorded it), expired (its
   * lease was swept), or not found (no hold under this id: swept, or settled before).
   */
  async function settleCall (reservationId: string, actualCost: Money | number | string | null, info: SettleInfo = {}): Promise<SettleOutcome> {
    const actual = actualCost === null || toUnits(String(actualCost)) === 0n ? null : parsePositiveMoney(actualCost, 'actualCost')
    const values = { source: info.source ?? 'gateway', description: info.description ?? null, metadata: info.metadata ?? {} }
    // What this process holds of the call is taken at once, before any wait: a second settlement of the same id
    // finds none of it.
    const rated = rateAdmitted.get(reservationId)
    rateAdmitted.delete(reservationId)
    const leased = admitted.get(reservationId)
    admitted.delete(reservationId)
    const made = holdsMade.get(reservationId)
    holdsMade.delete(reservationId)
    // A debt it leaves on a rate limit (it used more tokens than it reserved) is in the bucket before its use is
    // recorded: a process that sees the record sees the debt.
    if (rated !== undefined) await rateLimits.end(rated.rate, actual === null ? null : usedTokens(values.metadata) ?? rated.tokens)
    if (leased !== undefined) return await leases.end(leased.admission, actual, { requestId: leased.requestId, ...values })
    // No hold was ever made under an id that is no UUID (a typo, '' from a missing field): as PostgreSQL's
    // 22P02 it would fail the batch it joined and be logged as a failed settlement, for nothing held.
    if (typeof reservationId !== 'string' || !isUuid(reservationId)) return { outcome: 'not-found' }
    const origin = made === undefined ? {} : { origin: { requestId: made.requestId, budgetIds: made.budgetIds }, trees: made.trees }
    const settlement: Settlement = { reservationId, ...origin, actualCost: actual, ...values }
    const settled = await settlements.settle(settlement)
    if (made !== undefined && !sweptBeforeSettling(settled)) {
      // As budget_settle_batch moved it: the cost to each budget's settled spend (no conversion in the gate's currency), its hold given back.
      const spent = settled.outcome === 'recorded' && actual !== null ? toUnits(actual) : 0n
      for (const share of made.held) ledger.moved(share.budgetId, share.periodStart, spent, share.units, settlement.sentAt ?? 0)
    }
    return settled
  }

  /** Ends the rate allowance of a served call admitted without a hold: with the tokens it used, else those it reserved. */
  function endUnheldRate (requestId: string, used: number | null): void {
    const rated = rateUnheld.get(requestId)
    if (rated === undefined) return
    rateUnheld.delete(requestId)
    rateLimits.end(rated.rate, used ?? rated.tokens)
  }

  /**
   * Gives back a hold that no call will use. Throws when the settlement fails: the hold then stays
   * until its TTL, and the sweeper counts it as spent at its estimate.
   */
  async function releaseHold (reservationId: string, budgetIds: string[], why: string): Promise<SettleOutcome> {
    const released = await settleCall(reservationId, null)
    // Swept before it was given back: counted as spent, for a call that was never served.
    if (sweptBeforeSettling(released)) log.warn({ reservationId, budgetIds }, `a hold given back (${why}) had expired and was counted as spent at its estimate`)
    return released
  }

  /** releaseHold when nobody waits for it: a failure is logged (warn) with the hold's ids, since it will be billed. */
  async function giveBackHold (reservationId: string, budgetIds: string[], why: string): Promise<void> {
    await bestEffort(log, async () => await releaseHold(reservationId, budgetIds, why),
      `giving back a hold (${why}) failed: it stays until it expires, and is then counted as spent at its estimate`, { reservationId, budgetIds })
  }

  // Calls admitted from a lease, by the id the caller settles them with.
  const admitted = new Map<string, { admission: Admission, requestId: string }>()
  // What reserved calls took from rate limits, and the tokens they reserved, by the same id.
  const rateAdmitted = new Map<string, { rate: RateAdmission, tokens: number, at: number }>()
  // The same for admitted calls that hold nothing (a shadow-only line without a rate), by request id.
  const rateUnheld = new Map<string, { rate: RateAdmission, tokens: number, at: number }>()
  // Holds taken, by reservation id, until they settle: what each held on the budgets the ledger keeps.
  const holdsMade = new Map<string, { requestId: string, budgetIds: string[], trees: string[], held: HeldShare[], at: number }>()
  let prunedAt = Date.now()

  /**
   * Forgets the entries of calls a library caller never settled, once their hold may have expired and been
   * swept (older than the reservation TTL): both maps would otherwise grow for as long as the process lives.
   * Run from reserveCall at most twice per TTL; the maps are in insertion order, so it stops at the first
   * young entry. A call settled later still settles (without the cut lookup by request id, the ledger move,
   * or its rate allowance given back early: the allowance's minute has long passed).
   */
  function pruneUnsettled (now: number): void {
    if (now - prunedAt < options.reservationTtlMs / 2) return
    prunedAt = now
    for (const map of [holdsMade, rateAdmitted, rateUnheld]) {
      for (const [id, entry] of map) {
        if (now - entry.at <= options.reservationTtlMs) break
        map.delete(id)
      }
    }
  }

  /**
   * Admits the call from its line's lease when the line is hot and has room, else holds `estimate`
   * on the line for this call alone. A line found out of date (a window rolled over, a budget
   * changed) is reloaded and tried again while before `deadline`: budgets
   * on one line changing one after the other are definitions changing, not a database fault.
   */
  async function admitOrHold (call: CallFilter, estimate: Money, requestId: string, tokens: number, deadline: number): Promise<Admitted> {
    const nothingHeld: Hold = { current: true, reserved: false, numbers: [], definitionsVersion: -1 }
    for (let attempt = 1; ; attempt++) {
      // A fresh id each try: the hold of a try found stale is still being given back under its own.
      const reservationId = randomUUID()
      const { key, line, validUntil, definitionsVersion } = await lines.lineOf(call)
      if (line.length === 0) return { reservationId, line, admission: null, hold: nothingHeld, rate: NOTHING_TAKEN }
      // Rate limits first: a call over one takes no money at all.
      const rate = await rateLimits.admit(line, tokens)
      if (isRateRefusal(rate)) return { reservationId, line, admission: null, hold: nothingHeld, rate }
      try {
        // A line with a budget in another currency is held call by call (each hold converts at the rate in force);
        // a call over a budget's cap on one call too, so that the hold refuses it (budget_within_cap).
        // A line with a shadow budget too: only a hold judges it on its as-if ledger.
        const admission = leasable(line, options.currency) && withinCaps(line, estimate) ? await leases.admit(key, line, validUntil, estimate) : null
        if (admission !== null) return { reservationId, line, admission, hold: LEASED, rate }
        const hold = await holds.hold({ reservationId, requestId, amount: estimate, line })
        versions.observe(hold.definitionsVersion)
        if (hold.reserved) holdsMade.set(reservationId, { requestId, budgetIds: line.map((budget) => budget.budgetId), trees: treesOf(line), held: hold.held, at: Date.now() })
        // A hold on a line older than the definitions it met (a budget created, changed or filtered since
        // this process loaded the line) is given back and taken again on the line as it is now.
        const stale = hold.current && hold.definitionsVersion > definitionsVersion
        const again = Date.now() < deadline
        if (stale && hold.reserved && again) void giveBackHold(reservationId, line.map((budget) => budget.budgetId), 'its line was out of date')
        if ((hold.current && !stale) || !again) return { reservationId, line, admission: null, hold, rate }
      } catch (error) {
        rateLimits.end(rate, null)
        throw error
      }
      rateLimits.end(rate, null) // the line was out of date: its allowance goes back, the line reloads
      versions.forget() // the lines, and the leases and allowances taken under them
      if (attempt > 2) await new Promise((resolve) => setTimeout(resolve, Math.min(LINE_PAUSE_MS, 5 * attempt, Math.max(0, deadline - Date.now()))))
    }
  }

  /**
   * admitOrHold when the call can be admitted now from its line's lease: the line cached and current, every
   * rate allowance covering the call, the lease holding room for it. Null when anything would need a
   * statement or a wait: admitOrHold then does it all (and what this took, it gives back first).
   */
  function admitNow (call: CallFilter, estimate: Money, tokens: number): { reservationId: string, line: BudgetTerms[], admission: Admission, rate: RateAdmission } | null {
    const cached = lines.lineNow(call)
    if (cached === null || cached.line.length === 0 || !leasable(cached.line, options.currency) || !withinCaps(cached.line, estimate)) return null
    const rate = rateLimits.admitNow(cached.line, tokens)
    if (rate === null) return null
    const admission = leases.admitNow(cached.key, cached.line, estimate)
    if (admission === null) {
      rateLimits.end(rate, null)
      return null
    }
    return { reservationId: randomUUID(), line: cached.line, admission, rate }
  }

  /** Counts a call's shadow verdicts and marks its holds (shadow-repository.ts); a failure is logged, never the call's. */
  async function noteShadow (reservationId: string | null, line: BudgetTerms[], check: BudgetConstraintCheck): Promise<void> {
    const notes = check.shadow.map((verdict) => {
      const budget = line.find((one) => one.budgetId === verdict.budgetId)!
      return { budgetId: verdict.budgetId, rootId: budget.rootId, periodStart: budget.periodStart, code: verdict.code, outcome: verdict.outcome, excluded: verdict.outcome === 'refused' }
    })
    await bestEffort(log, async () => { await reservations.noteShadow(reservationId, notes) }, 'recording a shadow budget\'s verdict failed: it is not counted', { reservationId })
  }

  // The decisions of lease takes, by take and model (leasedCheck).
  const takeDecisions = new WeakMap<readonly BudgetNumbers[], Map<string, TakeDecision>>()

  /** A call as reserveCall takes it: its request id checked, the filter its budgets are found by, its model's policy. */
  interface ReservingCall { call: CallFilter, policy: ModelPolicy | undefined, requestId: string, tokens: number }

  function reservingCall (caller: CallerScopes, { requestId = randomUUID(), model, tokens = 0 }: ReserveOptions): ReservingCall {
    checkRequestId(requestId)
    pruneUnsettled(Date.now())
    return { call: callOf(caller, model), policy: model === undefined ? undefined : { ...options.models, model }, requestId, tokens }
  }

  /**
   * A call its line's lease admitted: kept for its settlement, at once. Refused by the check (never: a lease
   * spans no action's threshold), it is refused as a hold would be, once what it took is given back.
   */
  function leasedReservation ({ policy, requestId, tokens }: ReservingCall, reservationId: string, line: BudgetTerms[], admission: Admission,
    rate: RateAdmission, estimate: Money): Reservation | Promise<Reservation> {
    const check = leasedCheck(line, admission, estimate, policy, takeDecisions)
    if (check.canProceed) {
      admitted.set(reservationId, { admission, requestId })
      if (rate.taken.length > 0) rateAdmitted.set(reservationId, { rate, tokens, at: Date.now() })
      return { check, reservationId }
    }
    rateLimits.end(rate, null)
    return leases.end(admission, null, { requestId, source: 'gateway', description: null, metadata: {} }).then(() => ({ check, reservationId: null }))
  }

  /** reserveCall's answer, at once when nothing needs waiting for: no scopes to find budgets by, or a hot line whose lease admits the call in memory. */
  function reserve (caller: CallerScopes, estimate: Money, options: ReserveOptions): Reservation | Promise<Reservation> {
    const reserving = reservingCall(caller, options)
    if (reserving.call.scopes.length === 0) return { check: decide([], [], estimate, reserving.policy), reservationId: null }
    // A hot line with room is admitted here, in memory, with nothing to wait for (and so no deadline).
    const now = admitNow(reserving.call, estimate, reserving.tokens)
    if (now !== null) return leasedReservation(reserving, now.reservationId, now.line, now.admission, now.rate, estimate)
    return reserveHeld(reserving, estimate)
  }

  /** reserveCall's answer when the line must be loaded, a lease taken or topped up, or the call held: all within timeoutMs. */
  async function reserveHeld (reserving: ReservingCall, estimate: Money): Promise<Reservation> {
    const { call, policy, requestId, tokens } = reserving
    const { reservationId, line, admission, hold: result, rate } = await withDeadline(
      admitOrHold(call, estimate, requestId, tokens, Date.now() + options.timeoutMs),
      // Answered too late for the caller, who was refused: give back what it took.
      async (late) => {
        if (!isRateRefusal(late.rate)) rateLimits.end(late.rate, null)
        if (late.admission !== null) await leases.end(late.admission, null, { requestId, source: 'gateway', description: null, metadata: {} })
        else if (late.hold.reserved) await giveBackHold(late.reservationId, late.line.map((budget) => budget.budgetId), 'answered after the gate\'s deadline')
      }
    )
    if (isRateRefusal(rate)) return { check: rateLimitedCheck(rate, estimate), reservationId: null, rateLimited: rate }
    if (admission !== null) return leasedReservation(reserving, reservationId, line, admission, rate, estimate)
    if (!result.current) { rateLimits.end(rate, null); throw new DatabaseUnavailableError() } // the line changed under every try
    const decided = decide(line, result.numbers, estimate, policy)
    // A shadow budget without a nearLimit of its own would have clamped as the gate does.
    const check = decided.shadow.length === 0 ? decided : { ...decided, shadow: decided.shadow.map((verdict) => ({ ...verdict, outcome: shadowOutcome(verdict, options.nearLimit) })) }
    if (line.length === 0) return { check, reservationId: null } // no budget applies to this caller
    if (result.reserved && check.canProceed && result.numbers.every((measured) => measured.estimate === null)) {
      // Nothing held: the line's only budgets are shadow ones that cannot convert the estimate (a shadow budget
      // never refuses, and takes no spend it cannot convert). No hold to settle: the call is recorded as one
      // no budget covers. Its rate allowance is ended as a held call's is, by request id: with the tokens it
      // used once recorded (recordUnbudgetedCall), with none when it failed (releaseUnheldCall).
      holdsMade.delete(reservationId)
      if (rate.taken.length > 0) rateUnheld.set(requestId, { rate, tokens, at: Date.now() })
      else rateLimits.end(rate, null)
      await noteShadow(null, line, check)
      return { check, reservationId: null }
    }
    if (result.reserved && check.canProceed && rate.taken.length > 0) rateAdmitted.set(reservationId, { rate, tokens, at: Date.now() })
    else rateLimits.end(rate, null)
    if (result.reserved && !check.canProceed) {
      // Room enough, but an alert action (block-all, require-approval, restrict-models) refuses: undo the reservation.
      await releaseHold(reservationId, line.map((budget) => budget.budgetId), 'an alert action refused the call')
    }
    // What the shadow budgets would have done, counted (and the hold left out of their as-if ledgers) before
    // the call goes on: a call the next hold meets is already out of them.
    if (check.shadow.length > 0) await noteShadow(result.reserved && check.canProceed ? reservationId : null, line, check)
    if (!result.reserved && check.canProceed) {
      // Cannot happen: decide() reads the fits that the hold decided. Refuse rather than overspend.
      return { check: { ...check, canProceed: false, code: 'budget_exceeded', reason: 'A budget has no room for the estimated cost' }, reservationId: null }
    }
    return { check, reservationId: result.reserved && check.canProceed ? reservationId : null }
  }

  return {
    /**
     * Would spending `estimatedCost` on this budget go ahead? Checks the budget and every ancestor with
     * a period now, on the same numbers the gate decides on (approvals and projected alerts included);
     * reserves nothing. (The instance's budgetTracker answers it too, as the design card has it.)
     */
    async checkBudgetConstraints (budgetId: string, estimatedCost: string | number): Promise<BudgetConstraintCheck> {
      const estimate: Money = parsePositiveMoney(estimatedCost, 'estimatedCost')
      const budget = await findBudget(budgetId)
      if (budget === null) throw new BudgetNotFoundError(budgetId)
      const { terms, numbers } = await reservations.listLineage(budget.id, budget.currency, estimate)
      return decide(terms, numbers, estimate)
    },

    /**
     * Would a call of `estimatedCost` (to `model`, when given) go ahead for this caller now? Reads only; reserves
     * nothing. Throws DatabaseUnavailableError past timeoutMs, as reserveCall does: the gate reads it for a call
     * over the caller's cap, and that call waits no longer than one that holds.
     */
    async checkCaller (caller: CallerScopes, estimatedCost: Money | number, model?: string): Promise<BudgetConstraintCheck> {
      const estimate = parsePositiveMoney(estimatedCost, 'estimatedCost')
      const call = callOf(caller, model)
      const { terms, numbers } = call.scopes.length === 0 ? { terms: [], numbers: [] } : await withDeadline(reservations.listApplicable(call, options.currency, estimate))
      return decide(terms, numbers, estimate, model === undefined ? undefined : { ...options.models, model })
    },

    /**
     * Reserves `estimate` on every budget that applies to the caller, atomically, in one round trip,
     * or refuses and reserves nothing. Throws DatabaseUnavailableError past timeoutMs.
     */
    async reserveCall (caller: CallerScopes, estimate: Money, options: ReserveOptions = {}): Promise<Reservation> {
      return await reserve(caller, estimate, options)
    },

    /**
     * reserveCall without a promise when it can answer at once (a caller with no scopes, or a hot line whose
     * lease admits the call in memory: most calls of a busy gateway); a promise, as reserveCall's, otherwise.
     * What reserveCall rejects with, it answers as a rejected promise (never a throw). The gate's hooks call this.
     */
    reserveCallNow (caller: CallerScopes, estimate: Money, options: ReserveOptions = {}): Reservation | Promise<Reservation> {
      try {
        return reserve(caller, estimate, options)
      } catch (error) {
        return Promise.reject(error)
      }
    },

    /** Ends a reservation: records the actual cost once (null when the provider did not charge) and releases the hold. Resolves with which of the four cases it was (SettleOutcome). */
    settleCall,

    /**
     * Records a served call that no budget covered (no hold was taken): a usage record without a budget,
     * in the gate's currency, keyed by the call's request id so that a record sent again is stored once.
     * It counts toward no budget, now or later (a budget created since counts from its own start). Queued
     * with the settlements and committed in their batches: resolves once its batch commits.
     */
    async recordUnbudgetedCall (cost: Money, { requestId, occurredAt = new Date(), ...info }: SettleInfo & { requestId: string, occurredAt?: Date }): Promise<SettleOutcome> {
      checkRequestId(requestId)
      endUnheldRate(requestId, usedTokens(info.metadata ?? {}))
      return await settlements.recordUnbudgeted({
        id: randomUUID(), // its record's: sent again after a connection cut, the batch finds it by this id
        requestId,
        amount: parsePositiveMoney(cost, 'cost'),
        currency: options.currency,
        source: info.source ?? 'gateway',
        description: info.description ?? null,
        metadata: { ...info.metadata, requestId },
        occurredAt
      })
    },

    /** Ends a call admitted without a hold (reservationId null) that was not served: its rate allowance goes back whole. */
    releaseUnheldCall (requestId: string): void {
      const rated = rateUnheld.get(requestId)
      if (rated === undefined) return
      rateUnheld.delete(requestId)
      rateLimits.end(rated.rate, null)
    },

    /** Ends a reservation with nothing to charge: 'released', or 'not-found' when there was no hold (swept, and counted at its estimate; or settled before). */
    async releaseCall (reservationId: string): Promise<SettleOutcome> {
      return await settleCall(reservationId, null)
    },

    /** Records a model call's cost without a reservation: once, counting toward every budget that applies to the caller. */
    async recordModelCall (caller: CallerScopes, cost: Money | number, info: SettleInfo & { requestId?: string } = {}) {
      const model = typeof info.metadata?.modelId === 'string' ? info.metadata.modelId : undefined
      const applicable = (await reservations.listApplicable(callOf(caller, model), options.currency)).terms.filter((budget) => budget.scopeMatched)
      const [primary, ...others] = applicable
      if (primary === undefined) return null
      return await tracker.recordUsage({
        budgetId: primary.budgetId,
        amount: cost,
        currency: options.currency,
        source: info.source ?? 'gateway',
        description: info.description,
        metadata: {
          ...info.metadata,
          ...(caller.tags === undefined ? {} : { tags: caller.tags }),
          ...(info.requestId === undefined ? {} : { requestId: info.requestId })
        },
        alsoCountsToward: others.map((budget) => budget.budgetId)
      // A retry is the same request whichever budget the caller's scopes reach by then (a budget created since).
      }, { scopes: Object.fromEntries(toScopes(caller).map((scope) => [scope.type, scope.id])) })
    },

    /**
     * Every budget that applies to the caller (for calls to `model`, when given) with its status, and the one
     * that binds first: the gate's binding budget (bindingBudget), which x-budget-id names for a call it admits.
     */
    async getCallerSummary (caller: CallerScopes, model?: string): Promise<{ budgets: Array<BudgetStatusInfo & { name: string, scopeMatched: boolean }>, bindingBudgetId: string | null }> {
      // No call is named: the rule is read for one unit of the gate's currency, converted as a call's estimate
      // is. Across currencies it compares remaining / estimate, so any estimate orders budgets alike, up to
      // the conversion's rounding up at 10 decimals.
      const { terms, numbers } = await reservations.listApplicable(callOf(caller, model), options.currency, '1')
      const budgets = await Promise.all(terms.map(async (budget) => ({
        ...await tracker.getBudgetStatus(budget.budgetId), name: budget.name, scopeMatched: budget.scopeMatched
      })))
      // numbers[index] was read with terms[index], in one row (lib/gate/standing-repository.ts).
      const binding = bindingBudget(budgets.map((budget, index) => ({ budgetId: budget.budgetId, remaining: budget.remaining, currency: budget.currency, estimatedCost: numbers[index]!.estimate })))
      return { budgets, bindingBudgetId: binding?.budgetId ?? null }
    },

    /** Settles reservations whose process died: each counts as spent at its estimate (see sql/functions/sweeper.sql). */
    async sweepExpiredReservations (limit = 100): Promise<number> {
      return await reservations.sweepExpired(limit, { byTree: onCitus })
    }
  }
}

export type BudgetIntegration = ReturnType<typeof createBudgetIntegration>

/**
 * The instance's budgetTracker, as the design card names it: the usage ledger's records and reads, and the
 * gate's check on one budget (checkBudgetConstraints), which decides as the gate does and so lives here.
 */
export type BudgetTracker = UsageTracker & Pick<BudgetIntegration, 'checkBudgetConstraints'>
