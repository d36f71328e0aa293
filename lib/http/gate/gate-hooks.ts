// The gate: a hook pair on every model-call route. preHandler (the body is parsed there, so the model
// and its output limit are known) resolves the caller, estimates the worst-case cost and reserves it on
// every applicable budget, or refuses with 402. When the response closes, finished or cut off, the hold
// ends: settled at the actual cost, at the estimate when a served call's cost is unknown, or released
// when nothing was served. No hold outlives its request. Every wire format (how to bound a request, read
// its usage, word a refusal) is the route's model API's (lib/model-apis); the path here is the same for all.
// Beside it: what a call is charged (charge.ts), a stream's usage read on its way (stream-usage.ts), when a
// client is gone (connection-watch.ts), OpenAI's 429 headers (rate-limit-headers.ts), nearLimit's clamp (clamp.ts),
// the caller's cap on one call (call-cost-cap.ts).
import { randomUUID } from 'node:crypto'
import { Readable } from 'node:stream'
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import { apiForUrl, isModelApiName, MODEL_APIS } from '../../model-apis/index.js'
import type { ModelApi, Refusal } from '../../model-apis/index.js'
import { InvalidFieldError, isDatabaseUnavailable, OptionsError } from '../../kernel/errors.js'
import { fromUnits, toUnits } from '../../kernel/money.js'
import type { BudgetConstraintCheck } from '../../gate/index.js'
import type { CostEstimate } from '../../pricing/index.js'
import { bindingOf } from '../../gate/index.js'
import type { Decision, DecisionOutcome } from '../../gate/index.js'
import type { BudgetMetrics } from '../../metrics/index.js'
import type { RateRefusal } from '../../gate/index.js'
import { sweptBeforeSettling } from '../../gate/index.js'
import { type BudgetIntegration, type Reservation } from '../../gate/index.js'
import { pricesAt, type PriceBook } from '../../pricing/index.js'
import type { UsageMetadata } from '../../usage/index.js'
import { checkTags } from '../../kernel/tags.js'
import { SCOPE_HEADERS, TAGS_HEADER, type BudgetGateState, type GateOptions, type GateRoute } from './gate-options.js'
import { costAtOutputLimit, largestAffordable, mayClamp, mayClampToCallerCap, roomFor } from './clamp.js'
import { callerCap, MAX_COST_HEADER, type CallerCap } from './call-cost-cap.js'
import { checkScopeId, type CallerScopes } from '../../kernel/scopes.js'
import type { Part } from '../../kernel/part.js'
import { chargeFor, storable, usageMetadata, type Charge } from './charge.js'
import { SHADOW_HEADER, shadowHeader } from './shadow.js'
import { watchConnection, type ConnectionWatch } from './connection-watch.js'
import { rateLimitHeaders } from './rate-limit-headers.js'
import { readStreamUsage, readThrough, type StreamFeed } from './stream-usage.js'

/** How often a clamped call measures the room again when other calls took it first. */
const CLAMP_ATTEMPTS = 3

function refusalCode (error: InvalidFieldError & { gateCode?: string }): string {
  if (error.gateCode !== undefined) return error.gateCode
  if (error.field === TAGS_HEADER) return 'invalid_tags'
  return error.field.startsWith('x-relay-') ? 'invalid_scope' : 'invalid_request'
}

/** A request the gate cannot bound or read: a 400 naming the field at fault. */
function invalidRequest (error: InvalidFieldError, context = ''): Refusal {
  return { status: 400, kind: 'invalid_request', code: refusalCode(error), message: `${context}${error.message}`, param: error.field, details: {} }
}

/** Every refusal of the gate: the status, and the body in the route's API's error shape. */
function refuse (reply: FastifyReply, api: ModelApi, refusal: Refusal): FastifyReply {
  return reply.code(refusal.status).send(api.errorBody(refusal))
}

/** The worst case of a call on one route: the operator's estimateCost when given, else the route's API's. */
type EstimateAt = (request: FastifyRequest, prices: PriceBook, model?: string) => Promise<CostEstimate>

/**
 * The API a route speaks when the gate guards it: named by gate.routes ({ url, api }) or the route's
 * config.budgetGate, else inferred from its path; null for a route the gate does not guard. A guarded
 * route whose API cannot be told throws, and the registration fails: it never passes ungated.
 */
function gatedApi (route: RouteOptions, routes: GateRoute[]): ModelApi | null {
  const marked = (route.config as { budgetGate?: unknown } | undefined)?.budgetGate
  const listed = routes.find((entry) => (typeof entry === 'string' ? entry : entry.url) === route.url)
  if (listed === undefined && (marked === undefined || marked === false)) return null
  const where = `the gated route ${[route.method].flat().join(',')} ${route.url}`
  const known = Object.keys(MODEL_APIS).map((name) => `'${name}'`).join(', ')
  if (marked !== undefined && typeof marked !== 'boolean' && typeof marked !== 'string') throw new OptionsError(`${where}: config.budgetGate must be true or an API name (${known})`)
  const named = typeof marked === 'string' ? marked : typeof listed === 'object' ? listed.api : apiForUrl(route.url)
  if (named === null) {
    throw new OptionsError(`${where}: its API cannot be told from its path; name it with gate.routes: [{ url: '${route.url}', api }] or config: { budgetGate: api } (api: ${known})`)
  }
  if (!isModelApiName(named)) throw new OptionsError(`${where} speaks ${JSON.stringify(named)}, an API the gate does not know (it knows ${known})`)
  return MODEL_APIS[named]!
}

const CONNECTION_WATCH = Symbol('relaycore.budgetConnectionWatch')
/** A gated request's connection watch, and whether its preHandler guards it (then the hold's end is what ends it). */
interface Watched { watch: ConnectionWatch, guarded: boolean }
type WatchedRequest = FastifyRequest & { [CONNECTION_WATCH]: Watched | null }

/** A call that no budget covers: it may proceed, and the decision met no budget at all (none for its scopes, or no scopes). */
function uncovered (check: BudgetConstraintCheck | null): boolean {
  return check !== null && check.canProceed && check.budgets.length === 0 && check.bindingBudgetId === null
}

/** One call through reserve(): what its passes read, and the hold they change. */
interface GatedCall {
  request: FastifyRequest
  reply: FastifyReply
  api: ModelApi
  estimateAt: EstimateAt
  prices: PriceBook
  caller: CallerScopes
  state: BudgetGateState
  /** The estimate of the model the call will use (the cheaper one after auto-downgrade): clamp prices other output limits from it. */
  current: CostEstimate
  /** The last hold's rate-limit refusal, if any. */
  rateLimited: RateRefusal | undefined
  /** The caller's cap on this call (x-budget-max-cost, or the operator's), in the gate's currency; null: none. */
  cap: CallerCap | null
  /** The check a downgrade or a clamp answered, with the estimate it was about: what the decision log keeps for it. */
  downgradedOn?: { check: BudgetConstraintCheck, estimate: string }
  clampedOn?: { check: BudgetConstraintCheck, estimate: string, byCallerCap?: true }
}

/** Where the gate notes its refusals, clamps and downgrades (lib/gate/decision-log.ts): in memory, never awaited. */
export interface DecisionNotes {
  note: (decision: Decision) => void
}

export function registerGate (fastify: FastifyInstance, options: GateOptions, integration: BudgetIntegration, book: PriceBook,
  metrics: BudgetMetrics, decisions: DecisionNotes | null = null, adminPrefix = ''): Part<null> {
  // Settlements and records on their way to PostgreSQL, and requests the gate is guarding: what closing waits for.
  const pending = new Set<Promise<unknown>>()
  let inFlight = 0
  // Each gated request's connection watch, from onRequest to its preHandler: a decoration, not a WeakMap, whose
  // entries V8 keeps through young-generation collections and so promotes every call's objects with them.
  fastify.decorateRequest(CONNECTION_WATCH, null)
  /**
   * Holds `estimate` for the call (what it held before is the integration's to replace), and notes the decision.
   * A call its line's lease admits at once is answered without a promise (reserveCallNow): most calls on a hot line.
   */
  function hold (call: GatedCall, estimate: CostEstimate): Promise<void> | undefined {
    const held = integration.reserveCallNow(call.caller, estimate.amount, { requestId: call.state.requestId, model: estimate.model, tokens: estimate.tokens })
    if (!(held instanceof Promise)) { heldOn(call, held); return }
    return held.then((reservation) => { heldOn(call, reservation) })
  }

  function heldOn (call: GatedCall, held: Reservation): void {
    call.rateLimited = held.rateLimited
    call.state.reservationId = held.reservationId
    call.state.check = held.check
    // What the shadow budgets would have done to this hold: counted, and named to the caller (the last hold's word stands).
    const shadow = held.check.shadow
    for (const verdict of shadow) metrics.shadowDecision(verdict.code, verdict.outcome)
    if (shadow.length > 0) void call.reply.header(SHADOW_HEADER, shadowHeader(shadow))
    else if (call.reply.hasHeader(SHADOW_HEADER)) void call.reply.removeHeader(SHADOW_HEADER)
  }

  /**
   * auto-downgrade is in force: give back the first hold, estimate the cheaper model, hold that. False
   * when the cheaper model cannot take the request (an image it has no bound for): answered with a 400.
   */
  async function downgrade (call: GatedCall, cheaper: string): Promise<boolean> {
    const { state } = call
    call.downgradedOn = { check: state.check!, estimate: state.estimate }
    if (state.reservationId !== null) {
      const released = await integration.releaseCall(state.reservationId)
      // Swept before the downgrade gave it back: counted as spent for a call that was not served on it.
      if (sweptBeforeSettling(released)) call.request.log.warn({ requestId: state.requestId }, 'the reservation given back for a downgrade had expired and was counted at its estimate')
    }
    state.reservationId = null
    let downgraded: CostEstimate
    try {
      downgraded = await call.estimateAt(call.request, call.prices, cheaper)
    } catch (error) {
      if (!(error instanceof InvalidFieldError)) throw error
      metrics.decision('invalid', refusalCode(error))
      await refuse(call.reply, call.api, invalidRequest(error, `auto-downgrade to ${cheaper}: `))
      return false
    }
    await hold(call, downgraded)
    if (uncovered(state.check)) {
      // No budget of the caller's takes the cheaper model (their filters name the one asked for): a
      // downgrade would take the call out of the budgets that asked for it. Hold the model asked for.
      call.downgradedOn = undefined
      await hold(call, call.current)
      return true
    }
    state.downgradedFrom = call.current.model
    state.model = downgraded.model
    state.estimate = downgraded.amount
    call.current = downgraded
    void call.reply.header('x-budget-downgraded-from', state.downgradedFrom)
    return true
  }

  /**
   * nearLimit 'clamp': a call whose worst case no longer fits goes ahead with fewer output tokens, the
   * most every budget can still afford, as long as the floor fits. The clamped worst case is what is
   * held; a call that took the room meanwhile makes the next try measure again. The search is
   * arithmetic on the estimate's input, counted once (never the prompt again per candidate). An API
   * without an output cap, or a model without a price (no maximum to start from), is never clamped.
   */
  async function clamp (call: GatedCall): Promise<void> {
    const { request, state, prices } = call
    const limit = call.api.outputLimit
    const price = prices.resolve(state.model)?.price
    if (limit === null || price === undefined) return
    const costAt = costAtOutputLimit(request, call.current, async (view) => await call.estimateAt(view, prices, state.model),
      (body, tokens) => limit.withLimit(body, tokens, price))
    for (let attempt = 1; attempt <= CLAMP_ATTEMPTS && mayClamp(state.check!, options.nearLimit); attempt++) {
      const budgetsRoom = roomFor(state.check!, state.estimate)
      // Every budget's room and cap, and the caller's cap: the least of them.
      const room = budgetsRoom !== null && call.cap !== null && call.cap.units < budgetsRoom ? call.cap.units : budgetsRoom
      const asked = limit.requested(request.body as Record<string, unknown>, price)
      if (room === null || asked === null) return
      const clamped = await largestAffordable(costAt, options.clampFloorTokens, asked, room)
      if (clamped === null) return
      const answered = { check: state.check!, estimate: state.estimate }
      await hold(call, clamped.estimate)
      if (!state.check!.canProceed) continue
      call.clampedOn = answered
      clampTo(call, clamped.tokens, clamped.estimate)
    }
  }

  /** Forwards the call with `tokens` as its output limit, and `estimate` (its worst case at that limit) as what it may cost. */
  function clampTo (call: GatedCall, tokens: number, estimate: CostEstimate): void {
    const { request, state } = call
    const price = call.prices.resolve(state.model)!.price
    request.body = call.api.outputLimit!.withLimit(request.body as Record<string, unknown>, tokens, price)
    state.estimate = estimate.amount
    state.clampedMaxTokens = tokens
    void call.reply.header('x-budget-clamped-max-tokens', String(tokens))
  }

  /**
   * A call whose worst case is over the caller's cap, before any hold: clamped to the cap when the rule allows
   * (mayClampToCallerCap, on a read of the caller's budgets that holds nothing) and the floor fits under it,
   * else refused with 402 call_cost_cap_exceeded. True when the call goes on (clamped), false once refused.
   * The clamped worst case is then held as any other; a budget's room or cap may clamp it further.
   */
  async function clampToCallerCap (call: GatedCall): Promise<boolean> {
    const { request, state, prices } = call
    const cap = call.cap!
    // The read waits at most gate.timeoutMs, as a hold does. With the database away (or slower than that) in
    // failureMode 'open' the call goes on unchecked, but still within the caller's cap: without the budgets'
    // word, the gate's nearLimit alone decides whether to clamp. In 'closed' the error is the call's 503.
    const check = await integration.checkCaller(call.caller, state.estimate, state.model).catch((error: unknown) => {
      if (options.failureMode === 'open' && isDatabaseUnavailable(error)) return null
      throw error
    })
    state.check = check // its binding budget names the x-budget-* headers of a refusal
    const limit = call.api.outputLimit
    const price = prices.resolve(state.model)?.price
    const asked = limit === null || price === undefined ? null : limit.requested(request.body as Record<string, unknown>, price)
    if (asked !== null && mayClampToCallerCap(check, options.nearLimit)) {
      const costAt = costAtOutputLimit(request, call.current, async (view) => await call.estimateAt(view, prices, state.model),
        (body, tokens) => limit!.withLimit(body, tokens, price!))
      const clamped = await largestAffordable(costAt, options.clampFloorTokens, asked, cap.units)
      if (clamped !== null) {
        if (check !== null) call.clampedOn = { check, estimate: state.estimate, byCallerCap: true }
        clampTo(call, clamped.tokens, clamped.estimate)
        call.current = clamped.estimate
        return true
      }
    }
    const refusal = callerCapRefusal(call)
    if (check !== null) noteDecision(call, 'refused', refusal.code, { check, estimate: state.estimate }, null)
    await refuse(call.reply, call.api, refusal)
    return false
  }

  /** 402 call_cost_cap_exceeded for a call over the caller's cap, naming the cap, whose it is and the estimate; the x-budget-* headers as any refusal's. */
  function callerCapRefusal (call: GatedCall): Refusal {
    const { state, reply } = call
    const cap = call.cap!
    const check = state.check
    metrics.decision('refused', 'call_cost_cap_exceeded')
    if (check !== null && check.bindingBudgetId !== null) {
      void reply.headers({ 'x-budget-id': check.bindingBudgetId, 'x-budget-remaining': check.remaining!, 'x-budget-currency': check.currency ?? options.currency })
    }
    const whose = cap.source === 'header' ? MAX_COST_HEADER : 'the operator\'s cap for this caller'
    return {
      status: 402,
      kind: 'insufficient_quota',
      code: 'call_cost_cap_exceeded',
      message: `The call's estimated cost ${state.estimate} ${options.currency} is more than ${whose} allows for one call: ${cap.amount} ${options.currency}`,
      param: cap.source === 'header' ? MAX_COST_HEADER : null,
      details: { cap: { source: cap.source, budgetId: null, amount: cap.amount, currency: options.currency, estimatedCost: state.estimate } }
    }
  }

  /** Says no to a call the budgets or the rate limits refuse, with the figures in the headers and the body; null when the call may go. */
  function refusalOf (call: GatedCall): Refusal | null {
    const { reply, state } = call
    const check = state.check!
    const limited = call.rateLimited
    if (limited !== undefined) {
      metrics.decision('rate_limited', 'rate_limit_exceeded')
      void reply.headers(rateLimitHeaders(limited))
      return {
        status: 429, kind: limited.dimension === 'requests' ? 'rate_limit_requests' : 'rate_limit_tokens', code: 'rate_limit_exceeded', message: check.reason, param: null,
        details: { budget: { id: limited.budgetId, requestsPerMinute: limited.requestsPerMinute, tokensPerMinute: limited.tokensPerMinute } }
      }
    }
    if (check.bindingBudgetId !== null) {
      // In the binding budget's currency, which need not be the gate's (sql/functions/holds.sql).
      const left = toUnits(check.remaining!) - (check.canProceed ? toUnits(check.bindingEstimate ?? state.estimate) : 0n)
      void reply.headers({ 'x-budget-id': check.bindingBudgetId, 'x-budget-remaining': fromUnits(left > 0n ? left : 0n), 'x-budget-currency': check.currency ?? options.currency })
    }
    if (check.canProceed) return null
    metrics.decision('refused', check.code!)
    if (check.code === 'exchange_rate_missing') {
      // The operator's configuration, not the caller's request nor its quota: a 503 that no retry will mend.
      void reply.header('x-should-retry', 'false')
      return { status: 503, kind: 'server_error', code: check.code, message: check.reason, param: null, details: { budget: { id: check.bindingBudgetId, currency: check.currency } } }
    }
    const refusing = check.budgets.find((budget) => budget.budgetId === check.bindingBudgetId)
    return {
      status: 402, kind: 'insufficient_quota', code: check.code!, message: check.reason, param: null,
      details: {
        budget: { id: check.bindingBudgetId, remaining: check.remaining, limit: check.limit, currency: check.currency ?? options.currency, estimatedCost: check.code === 'estimate_out_of_range' ? null : check.bindingEstimate ?? state.estimate },
        ...(check.code === 'model_restricted' ? { allowedModels: refusing?.allowedModels ?? [] } : {}),
        // how to ask for the approval (docs/approvals.md): a request the budget's approval policy decides
        ...(check.code === 'approval_required' ? { approval: { method: 'POST', path: `${adminPrefix}/${check.bindingBudgetId!}/approval-requests` } } : {}),
        ...(check.code === 'call_cost_cap_exceeded' && refusing !== undefined
          ? { cap: { source: 'budget', budgetId: refusing.budgetId, amount: refusing.maxCallCost, currency: refusing.currency, estimatedCost: refusing.estimatedCost } }
          : {})
      }
    }
  }

  /**
   * Notes a refusal, clamp or downgrade for the decision log (in memory: written in batches off this
   * path), and logs a refusal at info with its code, caller and binding budget. A call both downgraded
   * and clamped or refused is one decision, its last, with the model it asked for.
   */
  function noteDecision (call: GatedCall, outcome: DecisionOutcome, code: string, on: { check: BudgetConstraintCheck, estimate: string }, budgetId: string | null): void {
    const { state, caller } = call
    const { tags, ...scopes } = caller
    const decision: Decision = {
      at: new Date(),
      requestId: state.requestId,
      api: call.api.name,
      outcome,
      code,
      scopes,
      ...(tags === undefined ? {} : { tags }),
      model: storable(state.model),
      ...(state.downgradedFrom === null ? {} : { requestedModel: storable(state.downgradedFrom) }),
      ...bindingOf(on.check, budgetId, on.estimate, options.currency, outcome === 'refused' ? call.rateLimited : undefined)
    }
    if (outcome === 'refused') {
      call.request.log.info({ requestId: state.requestId, code, caller: scopes, tags, model: state.model, estimate: decision.estimate, currency: decision.currency, budget: decision.budget },
        'the gate refused a call')
    }
    decisions?.note(decision)
  }

  /** gate.unbudgeted 'refuse': a caller no budget covers gets 402 no_applicable_budget, with nothing held; null otherwise. */
  function unbudgetedRefusal (call: GatedCall): Refusal | null {
    if (options.unbudgeted !== 'refuse' || !uncovered(call.state.check)) return null
    const scopes = Object.fromEntries(SCOPE_HEADERS.flatMap(([type]) => call.caller[type] === undefined ? [] : [[type, call.caller[type]]]))
    const named = Object.entries(scopes).map(([type, id]) => `${type} '${String(id)}'`).join(', ')
    metrics.decision('refused', 'no_applicable_budget')
    return {
      status: 402,
      kind: 'insufficient_quota',
      code: 'no_applicable_budget',
      message: `No budget covers this caller (${named === '' ? 'no scopes given' : named}), and this gateway refuses calls without a budget`,
      param: null,
      details: { scopes }
    }
  }

  async function reserve (request: FastifyRequest, reply: FastifyReply, api: ModelApi, estimateAt: EstimateAt): Promise<void> {
    // The call is priced at the rates in force now, when it is made: its estimate, and its settlement however late.
    const prices = pricesAt(book, new Date())
    let caller: CallerScopes
    let estimate: CostEstimate
    let cap: CallerCap | null
    try {
      // The default resolveScopes answers at once, and most calls name no cap: neither is waited for then.
      const resolved = options.resolveScopes(request)
      caller = typeof (resolved as { then?: unknown }).then === 'function' ? await resolved : resolved as CallerScopes
      for (const [type, header] of SCOPE_HEADERS) if (caller[type] !== undefined) checkScopeId(caller[type], header)
      if (caller.tags !== undefined) checkTags(caller.tags, TAGS_HEADER)
      cap = options.maxCallCost === undefined && request.headers[MAX_COST_HEADER] === undefined ? null : await callerCap(request, options.maxCallCost)
      estimate = await estimateAt(request, prices)
    } catch (error) {
      if (!(error instanceof InvalidFieldError)) throw error
      metrics.decision('invalid', refusalCode(error))
      return await refuse(reply, api, invalidRequest(error))
    }

    const watched = (request as WatchedRequest)[CONNECTION_WATCH]!
    const watch = watched.watch
    if (watch.gone()) {
      // The client left before any budget work (while the body arrived, or its scopes were resolved): nothing to hold.
      reply.hijack()
      return
    }
    const requestId = randomUUID()
    // A stream the route wrote itself (streamed()) is finished when the response closes, before its charge.
    const streamed = readStreamUsage(request, api, () => state)
    const state: BudgetGateState = {
      reservationId: null, requestId, caller, model: estimate.model, downgradedFrom: null, clampedMaxTokens: null, estimate: estimate.amount, check: null, usage: null,
      reportUsage: (usage) => { state.usage = usage },
      streamed
    }
    request.budgetGate = state
    const call: GatedCall = { request, reply, api, estimateAt, prices, caller, state, current: estimate, rateLimited: undefined, cap }

    // The hold ends once, when the connection is done with this response and this hook is done: the
    // second of the two to happen ends it. The request stays counted in flight until then, and its
    // settlement is pending from then: closing waits for both (app.inject's requests are not waited for
    // by the server's close).
    let admitted = false
    let admittedAt: Date | null = null
    let liveDone: (() => void) | undefined
    let waitingFor = 2
    const endOnce = (): void => {
      if (--waitingFor > 0) return
      try {
        streamed.finish()
        end(request, reply, state, admitted, prices, admittedAt, liveDone)
      } catch (error) {
        request.log.error({ err: error, requestId }, 'ending a gated call failed: its hold stays until it expires, and is then counted at its estimate')
      }
      inFlight--
    }
    watched.guarded = true
    watch.onClosed(endOnce)

    const decided = metrics.reservationTimer()
    try {
      try {
        // Over the caller's cap: clamped to it before anything is held, or refused with nothing held.
        if (cap !== null && toUnits(estimate.amount) > cap.units && !await clampToCallerCap(call)) return
        const holding = hold(call, call.current)
        if (holding !== undefined) await holding
        const cheaper = state.check!.downgradeTo
        if (cheaper !== null && !await downgrade(call, cheaper)) return
        if (mayClamp(state.check!, options.nearLimit)) await clamp(call) // an admitted call (most of them) never clamps
      } catch (error) {
        if (!isDatabaseUnavailable(error)) throw error // a 500; the close releases whatever is held
        if (options.failureMode === 'closed') {
          metrics.decision('unavailable', 'budget_unavailable')
          return await refuse(reply, api, { status: 503, kind: 'unavailable', code: 'budget_unavailable', message: 'Budgets cannot be checked right now; try again shortly', param: null, details: {} })
        }
        request.log.warn({ err: error, caller }, 'budget database unreachable: letting the call through unchecked (failureMode open)')
        metrics.decision('unchecked', 'budget_unavailable')
        // Served unchecked, and still seen: its spend goes to the ledger without a budget, marked unchecked.
        admitted = true
        admittedAt = new Date()
        return
      }

      if (watch.gone()) {
        // The client left while we reserved: nothing will be served. Skip the handler; the close releases the hold.
        reply.hijack()
        return
      }
      // A cheaper model auto-downgrade chose may still cost more than the caller's cap: refused (the close gives back its hold).
      const overCap = state.check!.canProceed && cap !== null && toUnits(state.estimate) > cap.units
      const refusal = overCap ? callerCapRefusal(call) : refusalOf(call) ?? unbudgetedRefusal(call)
      if (refusal !== null) {
        const check = state.check!
        noteDecision(call, 'refused', refusal.code, { check, estimate: state.estimate }, overCap ? null : check.bindingBudgetId)
        return await refuse(reply, api, refusal)
      }
      if (call.clampedOn?.byCallerCap === true) noteDecision(call, 'clamped', 'call_cost_cap_exceeded', call.clampedOn, null)
      else if (call.clampedOn !== undefined) noteDecision(call, 'clamped', call.clampedOn.check.code ?? 'budget_exceeded', call.clampedOn, call.clampedOn.check.bindingBudgetId)
      else if (call.downgradedOn !== undefined) {
        // A call that fitted was downgraded by the budget whose auto-downgrade alert is in force; one that did not, by the one that refused it.
        const { check } = call.downgradedOn
        const by = check.code === null ? check.budgets.find((budget) => budget.activeActions.includes('auto-downgrade'))?.budgetId ?? check.bindingBudgetId : check.bindingBudgetId
        noteDecision(call, 'downgraded', check.code ?? 'auto_downgrade', call.downgradedOn, by)
      }
      if (api.forwarded !== undefined) request.body = api.forwarded(request.body as Record<string, unknown>, call.state.model)
      admitted = true // from here the handler runs, and the upstream may be called
      admittedAt = new Date()
      metrics.decision('allowed')
      // Live for the live-reservations gauge until its settlement commits.
      if (state.reservationId !== null) liveDone = metrics.admitted()
    } finally {
      decided()
      endOnce()
    }
  }

  /**
   * A served call no budget covered leaves a usage record without a budget (the spend ledger,
   * docs/ledger.md), priced as any other and committed with the settlements' batches, off the response
   * path. A fault is the queue's to retry; what fails past that is logged, never the caller's.
   */
  function recordUnbudgeted (request: FastifyRequest, state: BudgetGateState, charge: Charge, metadata: UsageMetadata, admittedAt: Date): void {
    const cost = charge.cost
    if (cost === null || toUnits(cost) === 0n) { // nothing was served, or nothing to charge: its rate allowance goes back
      integration.releaseUnheldCall(state.requestId)
      return
    }
    const basis = charge.basis === 'usage' ? 'usage' : 'estimate'
    const settled = metrics.settlementTimer()
    const recording = integration.recordUnbudgetedCall(cost, { requestId: state.requestId, occurredAt: admittedAt, source: 'gateway', metadata }).then((ended) => {
      if (ended.outcome === 'recorded') metrics.unbudgeted(cost, basis)
      if (toUnits(cost) > toUnits(state.estimate)) request.log.warn({ estimate: state.estimate, actual: cost, requestId: state.requestId }, 'a call cost more than its estimate')
    }, (error: unknown) => {
      request.log.error({ err: error, requestId: state.requestId, caller: state.caller, cost }, 'recording an unbudgeted call failed: its spend is not in the ledger')
    }).finally(() => {
      settled()
      pending.delete(recording)
    })
    pending.add(recording)
  }

  function end (request: FastifyRequest, reply: FastifyReply, state: BudgetGateState, admitted: boolean, prices: PriceBook, admittedAt: Date | null, liveDone: (() => void) | undefined): void {
    // No hold: nothing to end, unless the call was served to a caller no budget covers, or unchecked
    // (failureMode open with the database away): its spend is still recorded, without a budget.
    if (state.reservationId === null && !(admitted && (state.check === null || uncovered(state.check)))) return
    const usage = state.usage
    const charge = chargeFor(admitted, usage, reply.raw.statusCode, state.estimate, (used) => options.actualCost(used, prices))
    const priced = usage === null ? null : prices.resolve(usage.model)
    if (charge.basis === 'estimate') {
      request.log.warn({ requestId: state.requestId, reason: charge.reason, upstreamModel: usage?.model, estimate: state.estimate },
        charge.reason === 'unpriced-model' ? 'a served call could not be priced from its usage: charged at its estimate' : 'a call ended without usage: charged at its estimate')
    }
    const metadata = usageMetadata(state, usage, priced?.model, charge)
    if (state.reservationId === null) {
      recordUnbudgeted(request, state, charge, metadata, admittedAt!)
      return
    }
    settleInBackground(request.log, state.reservationId, state.requestId, state.estimate, charge.cost, metadata, liveDone)
  }

  /**
   * Settles an ended call off the response path. Its closures keep only what they log with: a request and
   * its reply kept alive until the batch commits would outlive young-generation collections, and every
   * call's objects would be promoted and collected the slow way.
   */
  function settleInBackground (log: FastifyRequest['log'], reservationId: string, requestId: string, estimate: string, cost: string | null,
    metadata: UsageMetadata, liveDone: (() => void) | undefined): void {
    const settled = metrics.settlementTimer()
    const settling = integration.settleCall(reservationId, cost, { source: 'gateway', metadata }).then((ended) => {
      if (cost !== null && toUnits(cost) > toUnits(estimate)) {
        log.warn({ estimate, actual: cost, requestId }, 'a call cost more than its estimate')
      }
      // The gate settles each reservation once, so no hold means it expired: the call was counted at its
      // estimate, served or not (an unserved one is billed for nothing, which an operator must hear of too).
      if (sweptBeforeSettling(ended)) {
        log.warn({ requestId, served: cost !== null, estimate },
          cost === null
            ? 'the reservation of a call that was not served had expired and was counted at its estimate before it was released'
            : 'the reservation had expired and was counted at its estimate before this settlement')
      }
    }, (error: unknown) => {
      // The reservation stays until its TTL; the sweeper then counts it at its estimate.
      log.error({ err: error, requestId }, 'settling a gated call failed')
    }).finally(() => {
      settled()
      liveDone?.()
      pending.delete(settling)
    })
    pending.add(settling)
  }

  fastify.addHook('onRoute', (route) => {
    const api = gatedApi(route, options.routes)
    if (api === null) return
    const custom = options.estimateCost
    const estimateAt: EstimateAt = custom === undefined
      ? async (request, prices, model) => api.estimate(request.body, prices, model)
      : async (request, prices, model) => await custom(request, prices, model)
    // Hooks in Fastify's callback style where nothing is awaited: no promise made per call.
    route.onRequest = [(request: FastifyRequest, reply: FastifyReply, done: () => void) => {
      const watched: Watched = { watch: watchConnection(request, reply), guarded: false }
      ;(request as WatchedRequest)[CONNECTION_WATCH] = watched
      // In flight from here: closing waits for it. Once its preHandler guards it, the hold's end ends it.
      inFlight++
      watched.watch.onClosed(() => { if (!watched.guarded) inFlight-- })
      done()
    }, ...[route.onRequest ?? []].flat()]
    route.preHandler = [...[route.preHandler ?? []].flat(), async (request: FastifyRequest, reply: FastifyReply) => { await reserve(request, reply, api, estimateAt) }]
    // The usage is read from the text the client gets (after the route's serializer and its own onSend
    // hooks), not from the object the route returned: a toJSON or a serializer may make them differ.
    route.onSend = [...[route.onSend ?? []].flat(), (request: FastifyRequest, _reply: FastifyReply, payload: unknown, done: (error: null, payload: unknown) => void) => {
      const state = request.budgetGate
      // A stream the route returned: read as it goes to the client, unchanged.
      if (state !== null && payload instanceof Readable) { done(null, readThrough(payload, state.streamed as StreamFeed)); return } // the gate's own feed: routes see only its call
      if (state !== null && state.usage === null && (typeof payload === 'string' || Buffer.isBuffer(payload))) state.usage = api.usageFromBody(payload.toString(), state.model)
      done(null, payload)
    }]
  })

  let sweeper: NodeJS.Timeout | undefined
  return {
    api: null,
    /** The sweeper of expired holds, every sweepIntervalMs (0: none). */
    start: () => {
      if (options.sweepIntervalMs <= 0) return
      sweeper = setInterval(() => {
        integration.sweepExpiredReservations().then((swept) => { metrics.sweeperRan(swept) },
          (error: unknown) => { fastify.log.error({ err: error }, 'sweeping expired budget reservations failed') })
      }, options.sweepIntervalMs)
      sweeper.unref()
    },
    // Waits for the requests in flight and the settlements of what the gate admitted, for at most
    // 10 s in all (a client may keep a stream open; the database may be away).
    stop: async () => {
      clearInterval(sweeper)
      const deadline = Date.now() + 10_000
      while ((pending.size > 0 || inFlight > 0) && Date.now() < deadline) {
        // A request in flight is not a promise: looked at again every 10 ms (a timer, so that its handler and
        // its I/O run meanwhile) while there are any.
        const pause = new Promise((resolve) => setTimeout(resolve, inFlight > 0 ? Math.min(10, deadline - Date.now()) : deadline - Date.now()).unref())
        await (inFlight > 0 || pending.size === 0 ? pause : Promise.race([Promise.allSettled([...pending]), pause]))
      }
    }
  }
}
