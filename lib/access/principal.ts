// Who called the admin API, and what they may do: the principal the authorize option returns, checked.
import { ROLES, SCOPE_TYPES, type ScopeType } from '../kernel/schemas.js'
import { isStorableText } from '../kernel/json-limits.js'

/**
 * Four fixed roles rather than a list of permissions: each admin route needs one permission, and four
 * roles are what a reader of an audit entry or a key list can hold in mind. `approver` decides approvals
 * without changing budgets (finance); `editor` changes budgets without deciding approvals (a team lead);
 * `admin` does both, and, with no scopes, what touches every tree (rates, channels, provider bills).
 */
export { ROLES }
export type Role = typeof ROLES[number]

/** What a route needs: to read, to change budgets and usage, to decide approvals, or to be a platform admin. */
export type Permission = 'read' | 'write' | 'approve' | 'platform'

const GRANTS: Record<Role, readonly Permission[]> = {
  viewer: ['read'],
  editor: ['read', 'write'],
  approver: ['read', 'approve'],
  admin: ['read', 'write', 'approve', 'platform']
}

/** A budget subtree a principal may touch: a budget and its descendants, or every budget of a scope and theirs. */
export type AccessScope = { budgetId: string } | { scopeType: ScopeType, scopeId: string }

export interface Principal {
  actor: string
  role: Role
  /** The subtrees it may touch; null: every tree (said so: a principal without the key is refused). */
  scopes: readonly AccessScope[] | null
}

/** What `true` and a name from authorize mean, as before principals: a platform admin. */
export const platformAdmin = (actor: string): Principal => ({ actor, role: 'admin', scopes: null })

export function allows (principal: Principal, permission: Permission): boolean {
  if (!GRANTS[principal.role].includes(permission)) return false
  return permission !== 'platform' || principal.scopes === null
}

/** Every permission the principal has, in the order of Permission. */
export function permissionsOf (principal: Principal): Permission[] {
  return (['read', 'write', 'approve', 'platform'] as const).filter((permission) => allows(principal, permission))
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i
const SCOPE_ID = /^[\x21-\x7e]{1,200}$/

const isText = (value: unknown): value is string => typeof value === 'string' && value.trim() !== '' && value.length <= 200 && isStorableText(value)

/**
 * The principal an authorize verdict stands for; null when it stands for none (a refusal), or when it is a
 * principal badly made: access fails closed, so a host's typo refuses rather than widens. Every tree is
 * `scopes: null`, said so: a missing `scopes` (a misspelt `user.teamScopes`, undefined) is a refusal.
 */
export function principalOf (verdict: unknown): Principal | null {
  if (verdict === true) return platformAdmin('admin')
  if (isText(verdict)) return platformAdmin(verdict)
  if (typeof verdict !== 'object' || verdict === null || Array.isArray(verdict)) return null
  const { actor, role, scopes, ...rest } = verdict as Record<string, unknown>
  if (Object.keys(rest).length > 0 || !isText(actor) || !(ROLES as readonly unknown[]).includes(role)) return null
  if (scopes === undefined) return null
  if (scopes === null) return { actor, role: role as Role, scopes: null }
  if (!Array.isArray(scopes)) return null
  const checked = Array.from(scopes, scopeOf) // a hole in the array is an undefined scope, refused (map would skip it)
  if (checked.some((scope) => scope === null)) return null
  return { actor, role: role as Role, scopes: Object.freeze(checked as AccessScope[]) }
}

function scopeOf (scope: unknown): AccessScope | null {
  if (typeof scope !== 'object' || scope === null || Array.isArray(scope)) return null
  const keys = Object.keys(scope).sort().join(',')
  const { budgetId, scopeType, scopeId } = scope as Record<string, unknown>
  if (keys === 'budgetId') return typeof budgetId === 'string' && UUID.test(budgetId) ? { budgetId: budgetId.toLowerCase() } : null
  if (keys === 'scopeId,scopeType' && (SCOPE_TYPES as readonly unknown[]).includes(scopeType) && typeof scopeId === 'string' && SCOPE_ID.test(scopeId)) {
    return { scopeType: scopeType as ScopeType, scopeId }
  }
  return null
}
