// Who is calling, as budgets see it: the four scope kinds, each an id in the host's own system.
import { InvalidFieldError } from './errors.js'
import type { ScopeType } from './schemas.js'
import type { Tags } from './tags.js'

/** Who is calling: any subset of the four scopes, each an id in your system, and the call's tags (x-relay-tags). */
export type CallerScopes = Partial<Record<ScopeType, string>> & { tags?: Tags }

export interface Scope {
  type: ScopeType
  id: string
}

/** The most specific scope first: usage is recorded on the first matched scope's budget. */
const SCOPE_ORDER: ScopeType[] = ['user', 'project', 'team', 'organization']

export function toScopes (caller: CallerScopes): Scope[] {
  return SCOPE_ORDER.filter((type) => caller[type] !== undefined).map((type) => ({ type, id: caller[type]! }))
}

/** Scope ids from a request must be short printable text; anything else is the caller's mistake. */
export function checkScopeId (value: unknown, field: string): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > 200 || !/^[\x21-\x7e]+$/.test(value)) {
    throw new InvalidFieldError(field, 'must be 1 to 200 printable characters without spaces')
  }
  return value
}
