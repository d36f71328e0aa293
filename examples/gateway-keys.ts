// API keys for the example gateway's model route: GATEWAY_KEYS='{"sk-alice": {"user": "alice", "team": "platform"}}'.
// With keys, a caller's scopes come from its key alone (x-relay-* headers are ignored), and a call
// without a known key is refused with 401 before any budget work. A key may carry the operator's cap on
// the cost of one call, "maxCallCost": "0.50" (the gate's currency), which the caller's x-budget-max-cost
// header may lower but not raise. Keys are held as SHA-256 digests
// and found by a Map lookup of the digest, so no comparison runs over the secret itself.
import { createHash } from 'node:crypto'
import type { FastifyRequest } from 'fastify'
import type { CallerScopes } from '../lib/index.js'
import { parsePositiveMoney, type Money } from '../lib/kernel/money.js'

const SCOPE_TYPES = ['user', 'team', 'project', 'organization'] as const

/** What a key stands for: its caller's scopes, and the operator's cap on one call for it (null: none). */
export interface GatewayKey {
  scopes: Readonly<CallerScopes>
  maxCallCost: Money | null
}

export type GatewayKeys = ReadonlyMap<string, Readonly<GatewayKey>>

const digest = (key: string) => createHash('sha256').update(key, 'utf8').digest('base64')

/** Parses GATEWAY_KEYS; throws an Error whose message says what is wrong (never echoing a key). */
export function parseGatewayKeys (text: string): GatewayKeys {
  if (text.trim() === '') throw new Error('GATEWAY_KEYS is set but empty; unset it to take scopes from the x-relay-* headers')
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch (error) {
    throw new Error(`GATEWAY_KEYS is not JSON (${(error as Error).message}); expected {"<api key>": {"user": "alice", "team": "platform"}, ...}`)
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new Error('GATEWAY_KEYS must be a JSON object of API keys to scopes, such as {"sk-alice": {"team": "platform"}}')
  }
  const entries = Object.entries(parsed)
  if (entries.length === 0) throw new Error('GATEWAY_KEYS names no API key; unset it to take scopes from the x-relay-* headers instead')
  const keys = new Map<string, Readonly<GatewayKey>>()
  entries.forEach(([key, scopes], index) => {
    const where = `GATEWAY_KEYS: key #${index + 1}`
    if (!/^[\x21-\x7e]+$/.test(key)) throw new Error(`${where} must be printable characters without spaces`)
    if (typeof scopes !== 'object' || scopes === null || Array.isArray(scopes)) throw new Error(`${where} must map to an object of scopes, such as {"team": "platform"}`)
    const caller: CallerScopes = {}
    let maxCallCost: Money | null = null
    for (const [type, id] of Object.entries(scopes as Record<string, unknown>)) {
      if (type === 'maxCallCost') {
        try {
          maxCallCost = parsePositiveMoney(id, 'maxCallCost')
        } catch {
          throw new Error(`${where}: maxCallCost must be a decimal above zero in the gateway's currency, such as "0.50"`)
        }
        continue
      }
      if (!(SCOPE_TYPES as readonly string[]).includes(type)) throw new Error(`${where} has an unknown scope '${type}'; scopes are ${SCOPE_TYPES.join(', ')}`)
      if (typeof id !== 'string' || id.length === 0 || id.length > 200 || !/^[\x21-\x7e]+$/.test(id)) {
        throw new Error(`${where}: scope '${type}' must be a string of 1 to 200 printable characters without spaces`)
      }
      caller[type as typeof SCOPE_TYPES[number]] = id
    }
    if (Object.keys(caller).length === 0) throw new Error(`${where} names no scope, so no budget would apply to it`)
    keys.set(digest(key), Object.freeze({ scopes: Object.freeze(caller), maxCallCost }))
  })
  return keys
}

/** 401 in OpenAI's error shape (the route's error handler writes it). */
export class InvalidApiKeyError extends Error {
  readonly statusCode = 401
  readonly code = 'invalid_api_key'
}

/** The key of the request's `Authorization: Bearer <key>`; throws InvalidApiKeyError when it has none or an unknown one. */
function keyOf (keys: GatewayKeys, request: FastifyRequest): GatewayKey {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(request.headers.authorization ?? '')
  if (match === null) throw new InvalidApiKeyError('You did not provide an API key: send it as Authorization: Bearer <key>')
  const key = keys.get(digest(match[1]!))
  if (key === undefined) throw new InvalidApiKeyError('Incorrect API key provided')
  return key
}

/** The scopes of the request's key; throws InvalidApiKeyError when it has none or an unknown one. */
export function scopesFromKey (keys: GatewayKeys, request: FastifyRequest): CallerScopes {
  return { ...keyOf(keys, request).scopes }
}

/** The operator's cap on one call for the request's key (gate.maxCallCost); null when the key sets none. */
export function maxCallCostOfKey (keys: GatewayKeys, request: FastifyRequest): Money | null {
  return keyOf(keys, request).maxCallCost
}
