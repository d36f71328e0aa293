// Admin keys for the example gateway's admin API, beside ADMIN_TOKEN (the platform admin):
// ADMIN_KEYS='{"<key>": {"actor": "lead-platform", "role": "editor", "scopes": [{"scopeType": "team", "scopeId": "platform"}]}}'.
// Each key stands for a principal (lib/access/principal.ts): a role, and the budget subtrees it may touch,
// named by scope or by budget id (null: every tree). Keys are held as SHA-256 digests and found by a Map
// lookup of the digest; the admin token is compared by digest in constant time.
import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyRequest } from 'fastify'
import type { Authorize, PrincipalVerdict } from '../lib/index.js'
import { principalOf, ROLES } from '../lib/access/index.js'

export type AdminKeys = ReadonlyMap<string, Readonly<PrincipalVerdict>>

/** The plugin's floor for an admin token's length (lib/options.ts), for keys too. */
const MIN_LENGTH = 16

const digest = (key: string) => createHash('sha256').update(key, 'utf8').digest()

/** Parses ADMIN_KEYS; throws an Error whose message says what is wrong (never echoing a key). */
export function parseAdminKeys (text: string): AdminKeys {
  const shape = '{"<admin key>": {"actor": "lead-platform", "role": "editor", "scopes": [{"scopeType": "team", "scopeId": "platform"}]}, ...}'
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch (error) {
    throw new Error(`ADMIN_KEYS is not JSON (${(error as Error).message}); expected ${shape}`)
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed) || Object.keys(parsed).length === 0) {
    throw new Error(`ADMIN_KEYS must be a JSON object of one or more admin keys to principals, such as ${shape}`)
  }
  // JSON.parse keeps the last of two equal keys: a key written twice, say a viewer's and then an admin's,
  // would quietly become the second. Every object key of the text is read (keys are at least 16 characters,
  // longer than any field of a principal), and one seen twice stops the start.
  const seen = new Set<string>()
  // Each JSON string of the text in turn (a match never starts inside one), a key when a colon follows it.
  for (const [quoted, colon] of text.matchAll(/"(?:[^"\\]|\\.)*"(\s*:)?/g)) {
    if (colon === undefined) continue
    const name = JSON.parse(quoted.slice(0, quoted.lastIndexOf('"') + 1)) as string
    if (name.length < MIN_LENGTH) continue
    if (seen.has(name)) throw new Error('ADMIN_KEYS names the same admin key twice; each key must stand for one principal')
    seen.add(name)
  }
  const keys = new Map<string, Readonly<PrincipalVerdict>>()
  Object.entries(parsed).forEach(([key, value], index) => {
    const where = `ADMIN_KEYS: key #${index + 1}`
    if (key.length < MIN_LENGTH || !/^[\x21-\x7e]+$/.test(key)) throw new Error(`${where} must be at least ${MIN_LENGTH} printable characters without spaces`)
    const principal = principalOf(value)
    if (principal === null || value === true || typeof value === 'string') {
      throw new Error(`${where} must map to {"actor": a name, "role": one of ${ROLES.join(', ')}, "scopes": a list of {"budgetId": uuid} or {"scopeType", "scopeId"}, or null for every tree}`)
    }
    keys.set(digest(key).toString('base64'), Object.freeze({ actor: principal.actor, role: principal.role, scopes: principal.scopes === null ? null : [...principal.scopes] }))
  })
  return keys
}

/** The admin API's authorize: the admin token is the platform admin ('admin'); an admin key, its principal; anything else refuses. */
export function adminAuthorize (adminToken: string, keys: AdminKeys): Authorize {
  const expected = digest(adminToken)
  return (request: FastifyRequest) => {
    const match = /^Bearer\s+(\S+)\s*$/.exec(request.headers.authorization ?? '')
    if (match === null) return false
    const presented = digest(match[1]!)
    if (timingSafeEqual(presented, expected)) return 'admin'
    return keys.get(presented.toString('base64')) ?? false
  }
}
