// The gate: a hook pair on every model-call route. preHandler (the body is parsed there, so the model
// and max_tokens are known) resolves the caller, estimates the worst-case cost and reserves it on every
// applicable budget, or refuses with 402. When the response closes, finished or cut off, the actual
// cost is settled from the provider's usage, or the reservation released when nothing was charged.
import { randomUUID } from 'node:crypto'
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import { InvalidFieldError, isDatabaseUnavailable } from '../errors.js'
import { fromUnits, toUnits, type Money } from '../money.js'
import type { BudgetConstraintCheck } from '../services/decision.js'
import { checkScopeId, type BudgetIntegration, type CallerScopes } from '../services/integration.js'
import { costOf, worstCaseTokens, type ChatRequestShape, type PriceTable, type TokenUsage } from '../services/pricing.js'
import type { ScopeType } from '../schemas.js'

export interface CostEstimate {
  /** The model the call will use. */
  model: string
  amount: Money
}

export interface GateOptions {
  /** URLs of the model-call routes. A route declared with `config: { budgetGate: true }` is gated too. */
  routes: string[]
  /** The caller's scopes. Default: the x-relay-user-id, x-relay-team-id, x-relay-project-id and x-relay-organization-id headers. */
  resolveScopes: (request: FastifyRequest) => CallerScopes | Promise<CallerScopes>
  /** The worst-case cost of calling `model` (the requested one unless auto-downgrade chose another). Default: the price table, the prompt's size and max_tokens. */
  estimateCost: (request: FastifyRequest, prices: PriceTable, model?: string) => CostEstimate | Promise<CostEstimate>
  /** The actual cost from the provider's usage. Default: its tokens times the price table. */
  actualCost: (usage: TokenUsage, prices: PriceTable) => Money | null
  /** Prices per 1M tokens, in `currency`. */
  prices: PriceTable
  /** Models still allowed while restrict-models is in force (an alert's allowedModels overrides). */
  cheapModels: string[]
  /** The cheaper model auto-downgrade calls instead of each model. */
  downgrades: Record<string, string>
  currency: string
  /** When PostgreSQL cannot be reached within timeoutMs: `closed` refuses with 503, `open` lets the call through and logs it. */
  failureMode: 'closed' | 'open'
  timeoutMs: number
  /** A reservation not settled by then (its process died) is swept and counted as spent at its estimate. */
  reservationTtlMs: number
  /** How often this process sweeps expired reservations; 0 turns the sweeper off. */
  sweepIntervalMs: number
}

/** What the gate decided for a request, for the route handler and the settlement. */
export interface BudgetGateState {
  /** Null when nothing is held: no budget applies, or the database was down in `open` mode. */
  reservationId: string | null
  requestId: string
  caller: CallerScopes
  /** The model to call: the requested one, or the cheaper one auto-downgrade chose. */
  model: string
  /** The requested model when auto-downgrade replaced it. */
  downgradedFrom: string | null
  estimate: Money
  check: BudgetConstraintCheck | null
  usage: TokenUsage | null
  /** Tell the gate what the provider used; required for streamed responses, read from JSON bodies otherwise. */
  reportUsage: (usage: TokenUsage) => void
}

const SCOPE_HEADERS: Array<[ScopeType, string]> = [
  ['user', 'x-relay-user-id'], ['team', 'x-relay-team-id'], ['project', 'x-relay-project-id'], ['organization', 'x-relay-organization-id']
]

export function scopesFromHeaders (request: FastifyRequest): CallerScopes {
  const scopes: CallerScopes = {}
  for (const [type, header] of SCOPE_HEADERS) {
    const value = request.headers[header]
    if (value !== undefined) scopes[type] = checkScopeId(value, header)
  }
  return scopes
}

export function estimateChatCost (request: FastifyRequest, prices: PriceTable, model?: string): CostEstimate {
  const body = (request.body ?? {}) as ChatRequestShape
  const chosen = model ?? body.model
  if (typeof chosen !== 'string') throw new InvalidFieldError('model', 'must name a model')
  const price = prices[chosen]
  if (price === undefined) throw new InvalidFieldError('model', `has no price: ${chosen}`)
  const { inputTokens, outputTokens } = worstCaseTokens(body, price)
  return { model: chosen, amount: costOf(price, inputTokens, outputTokens) }
}

export function costFromUsage (usage: TokenUsage, prices: PriceTable): Money | null {
  const price = prices[usage.model]
  return price === undefined ? null : costOf(price, usage.inputTokens, usage.outputTokens)
}

/** The OpenAI error shape, which OpenAI clients read into their APIError. */
export function sendOpenAIError (reply: FastifyReply, statusCode: number, type: string, code: string, message: string,
  param: string | null = null, extra: Record<string, unknown> = {}): FastifyReply {
  return reply.code(statusCode).send({ error: { message, type, code, param, ...extra } })
}

/** Reads `usage` from an OpenAI-style JSON body, as the provider returned it. */
function usageFromPayload (payload: unknown, fallbackModel: string): TokenUsage | null {
  if (typeof payload !== 'string' || !payload.includes('"usage"')) return null
  try {
    const body = JSON.parse(payload) as { model?: unknown, usage?: { prompt_tokens?: unknown, completion_tokens?: unknown } }
    const { prompt_tokens: inputTokens, completion_tokens: outputTokens } = body.usage ?? {}
    if (!Number.isInteger(inputTokens) || !Number.isInteger(outputTokens)) return null
    return { model: typeof body.model === 'string' ? body.model : fallbackModel, inputTokens: inputTokens as number, outputTokens: outputTokens as number }
  } catch {
    return null
  }
}

/** Adds the gate to every model-call route declared after it; returns what waits for in-flight settlements. */
export function registerGate (fastify: FastifyInstance, options: GateOptions, integration: BudgetIntegration): { drain: () => Promise<void> } {
  const pending = new Set<Promise<unknown>>()
  const gated = (route: RouteOptions) => options.routes.includes(route.url) || (route.config as { budgetGate?: boolean } | undefined)?.budgetGate === true

  async function reserve (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    let caller: CallerScopes
    let estimate: CostEstimate
    try {
      caller = await options.resolveScopes(request)
      for (const [type, header] of SCOPE_HEADERS) if (caller[type] !== undefined) checkScopeId(caller[type], header)
      estimate = await options.estimateCost(request, options.prices)
    } catch (error) {
      if (!(error instanceof InvalidFieldError)) throw error
      const code = error.field.startsWith('x-relay-') ? 'invalid_scope' : error.field === 'model' ? 'model_not_priced' : 'invalid_request'
      return await sendOpenAIError(reply, 400, 'invalid_request_error', code, error.message, error.field)
    }

    const requestId = randomUUID()
    const state: BudgetGateState = {
      reservationId: null, requestId, caller, model: estimate.model, downgradedFrom: null, estimate: estimate.amount, check: null, usage: null,
      reportUsage: (usage) => { state.usage = usage }
    }
    try {
      let reservation = await integration.reserveCall(caller, estimate.amount, { requestId, model: estimate.model })
      const cheaper = reservation.check.downgradeTo
      if (cheaper !== null) {
        // auto-downgrade is in force: give back the first hold, estimate the cheaper model, reserve that.
        if (reservation.reservationId !== null) await integration.releaseCall(reservation.reservationId)
        const downgraded = await options.estimateCost(request, options.prices, cheaper)
        reservation = await integration.reserveCall(caller, downgraded.amount, { requestId, model: downgraded.model })
        state.downgradedFrom = estimate.model
        state.model = downgraded.model
        state.estimate = downgraded.amount
        void reply.header('x-budget-downgraded-from', estimate.model)
      }
      state.check = reservation.check
      state.reservationId = reservation.reservationId
    } catch (error) {
      if (!isDatabaseUnavailable(error)) throw error
      if (options.failureMode === 'closed') {
        return await sendOpenAIError(reply, 503, 'service_unavailable', 'budget_unavailable', 'Budgets cannot be checked right now; try again shortly')
      }
      request.log.warn({ err: error, caller }, 'budget database unreachable: letting the call through unchecked (failureMode open)')
    }
    request.budgetGate = state

    const check = state.check
    if (check?.bindingBudgetId != null) {
      const left = toUnits(check.remaining!) - (check.canProceed ? toUnits(state.estimate) : 0n)
      void reply.headers({ 'x-budget-id': check.bindingBudgetId, 'x-budget-remaining': fromUnits(left > 0n ? left : 0n), 'x-budget-currency': options.currency })
    }
    if (check !== null && !check.canProceed) {
      const refusing = check.budgets.find((budget) => budget.budgetId === check.bindingBudgetId)
      return await sendOpenAIError(reply, 402, 'insufficient_quota', check.code!, check.reason, null, {
        budget: { id: check.bindingBudgetId, remaining: check.remaining, limit: check.limit, currency: options.currency, estimatedCost: state.estimate },
        ...(check.code === 'model_restricted' ? { allowedModels: refusing?.allowedModels ?? [] } : {})
      })
    }
    if (state.reservationId !== null) {
      // 'close' comes for every response, finished or cut off by the client: settle exactly once, then.
      reply.raw.once('close', () => { settle(request, state) })
    }
  }

  function settle (request: FastifyRequest, state: BudgetGateState): void {
    const usage = state.usage
    const cost = usage === null ? null : options.actualCost(usage, options.prices)
    const settling = integration.settleCall(state.reservationId!, cost, {
      source: 'gateway',
      metadata: {
        modelId: usage?.model ?? state.model,
        ...(state.downgradedFrom === null ? {} : { requestedModel: state.downgradedFrom }),
        inputTokens: usage?.inputTokens,
        outputTokens: usage?.outputTokens,
        estimatedCost: state.estimate,
        userId: state.caller.user,
        teamId: state.caller.team,
        projectId: state.caller.project,
        organizationId: state.caller.organization
      }
    }).then((usageId) => {
      if (cost !== null && toUnits(cost) > toUnits(state.estimate)) {
        request.log.warn({ estimate: state.estimate, actual: cost, requestId: state.requestId }, 'a call cost more than its estimate')
      }
      if (cost !== null && usageId === null) {
        request.log.warn({ requestId: state.requestId }, 'the reservation had expired and was counted at its estimate before this settlement')
      }
    }, (error: unknown) => {
      // The reservation stays until its TTL; the sweeper then counts it at its estimate.
      request.log.error({ err: error, requestId: state.requestId }, 'settling a gated call failed')
    }).finally(() => pending.delete(settling))
    pending.add(settling)
  }

  fastify.addHook('onRoute', (route) => {
    if (!gated(route)) return
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
      integration.sweepExpiredReservations().catch((error: unknown) => { fastify.log.error({ err: error }, 'sweeping expired budget reservations failed') })
    }, options.sweepIntervalMs)
    sweeper.unref()
  })
  return {
    drain: async () => {
      clearInterval(sweeper)
      await Promise.allSettled([...pending])
    }
  }
}
