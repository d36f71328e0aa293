// SQL for rate limits: allowance taken from and given back to the budgets' shared request and token buckets.
import { NIL_ROOT, retryingConflicts, type Db } from '../kernel/database/db.js'

/** A budget's bucket: the budget, and the root of its tree, which the statements on it name. */
export interface BucketOf {
  budgetId: string
  rootId: string
}

/** What a call asks of a rate-limited budget's bucket: its need, and up to how much to take (a slice on a hot budget). */
export interface RateAsk extends BucketOf {
  needRequests: number
  needTokens: number
  askRequests: number
  askTokens: number
}

/** What a bucket granted, and what it holds after (null for a dimension the budget does not limit). */
export interface RateGrant {
  budgetId: string
  grantedRequests: number
  grantedTokens: number
  requestsPerMinute: number | null
  tokensPerMinute: number | null
  requestsLeft: number | null
  tokensLeft: number | null
}

/** Allowance given back to a bucket (negative: taken). */
export interface RateReturn extends BucketOf {
  requests: number
  tokens: number
}

/** The first tree of the buckets, by root: on Citus the node that runs the statement (sql/citus/delegate.sql). */
const firstTree = (buckets: BucketOf[]): string => buckets.map((bucket) => bucket.rootId).sort()[0] ?? NIL_ROOT

export function createRateRepository (sql: Db) {
  return {
    /** Takes allowance from the budgets' rate buckets (budget_rate_take, sql/functions/rate-limits.sql), in one statement that names their trees. */
    async takeRate (asks: RateAsk[]): Promise<RateGrant[]> {
      return await retryingConflicts(async () => await sql<RateGrant[]>`
        select budget_id as "budgetId", granted_requests::float8 as "grantedRequests", granted_tokens::float8 as "grantedTokens",
               requests_per_minute as "requestsPerMinute", tokens_per_minute::float8 as "tokensPerMinute",
               requests_left::float8 as "requestsLeft", tokens_left::float8 as "tokensLeft"
        from budget_rate_take(${asks.map((a) => a.budgetId)}::uuid[], ${asks.map((a) => String(a.needRequests))}::text[]::numeric[],
                              ${asks.map((a) => String(a.needTokens))}::text[]::numeric[], ${asks.map((a) => String(a.askRequests))}::text[]::numeric[],
                              ${asks.map((a) => String(a.askTokens))}::text[]::numeric[],
                              ${asks.map((a) => a.rootId)}::text[]::uuid[], ${firstTree(asks)}::uuid)`)
    },

    /** Gives rate allowance back to the buckets (budget_rate_give_back, sql/functions/rate-limits.sql); a negative amount takes more. */
    async giveBackRate (returns: RateReturn[]): Promise<void> {
      if (returns.length === 0) return
      await retryingConflicts(async () => await sql`select budget_rate_give_back(${returns.map((r) => r.budgetId)}::uuid[], ${returns.map((r) => String(r.requests))}::text[]::numeric[],
                                             ${returns.map((r) => String(r.tokens))}::text[]::numeric[],
                                             ${returns.map((r) => r.rootId)}::text[]::uuid[], ${firstTree(returns)}::uuid)`)
    }
  }
}

export type RateRepository = ReturnType<typeof createRateRepository>
