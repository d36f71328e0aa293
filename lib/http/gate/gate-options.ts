// The gate's options and the state it leaves on each gated request, and the default way of naming the caller.
import type { FastifyRequest } from 'fastify'
import type { ApiName } from '../../model-apis/index.js'
import type { Money } from '../../kernel/money.js'
import type { NearLimitPolicy, ScopeType } from '../../kernel/schemas.js'
import type { BudgetConstraintCheck } from '../../gate/index.js'
import type { CostEstimate } from '../../pricing/index.js'
import type { PriceBook, PriceTable, TokenUsage } from '../../pricing/index.js'
import { OptionsError } from '../../kernel/errors.js'
import { parseTagHeader } from '../../kernel/tags.js'
import { checkScopeId, type CallerScopes } from '../../kernel/scopes.js'
import type { OperatorCap } from './call-cost-cap.js'

/**
 * A model-call route: its URL, the API it speaks inferred from the path's end (/chat/completions,
 * /responses, /messages, /embeddings), or `{ url, api }` to name the API.
 */
export type GateRoute = string | { url: string, api: ApiName }

export interface GateOptions {
  /**
   * The model-call routes. A route declared with `config: { budgetGate: true }` (API inferred from its
   * path) or `config: { budgetGate: 'chat' }` (API named) is gated too. A gated route whose API cannot be
   * told fails registration: it never passes ungated.
   */
  routes: GateRoute[]
  /**
   * The caller's scopes. Default: the x-relay-user-id, x-relay-team-id, x-relay-project-id and
   * x-relay-organization-id headers, which any client can set: a production gateway derives them from
   * the caller's authenticated identity instead.
   */
  resolveScopes: (request: FastifyRequest) => CallerScopes | Promise<CallerScopes>
  /**
   * The worst-case cost of calling `model` (the requested one unless auto-downgrade chose another).
   * Default: each route's API's own estimate (for chat completions, the price table, the prompt's size
   * and max_tokens: lib/pricing/estimate.ts). When given, it replaces the API's estimate on every gated
   * route, whatever API it speaks.
   */
  estimateCost?: (request: FastifyRequest, prices: PriceBook, model?: string) => CostEstimate | Promise<CostEstimate>
  /** The actual cost from the provider's usage; null when it cannot be priced (the call is then charged its estimate). Default: its tokens times the price table, at the rates in force when the call was made (`prices` is fixed to that instant). */
  actualCost: (usage: TokenUsage, prices: PriceBook) => Money | null
  /** Prices per 1M tokens, in `currency`, over the catalog's (USD only) model by model. Default `{}`: the catalog alone. */
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
  /**
   * When a call's worst case no longer fits a hard budget: `refuse` it (402), or `clamp` its max_tokens to
   * what every budget can still afford and forward that. A budget's own `nearLimit` overrides this default.
   */
  nearLimit: NearLimitPolicy
  /** Under `clamp`, the fewest output tokens worth forwarding: below this the call is refused. Default 16. */
  clampFloorTokens: number
  /**
   * The operator's cap on the cost of one call for this request's caller (its key, its scope), in `currency`;
   * null or undefined for none. A caller's x-budget-max-cost header may lower it, never raise it. A call whose
   * worst case is over the cap is clamped or refused with 402 call_cost_cap_exceeded (docs/gate.md).
   */
  maxCallCost?: OperatorCap
  /**
   * A caller no budget covers (no budget for its scopes, a mistyped scope, no scopes at all): `allow`
   * serves the call and records its spend as an unbudgeted usage record (docs/ledger.md); `refuse`
   * answers 402 `no_applicable_budget` and calls nothing. Default `allow`.
   */
  unbudgeted: UnbudgetedPolicy
}

export type UnbudgetedPolicy = 'allow' | 'refuse'

/** gate.unbudgeted's check at registration: a bad value fails app.ready() with a coded error. */
export function checkUnbudgetedPolicy (value: unknown): UnbudgetedPolicy {
  if (value !== 'allow' && value !== 'refuse') throw new OptionsError(`gate.unbudgeted must be 'allow' or 'refuse' (got ${JSON.stringify(value) ?? String(value)})`)
  return value
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
  /** The max_tokens the gate lowered the request to under nearLimit 'clamp'; null when it did not. */
  clampedMaxTokens: number | null
  estimate: Money
  check: BudgetConstraintCheck | null
  usage: TokenUsage | null
  /** Tell the gate what the provider used; required for streamed responses, read from JSON bodies otherwise. */
  reportUsage: (usage: TokenUsage) => void
  /**
   * Feed the bytes of a streamed response as they go to the client (a route that writes the stream
   * itself): the gate reads the provider's usage from the API's own events. A stream returned as the
   * route's payload is read without this.
   */
  streamed: (chunk: Uint8Array | string) => void
}

export const SCOPE_HEADERS: Array<[ScopeType, string]> = [
  ['user', 'x-relay-user-id'], ['team', 'x-relay-team-id'], ['project', 'x-relay-project-id'], ['organization', 'x-relay-organization-id']
]

/** The call's tags, as key=value pairs separated by commas: `x-relay-tags: feature=summarize,env=prod`. */
export const TAGS_HEADER = 'x-relay-tags'

/** The default resolveScopes: whatever the x-relay-* headers say. Fine for a quick start; trust nothing a client claims in production. */
export function scopesFromHeaders (request: FastifyRequest): CallerScopes {
  const scopes: CallerScopes = {}
  for (const [type, header] of SCOPE_HEADERS) {
    const value = request.headers[header]
    if (value !== undefined) scopes[type] = checkScopeId(value, header)
  }
  const tags = request.headers[TAGS_HEADER]
  if (tags !== undefined) scopes.tags = parseTagHeader(Array.isArray(tags) ? tags.join(',') : tags, TAGS_HEADER)
  return scopes
}
