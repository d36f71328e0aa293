// SQL for a principal's area: the budgets its scopes name, and their descendants (budget_subtree, the one downward walk).
import type { Db } from '../kernel/database/db.js'
import type { AccessScope } from './principal.js'

export function createAccessRepository (sql: Db) {
  return {
    /**
     * Each live budget the scopes reach, and whether it is a root of the area: named by a scope and below no
     * other named budget (a scope nested in another's subtree adds nothing, and is no root of its own).
     */
    async listArea (scopes: readonly AccessScope[]): Promise<Array<{ id: string, named: boolean }>> {
      const ids = scopes.flatMap((scope) => 'budgetId' in scope ? [scope.budgetId] : [])
      const byScope = scopes.flatMap((scope) => 'scopeType' in scope ? [scope] : [])
      return await sql<Array<{ id: string, named: boolean }>>`
        with named as (
          select id from budget_definitions
          where deleted_at is null
            and (id = any (${ids}::text[]::uuid[])
                 or (scope_type, scope_id) in (select * from unnest(${byScope.map((scope) => scope.scopeType)}::text[], ${byScope.map((scope) => scope.scopeId)}::text[])))
        )
        , below as (select s.id from budget_subtree(array(select id from named)) s)
        select id, true as named from named where id not in (select id from below)
        union
        select id, false from below`
    }
  }
}
