// The audit log as the admin API reads it: one budget's entries (a deleted budget's too) or every
// budget's, newest first, a page at a time. Entries are written by the changes themselves.
import { BudgetNotFoundError, InvalidFieldError } from '../kernel/errors.js'
import type { AuditEntry, AuditRepository } from './audit-repository.js'
import { isUuid } from '../kernel/database/db.js'

export interface AuditPageQuery {
  limit?: number
  cursor?: string
}

export function createBudgetAudit (audit: AuditRepository) {
  async function page (budgetId: string | null, query: AuditPageQuery, within: ReadonlySet<string> | null = null): Promise<{ entries: AuditEntry[], nextCursor: string | null }> {
    const limit = query.limit ?? 50
    if (!Number.isInteger(limit) || limit < 1 || limit > 500) throw new InvalidFieldError('limit', 'must be an integer from 1 to 500')
    // The cursor is the last entry's id: entries have increasing ids, so "older than" is "less than".
    if (query.cursor !== undefined && !/^[1-9]\d{0,18}$/.test(query.cursor)) throw new InvalidFieldError('cursor', 'is not a cursor this API returned')
    const entries = await audit.list(budgetId, query.cursor === undefined ? null : BigInt(query.cursor), limit + 1, within === null ? null : [...within])
    const shown = entries.slice(0, limit)
    return { entries: shown, nextCursor: entries.length > limit ? shown[shown.length - 1]!.id : null }
  }

  return {
    /** The budget's entries, newest first; 404 for an id that never named a budget. */
    async budgetAudit (budgetId: string, query: AuditPageQuery = {}) {
      if (!isUuid(budgetId) || !await audit.budgetEverExisted(budgetId)) throw new BudgetNotFoundError(budgetId)
      return await page(budgetId, query)
    },

    /**
     * Every budget's entries, newest first. `within`: only these budgets' (a scoped principal's area), and so
     * none of what no budget owns (exchange rates, provider costs); null: every entry.
     */
    async auditFeed (query: AuditPageQuery = {}, within: ReadonlySet<string> | null = null) {
      return await page(null, query, within)
    }
  }
}

export type BudgetAudit = ReturnType<typeof createBudgetAudit>
