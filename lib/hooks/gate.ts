// The gate: a hook pair on every model-call route. preHandler (the body is parsed there, so the model
// and max_tokens are known) resolves the caller, estimates the worst-case cost and reserves it on every
// applicable budget, or refuses with 402. When the response closes, finished or cut off, the hold ends:
// settled at the actual cost, at the estimate when a served call's cost is unknown, or released when
// nothing was served. No hold outlives its request.
import { randomUUID } from 'node:crypto'
import type { Socket } from 'node:net'
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import { InvalidFieldError, isDatabaseUnavailable } from '../errors.js'
import { fromUnits, toUnits, type Money } from '../money.js'
import type { CostEstimate } from '../services/estimate.js'
import type { BudgetMetrics } from '../services/metrics.js'
import type { RateRefusal } from '../services/rate-limits.js'
import { checkScopeId, type BudgetIntegration, type CallerScopes } from '../services/integration.js'
import { pricesAt, type PriceBook, type TokenUsage } from '../services/pricing.js'
import { checkTags } from '../tags.js'
import { SCOPE_HEADERS, TAGS_HEADER, type BudgetGateState, type GateOptions } from './gate-options.js'
import { sendOpenAIError } from './openai-error.js'
import { costAtOutputLimit, largestAffordable, mayClamp, requestedOutputTokens, roomFor, withOutputLimit } from './clamp.js'

/** How often a clamped call measures the room again when other calls took it first. */
const CLAMP_ATTEMPTS = 3

/** Reads `usage` from an OpenAI-style JSON body, as the provider returned it. */
function usageFromPayload (payload: unknown, fallbackModel: string): TokenUsage | null {
  if (typeof payload !== 'string' || !payload.includes('"usage"')) return null
  try {
    const body = JSON.parse(payload) as { model?: unknown, usage?: OpenAIUsage }
    const { prompt_tokens: inputTokens, completion_tokens: outputTokens } = body.usage ?? {}
    if (!Number.isSafeInteger(inputTokens) || !Number.isSafeInteger(outputTokens)) return null
    return { model: typeof body.model === 'string' ? body.model : fallbackModel, inputTokens: inputTokens as number, outputTokens: outputTokens as number, ...cachedTokensOf(body.usage!) }
  } catch {
    return null
  }
}

interface OpenAIUsage { prompt_tokens?: unknown, completion_tokens?: unknown, prompt_tokens_details?: { cached_tokens?: unknown } | null }

/**
 * The prompt tokens read from the provider's cache (`prompt_tokens_details.cached_tokens`, OpenAI's
 * shape, which OpenAI-compatible providers report too), priced at the cache-read rate. A count that is
 * no count, or more than the prompt, is left out: the whole prompt at the input rate, never under.
 */
export function cachedTokensOf (usage: OpenAIUsage): { cachedInputTokens?: number } {
  const cached = usage.prompt_tokens_details?.cached_tokens
  return Number.isSafeInteger(cached) && (cached as number) > 0 && (cached as number) <= (usage.prompt_tokens as number) ? { cachedInputTokens: cached as number } : {}
}

/** A name an upstream sent, made storable: PostgreSQL text holds no NUL and no unpaired surrogate. */
function storable (text: string): string {
  return text.replace(/\0/g, '').replace(/[\ud800-\udfff]/gu, '\ufffd').slice(0, 200)
}

function refusalCode (error: InvalidFieldError & { gateCode?: string }): string {
  if (error.gateCode !== undefined) return error.gateCode
  if (error.field === TAGS_HEADER) return 'invalid_tags'
  return error.field.startsWith('x-relay-') ? 'invalid_scope' : 'invalid_request'
}

/**
 * OpenAI's rate-limit headers for a 429: each limited dimension's limit, what is left, and when it is
 * full again (OpenAI's duration form, 1s or 6m0s), and retry-after when the call's need is back (in
 * seconds, and in milliseconds as retry-after-ms, which OpenAI's clients read first); for a call too
 * large ever to fit, x-should-retry: false instead.
 */
export function rateLimitHeaders (refusal: RateRefusal): Record<string, string> {
  // A call too large for the limit never fits: say so (OpenAI's clients read x-should-retry) rather than name a wait.
  const headers: Record<string, string> = refusal.tooLarge
    ? { 'x-should-retry': 'false' }
    : { 'retry-after': String(Math.ceil(refusal.retryAfterMs / 1000)), 'retry-after-ms': String(refusal.retryAfterMs) }
  const dimensions = [
    ['requests', refusal.requestsPerMinute, refusal.requestsLeft, refusal.requestsResetMs],
    ['tokens', refusal.tokensPerMinute, refusal.tokensLeft, refusal.tokensResetMs]
  ] as const
  for (const [name, limit, left, resetMs] of dimensions) {
    if (limit === null) continue
    headers[`x-ratelimit-limit-${name}`] = String(limit)
    headers[`x-ratelimit-remaining-${name}`] = String(left ?? 0)
    headers[`x-ratelimit-reset-${name}`] = openAIDuration(resetMs ?? 0)
  }
  return headers
}

/** 20ms, 1s, 6m0s: the form of OpenAI's x-ratelimit-reset-* headers. */
function openAIDuration (ms: number): string {
  if (ms < 1000) return `${Math.ceil(ms)}ms`
  const seconds = Math.ceil(ms / 1000)
  return seconds < 60 ? `${seconds}s` : `${Math.floor(seconds / 60)}m${seconds % 60}s`
}

/** What a call is charged when its hold ends, and why. */
interface Charge {
  cost: Money | null
  basis: 'usage' | 'estimate' | 'released'
  reason?: 'not-served' | 'no-usage' | 'unpriced-model'
}

/**
 * The one rule for ending a hold. Not admitted (refused, failed, or the client left before the handler
 * ran): released. Usage reported: its cost, or the estimate when its model has no price. No usage: an
 * error response released (nothing was served), anything else charged at the estimate (served, or
 * cut off while the upstream call was in flight: never free).
 */
function chargeFor (admitted: boolean, usage: TokenUsage | null, statusCode: number, estimate: Money, actualCost: (usage: TokenUsage) => Money | null): Charge {
  if (!admitted) return { cost: null, basis: 'released', reason: 'not-served' }
  if (usage !== null) {
    const actual = actualCost(usage)
    return actual === null ? { cost: estimate, basis: 'estimate', reason: 'unpriced-model' } : { cost: actual, basis: 'usage' }
  }
  if (statusCode >= 400) return { cost: null, basis: 'released', reason: 'not-served' }
  return { cost: estimate, basis: 'estimate', reason: 'no-usage' }
}

/** Adds the gate to every model-call route declared after it; returns what waits for in-flight settlements. */
/** What the gate knows of a request's connection, from its first hook on. */
interface ConnectionWatch {
  /** Resolves when the response has closed (finished or cut off) or its socket has. */
  closed: Promise<void>
  /** The client is gone and the response did not finish. */
  gone: () => boolean
}

/**
 * Watches the response and its socket from onRequest, before anything is awaited: a client that
 * leaves while the body arrives, its scopes are resolved or its hold is taken is seen, also when
 * its request was pipelined behind another and its response never got a 'close' of its own.
 */
function watchConnection (request: FastifyRequest, reply: FastifyReply): ConnectionWatch {
  const socket = request.raw.socket as Socket | null | undefined
  let fired = false
  let done!: () => void
  const closed = new Promise<void>((resolve) => { done = resolve })
  const onClose = () => {
    if (fired) return
    fired = true
    socket?.off('close', onClose)
    done()
  }
  reply.raw.once('close', onClose)
  socket?.once('close', onClose)
  if (socket?.destroyed === true || reply.raw.destroyed) onClose()
  return { closed, gone: () => !reply.raw.writableFinished && (fired || socket?.destroyed === true || reply.raw.destroyed) }
}

export function registerGate (fastify: FastifyInstance, options: GateOptions, integration: BudgetIntegration, book: PriceBook,
  metrics: BudgetMetrics): { drain: (waitMs?: number) => Promise<void> } {
  const pending = new Set<Promise<unknown>>()
  // Admitted calls whose settlement has not committed, for the live-reservations gauge.
  const live = new WeakMap<BudgetGateState, () => void>()
  const watched = new WeakMap<FastifyRequest, ConnectionWatch>()
  const gated = (route: RouteOptions) => options.routes.includes(route.url) || (route.config as { budgetGate?: boolean } | undefined)?.budgetGate === true

  async function reserve (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    // The call is priced at the rates in force now, when it is made: its estimate, and its settlement however late.
    const prices = pricesAt(book, new Date())
    let caller: CallerScopes
    let estimate: CostEstimate
    try {
      caller = await options.resolveScopes(request)
      for (const [type, header] of SCOPE_HEADERS) if (caller[type] !== undefined) checkScopeId(caller[type], header)
      if (caller.tags !== undefined) checkTags(caller.tags, TAGS_HEADER)
      estimate = await options.estimateCost(request, prices)
    } catch (error) {
      if (!(error instanceof InvalidFieldError)) throw error
      metrics.decision('invalid', refusalCode(error))
      return await sendOpenAIError(reply, 400, 'invalid_request_error', refusalCode(error), error.message, error.field)
    }

    const watch = watched.get(request)!
    if (watch.gone()) {
      // The client left before any budget work (while the body arrived, or its scopes were resolved): nothing to hold.
      reply.hijack()
      return
    }
    const requestId = randomUUID()
    // The estimate of the model the call will use (the cheaper one after auto-downgrade): clamp prices other output limits from it.
    let current = estimate
    const state: BudgetGateState = {
      reservationId: null, requestId, caller, model: estimate.model, downgradedFrom: null, clampedMaxTokens: null, estimate: estimate.amount, check: null, usage: null,
      reportUsage: (usage) => { state.usage = usage },
      streamed: () => { throw new Error('the gate does not read streams yet: report usage with reportUsage') }
    }
    request.budgetGate = state

    // The hold ends once, when the connection is done with this response and this hook is done.
    let admitted = false
    let rateLimited: RateRefusal | undefined
    let hookDone!: () => void
    const reserved = new Promise<void>((resolve) => { hookDone = resolve })
    // A request in flight is pending too: closing waits for it to end and settle (app.inject's requests
    // are not waited for by the server's close).
    const ended = watch.closed.then(async () => await reserved).then(() => { end(request, reply, state, admitted, prices) })
    pending.add(ended)
    void ended.finally(() => pending.delete(ended))

    const decided = metrics.reservationTimer()
    try {
      try {
        const first = await integration.reserveCall(caller, estimate.amount, { requestId, model: estimate.model, tokens: estimate.tokens })
        rateLimited = first.rateLimited
        state.reservationId = first.reservationId
        state.check = first.check
        const cheaper = first.check.downgradeTo
        if (cheaper !== null) {
          // auto-downgrade is in force: give back the first hold, estimate the cheaper model, reserve that.
          if (first.reservationId !== null) await integration.releaseCall(first.reservationId)
          state.reservationId = null
          let downgraded: CostEstimate
          try {
            downgraded = await options.estimateCost(request, prices, cheaper)
          } catch (error) {
            // The cheaper model cannot take this request (an image it has no bound for): say so as the gate does.
            if (!(error instanceof InvalidFieldError)) throw error
            metrics.decision('invalid', refusalCode(error))
            return await sendOpenAIError(reply, 400, 'invalid_request_error', refusalCode(error), `auto-downgrade to ${cheaper}: ${error.message}`, error.field)
          }
          const second = await integration.reserveCall(caller, downgraded.amount, { requestId, model: downgraded.model, tokens: downgraded.tokens })
          rateLimited = second.rateLimited
          state.reservationId = second.reservationId
          state.check = second.check
          state.downgradedFrom = estimate.model
          state.model = downgraded.model
          state.estimate = downgraded.amount
          current = downgraded
          void reply.header('x-budget-downgraded-from', estimate.model)
        }
        // nearLimit 'clamp': a call whose worst case no longer fits goes ahead with fewer output tokens, the
        // most every budget can still afford, as long as the floor fits. The clamped worst case is what is
        // held; a call that took the room meanwhile makes the next try measure again. The search is
        // arithmetic on the estimate's input, counted once (never the prompt again per candidate).
        const costAt = costAtOutputLimit(request, current, async (view) => await options.estimateCost(view, prices, state.model))
        for (let attempt = 1; attempt <= CLAMP_ATTEMPTS && mayClamp(state.check!, options.nearLimit); attempt++) {
          const room = roomFor(state.check!, state.estimate)
          const price = prices.resolve(state.model)?.price
          const asked = requestedOutputTokens(request.body as Record<string, unknown>, price?.maxOutputTokens, price?.outputLimitField)
          if (room === null || asked === null) break
          const clamped = await largestAffordable(costAt, options.clampFloorTokens, asked, room)
          if (clamped === null) break
          const held = await integration.reserveCall(caller, clamped.estimate.amount, { requestId, model: clamped.estimate.model, tokens: clamped.estimate.tokens })
          rateLimited = held.rateLimited
          state.reservationId = held.reservationId
          state.check = held.check
          if (!held.check.canProceed) continue
          request.body = withOutputLimit(request.body as Record<string, unknown>, clamped.tokens, price?.outputLimitField)
          state.estimate = clamped.estimate.amount
          state.clampedMaxTokens = clamped.tokens
          void reply.header('x-budget-clamped-max-tokens', String(clamped.tokens))
        }
      } catch (error) {
        if (!isDatabaseUnavailable(error)) throw error // a 500; the close releases whatever is held
        if (options.failureMode === 'closed') {
          metrics.decision('unavailable', 'budget_unavailable')
          return await sendOpenAIError(reply, 503, 'service_unavailable', 'budget_unavailable', 'Budgets cannot be checked right now; try again shortly')
        }
        request.log.warn({ err: error, caller }, 'budget database unreachable: letting the call through unchecked (failureMode open)')
        metrics.decision('unchecked', 'budget_unavailable')
        return
      }

      const check = state.check!
      if (watch.gone()) {
        // The client left while we reserved: nothing will be served. Skip the handler; the close releases the hold.
        reply.hijack()
        return
      }
      if (rateLimited !== undefined) {
        metrics.decision('rate_limited', 'rate_limit_exceeded')
        void reply.headers(rateLimitHeaders(rateLimited))
        return await sendOpenAIError(reply, 429, rateLimited.dimension, 'rate_limit_exceeded', check.reason, null, {
          budget: { id: rateLimited.budgetId, requestsPerMinute: rateLimited.requestsPerMinute, tokensPerMinute: rateLimited.tokensPerMinute }
        })
      }
      if (check.bindingBudgetId !== null) {
        // In the binding budget's currency, which need not be the gate's (sql/012).
        const left = toUnits(check.remaining!) - (check.canProceed ? toUnits(check.bindingEstimate ?? state.estimate) : 0n)
        void reply.headers({ 'x-budget-id': check.bindingBudgetId, 'x-budget-remaining': fromUnits(left > 0n ? left : 0n), 'x-budget-currency': check.currency ?? options.currency })
      }
      if (!check.canProceed) {
        const refusing = check.budgets.find((budget) => budget.budgetId === check.bindingBudgetId)
        metrics.decision('refused', check.code!)
        if (check.code === 'exchange_rate_missing') {
          // The operator's configuration, not the caller's request nor its quota: a 503 that no retry will mend.
          void reply.header('x-should-retry', 'false')
          return await sendOpenAIError(reply, 503, 'server_error', check.code, check.reason, null, { budget: { id: check.bindingBudgetId, currency: check.currency } })
        }
        return await sendOpenAIError(reply, 402, 'insufficient_quota', check.code!, check.reason, null, {
          budget: { id: check.bindingBudgetId, remaining: check.remaining, limit: check.limit, currency: check.currency ?? options.currency, estimatedCost: check.code === 'estimate_out_of_range' ? null : check.bindingEstimate ?? state.estimate },
          ...(check.code === 'model_restricted' ? { allowedModels: refusing?.allowedModels ?? [] } : {})
        })
      }
      admitted = true // from here the handler runs, and the upstream may be called
      metrics.decision('allowed')
      if (state.reservationId !== null) live.set(state, metrics.admitted())
    } finally {
      decided()
      hookDone()
    }
  }

  function end (request: FastifyRequest, reply: FastifyReply, state: BudgetGateState, admitted: boolean, prices: PriceBook): void {
    if (state.reservationId === null) return
    const usage = state.usage
    const charge = chargeFor(admitted, usage, reply.raw.statusCode, state.estimate, (used) => options.actualCost(used, prices))
    const priced = usage === null ? null : prices.resolve(usage.model)
    if (charge.basis === 'estimate') {
      request.log.warn({ requestId: state.requestId, reason: charge.reason, upstreamModel: usage?.model, estimate: state.estimate },
        charge.reason === 'unpriced-model' ? 'a served call could not be priced from its usage: charged at its estimate' : 'a call ended without usage: charged at its estimate')
    }
    const settled = metrics.settlementTimer()
    const settling = integration.endCall(state.reservationId, charge.cost, {
      source: 'gateway',
      metadata: {
        modelId: priced?.model ?? state.model,
        ...(usage !== null && usage.model !== (priced?.model ?? state.model) ? { upstreamModel: storable(usage.model) } : {}),
        ...(state.downgradedFrom === null ? {} : { requestedModel: state.downgradedFrom }),
        ...(state.clampedMaxTokens === null ? {} : { clampedMaxTokens: state.clampedMaxTokens }),
        inputTokens: usage?.inputTokens,
        outputTokens: usage?.outputTokens,
        ...(usage?.cachedInputTokens === undefined ? {} : { cachedInputTokens: usage.cachedInputTokens }),
        estimatedCost: state.estimate,
        costBasis: charge.basis,
        ...(charge.basis === 'estimate' ? { estimateReason: charge.reason } : {}),
        userId: state.caller.user,
        teamId: state.caller.team,
        projectId: state.caller.project,
        organizationId: state.caller.organization,
        ...(state.caller.tags === undefined ? {} : { tags: state.caller.tags })
      }
    }).then((ended) => {
      if (charge.cost !== null && toUnits(charge.cost) > toUnits(state.estimate)) {
        request.log.warn({ estimate: state.estimate, actual: charge.cost, requestId: state.requestId }, 'a call cost more than its estimate')
      }
      // Only a real expiry: a call with nothing to charge, or one recorded already, is no news.
      if (ended.outcome === 'expired' && charge.cost !== null) {
        request.log.warn({ requestId: state.requestId }, 'the reservation had expired and was counted at its estimate before this settlement')
      }
    }, (error: unknown) => {
      // The reservation stays until its TTL; the sweeper then counts it at its estimate.
      request.log.error({ err: error, requestId: state.requestId }, 'settling a gated call failed')
    }).finally(() => {
      settled()
      live.get(state)?.()
      pending.delete(settling)
    })
    pending.add(settling)
  }

  fastify.addHook('onRoute', (route) => {
    if (!gated(route)) return
    route.onRequest = [async (request: FastifyRequest, reply: FastifyReply) => { watched.set(request, watchConnection(request, reply)) }, ...[route.onRequest ?? []].flat()]
    route.preHandler = [...[route.preHandler ?? []].flat(), reserve]
    route.onSend = [...[route.onSend ?? []].flat(), async (request: FastifyRequest, _reply: FastifyReply, payload: unknown) => {
      const state = request.budgetGate
      if (state !== null && state.usage === null) state.usage = usageFromPayload(payload, state.model)
      return payload
    }]
  })

  let sweeper: NodeJS.Timeout | undefined
  fastify.addHook('onReady', async () => {
    if (options.sweepIntervalMs <= 0) return
    sweeper = setInterval(() => {
      integration.sweepExpiredReservations().then((swept) => { metrics.sweeperRan(swept) },
        (error: unknown) => { fastify.log.error({ err: error }, 'sweeping expired budget reservations failed') })
    }, options.sweepIntervalMs)
    sweeper.unref()
  })
  return {
    // Waits for the requests in flight and the settlements of what the gate admitted, for at most
    // `waitMs` in all (a client may keep a stream open; the database may be away).
    drain: async (waitMs = 10_000) => {
      clearInterval(sweeper)
      const deadline = Date.now() + waitMs
      while (pending.size > 0 && Date.now() < deadline) {
        await Promise.race([Promise.allSettled([...pending]), new Promise((resolve) => setTimeout(resolve, deadline - Date.now()).unref())])
      }
    }
  }
}
