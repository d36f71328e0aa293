// Scoped admin access: who may see and change which budgets. The principal comes from the authorize option
// (principal.ts); its area, the budgets it may touch, is read per request (access-repository.ts).
import type { Db } from '../kernel/database/db.js'
import type { Part } from '../kernel/part.js'
import { createAccessRepository } from './access-repository.js'
import type { Principal } from './principal.js'

export { allows, permissionsOf, platformAdmin, principalOf, ROLES } from './principal.js'
export type { AccessScope, Permission, Principal, Role } from './principal.js'

/** The budgets a scoped principal may touch: `budgets`, those its scopes name and every descendant, and `roots`, the named ones below no other named one. */
export interface Area {
  roots: ReadonlySet<string>
  budgets: ReadonlySet<string>
}

export interface BudgetAccess {
  /** The principal's area; null for one with no scopes, whose area is every tree. */
  areaOf: (principal: Principal) => Promise<Area | null>
}

export function createAccess (sql: Db): Part<BudgetAccess> {
  const repository = createAccessRepository(sql)
  return {
    api: {
      async areaOf (principal) {
        if (principal.scopes === null) return null
        if (principal.scopes.length === 0) return { roots: new Set(), budgets: new Set() }
        const rows = await repository.listArea(principal.scopes)
        return { roots: new Set(rows.filter((row) => row.named).map((row) => row.id)), budgets: new Set(rows.map((row) => row.id)) }
      }
    }
  }
}
