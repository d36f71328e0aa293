// The caller's cap on the cost of one call: the x-budget-max-cost header, and the operator's cap for the
// caller (gate.maxCallCost), the smaller of the two. Read before any budget work: a malformed header is a
// 400 that holds nothing. How the gate answers a call over it (clamp or 402) is gate-hooks.ts's.
import type { FastifyRequest } from 'fastify'
import { InvalidFieldError } from '../../kernel/errors.js'
import { fromUnits, MONEY_SCALE, parsePositiveMoney, toUnits, type Money } from '../../kernel/money.js'

export const MAX_COST_HEADER = 'x-budget-max-cost'

/** Whose cap bounds the call: the caller's header, or the operator's for the caller (its key, its scope). */
export type CapSource = 'header' | 'operator'

export interface CallerCap {
  amount: Money
  units: bigint
  source: CapSource
}

/** A header the gate will not read as a cap: 400 invalid_max_cost, with nothing held. */
export class InvalidMaxCostError extends InvalidFieldError {
  readonly gateCode = 'invalid_max_cost'
}

// Digits only, one point at most, as many as a budget's amount takes (numeric(28, 10)): no sign, no exponent,
// no spaces, no second value (Node joins a repeated header with ', ').
const PLAIN_DECIMAL = new RegExp(`^\\d{1,${28 - MONEY_SCALE}}(?:\\.\\d{1,${MONEY_SCALE}})?$`)

/** The header's cap, or null without one; throws InvalidMaxCostError on anything but one plain decimal above zero. */
export function headerCap (value: string | string[] | undefined): Money | null {
  if (value === undefined) return null
  if (typeof value !== 'string' || !PLAIN_DECIMAL.test(value)) {
    throw new InvalidMaxCostError(MAX_COST_HEADER, `must be one plain decimal above zero in the gate's currency, such as 0.50 (at most ${28 - MONEY_SCALE} digits before the point and ${MONEY_SCALE} after)`)
  }
  if (toUnits(value) <= 0n) throw new InvalidMaxCostError(MAX_COST_HEADER, 'must be greater than 0')
  return fromUnits(toUnits(value))
}

/** What gate.maxCallCost may answer for a request: a cap in the gate's currency, or none. */
export type OperatorCap = (request: FastifyRequest) => Money | number | null | undefined | Promise<Money | number | null | undefined>

/**
 * The cap on this call: the smaller of the operator's (gate.maxCallCost) and the header's; a header may only
 * lower the operator's, never raise it. Null when neither is set. An operator's value that is no positive
 * decimal is the operator's mistake, not the caller's: it throws a plain Error (a 500), never a 400.
 */
export async function callerCap (request: FastifyRequest, operator: OperatorCap | undefined): Promise<CallerCap | null> {
  const asked = headerCap(request.headers[MAX_COST_HEADER])
  let set: Money | null = null
  if (operator !== undefined) {
    const value = await operator(request)
    if (value !== null && value !== undefined) {
      try {
        set = parsePositiveMoney(value, 'gate.maxCallCost')
      } catch (error) {
        throw new Error(`gate.maxCallCost answered a value that is not a positive decimal: ${(error as Error).message}`, { cause: error })
      }
    }
  }
  if (asked === null && set === null) return null
  if (set === null || (asked !== null && toUnits(asked) < toUnits(set))) return { amount: asked!, units: toUnits(asked!), source: 'header' }
  return { amount: set, units: toUnits(set), source: 'operator' }
}
