// SQL for the gate: reserve on every applicable budget at once, settle, sweep; and the applicable budgets for a read.
import type { Money } from '../kernel/money.js'
import { normalizeMoney } from '../kernel/money.js'
import type { AlertAction, BudgetAlert, NearLimitPolicy } from '../kernel/schemas.js'
import type { Scope } from '../kernel/scopes.js'
import { canonicalTags, type Tags } from '../kernel/tags.js'
import { retryingConflicts, type Db } from '../kernel/database/db.js'

/** A call as budgets see it: who calls, which model (after downgrade and snapshot resolution), which tags. */
export interface CallFilter {
  scopes: Scope[]
  model: string | null
  tags?: Tags
}

export interface ApplicableBudget {
  budgetId: string
  name: string
  amount: Money
  enforcement: 'hard' | 'soft'
  alerts: BudgetAlert[]
  scopeMatched: boolean
  periodStart: Date
  periodEnd: Date
  currentAmount: Money
  reservedAmount: Money
  approvedThrough: Money | null
  projectedActions: AlertAction[]
  /** Whether the estimate the numbers were read for fits (budget_fits). */
  fits: boolean
  currency: string
  /** The estimate in the budget's currency, rounded up (budget_convert); null when no exchange rate is in force, or out of range. */
  estimate: Money | null
  /** A rate is in force but the estimate cannot be held on the budget: past 10^18 (budget_hold_amount, sql/functions/holds.sql). */
  outOfRange: boolean
  /** What the gate does when a call no longer fits (null: the gate's nearLimit option). */
  nearLimit: NearLimitPolicy | null
}

/** One budget of a caller's line, as the process caches it (budget_line in sql/functions/lines.sql). */
export interface LineBudget {
  budgetId: string
  name: string
  alerts: BudgetAlert[]
  scopeMatched: boolean
  scopeRank: number
  periodStart: Date
  periodEnd: Date
  /** Null where the budget does not limit the rate. */
  requestsPerMinute: number | null
  tokensPerMinute: number | null
  /** The budget's currency: a line with one other than the gate's is held call by call, never leased. */
  currency: string
  /** What the gate does when a call no longer fits (null: the gate's nearLimit option). */
  nearLimit: NearLimitPolicy | null
}

/** What a call asks of a rate-limited budget's bucket: its need, and up to how much to take (a slice on a hot budget). */
export interface RateAsk {
  budgetId: string
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

/** A budget's numbers under the hold's lock, and whether the call fits it (the one place that is decided). */
export interface HeldBudget {
  budgetId: string
  amount: Money
  enforcement: 'hard' | 'soft'
  currentAmount: Money
  reservedAmount: Money
  fits: boolean
  approvedThrough: Money | null
  projectedActions: AlertAction[]
  /** The estimate in the budget's currency as held, rounded up (budget_convert); null when no exchange rate is in force, or out of range. */
  held: Money | null
  /** A rate is in force but the estimate cannot be held on the budget: past 10^18 (budget_hold_amount). */
  outOfRange: boolean
}

/** The end of a call admitted from a lease: charged `actualCost` at `occurredAt` (inside the lease's windows). */
export interface LeasedSettlement {
  leaseId: string
  requestId: string
  actualCost: Money
  occurredAt: Date
  source: string
  description: string | null
  metadata: Record<string, unknown>
}

/** A call to hold for: its estimate on every budget of its line. */
export interface HoldRequest {
  reservationId: string
  requestId: string
  amount: Money
  line: LineBudget[]
}

export interface Hold {
  /** Every window of the line was there and current: the line can be trusted (else reload it and try again). */
  current: boolean
  reserved: boolean
  budgets: HeldBudget[]
  /** The budget definitions' version the hold saw (-1: none read). */
  definitionsVersion: number
}

export interface Settlement {
  reservationId: string
  actualCost: Money | null
  source: string
  description: string | null
  metadata: Record<string, unknown>
}

/** What became of a call admitted from a lease, once its batch committed (budget_settle_leased, sql/functions/settlements.sql). */
export interface LeasedOutcome {
  /** Its usage record; null when none was written by this settlement. */
  usageId: string | null
  /** False: the lease had expired and been swept (counting the call at its estimate) before this settlement. */
  leaseFound: boolean
}

/** A renewal waits for its lease's rows no longer than a take waits for them (budget_lease_take, sql/functions/leases.sql). */
const RENEW_LOCK_TIMEOUT_MS = 2000

export function createReservationRepository (sql: Db) {
  const normalize = (row: ApplicableBudget): ApplicableBudget => ({
    ...row,
    amount: normalizeMoney(row.amount),
    currentAmount: normalizeMoney(row.currentAmount),
    reservedAmount: normalizeMoney(row.reservedAmount),
    approvedThrough: row.approvedThrough === null ? null : normalizeMoney(row.approvedThrough),
    estimate: row.estimate === null ? null : normalizeMoney(row.estimate)
  })
  // Projected alerts stay crossed for the rest of the period once recorded (until a definition change
  // resolves them, sql/functions/alerts.sql); current ones follow the numbers.
  const projectedActions = (budgetId: ReturnType<typeof sql>, periodStart: ReturnType<typeof sql>) => sql`
    array(select distinct action from budget_alert_history h, unnest(h.actions) as action
          where h.budget_id = ${budgetId} and h.period_start = ${periodStart} and h.basis = 'projected'
            and h.resolved_at is null) as "projectedActions"`

  // The numbers the decision needs, for budgets and windows from `source` (budget_id, scope_matched,
  // scope_rank, period_start, period_end).
  // `estimate` is in `currency`; each budget reads it converted into its own (budget_convert), rounded up.
  const readStandings = async (source: ReturnType<typeof sql>, estimate: Money, currency: string): Promise<ApplicableBudget[]> => {
    const rows = await sql<ApplicableBudget[]>`
      select x.budget_id as "budgetId", b.name, b.amount::text as amount, b.enforcement, b.alerts, x.scope_matched as "scopeMatched",
             x.period_start as "periodStart", x.period_end as "periodEnd",
             n.current_amount::text as "currentAmount", n.reserved_amount::text as "reservedAmount",
             budget_approved_through(x.budget_id, x.period_start)::text as "approvedThrough",
             ${projectedActions(sql`x.budget_id`, sql`x.period_start`)},
             coalesce(budget_fits(b.enforcement, b.amount, n.current_amount, n.reserved_amount, converted.estimate), false) as fits,
             b.currency, converted.estimate::text as estimate, converted.estimate is null and converted.rate is not null as "outOfRange",
             b.near_limit as "nearLimit"
      from ${source} x
      join budget_definitions b on b.id = x.budget_id
      left join budget_status_cache c on c.budget_id = x.budget_id and c.period_start = x.period_start
      -- coalesce short-circuits: the sum runs only for a window that has no cache row yet, and once
      cross join lateral (
        select coalesce(c.current_amount, (select current_amount from calculate_budget_status(x.budget_id, x.period_start, x.period_end))) as current_amount,
               coalesce(c.reserved_amount, 0) as reserved_amount
      ) n
      -- as a hold would convert it (budget_hold_amount): null without a rate, or past what the budget can hold
      cross join lateral (select r.rate, budget_hold_amount(${estimate}::numeric, r.rate, n.current_amount, n.reserved_amount) as estimate
                          from (select budget_exchange_rate(${currency}, b.currency, now()) as rate) r) converted
      order by x.scope_matched desc, x.scope_rank, x.budget_id`
    return rows.map(normalize)
  }

  /** The budget definitions' version now (budget_definitions_version, sql/functions/definitions.sql). */
  const definitionsVersion = async (): Promise<number> => {
    const [row] = await sql<Array<{ version: string }>>`select budget_definitions_version()::text as version`
    return Number(row!.version)
  }

  return {
    /**
     * The caller's budget line now, its windows' cache rows made sure of (budget_line, sql/functions/lines.sql). Every
     * budget applies whatever its currency: budget_applicable ignores the currency it is given.
     */
    async loadLine (call: CallFilter, currency: string): Promise<{ line: LineBudget[], definitionsVersion: number }> {
      const { scopes } = call
      const rows = await sql<Array<LineBudget & { definitionsVersion: string }>>`
        select budget_id as "budgetId", name, alerts, scope_matched as "scopeMatched", scope_rank as "scopeRank",
               period_start as "periodStart", period_end as "periodEnd", definitions_version::text as "definitionsVersion",
               rate_requests_per_minute as "requestsPerMinute", rate_tokens_per_minute::float8 as "tokensPerMinute", currency, near_limit as "nearLimit"
        from budget_line(${scopes.map((s) => s.type)}::text[], ${scopes.map((s) => s.id)}::text[], ${currency}, ${call.model}, ${canonicalTags(call.tags)}::text::jsonb)`
      // A caller with no budget still learns the version: its empty line is as cacheable as any.
      const version = rows[0]?.definitionsVersion ?? await definitionsVersion()
      return { line: rows.map(({ definitionsVersion: _version, ...budget }) => budget), definitionsVersion: Number(version) }
    },

    definitionsVersion,

    /**
     * Holds for a batch of calls in one statement (budget_hold_batch, sql/functions/holds.sql): each call's estimate
     * on every budget of its line, or on none, admitted in the order given. Returns each call's hold.
     */
    async holdBatch (calls: HoldRequest[], currency: string, ttlMs: number): Promise<Hold[]> {
      const rows = calls.flatMap((call, index) => call.line.map((budget) => ({ call: index + 1, budget })))
      const needs = (test: (alert: BudgetAlert) => boolean) => calls.some((call) => call.line.some((budget) => budget.alerts.some(test)))
      // Arrays go over the wire as text (postgres.js serializes elements by the type it is told) and are cast in SQL.
      const held = await retryingConflicts(async () => await sql<Array<HeldBudget & { callIndex: number, isCurrent: boolean, isReserved: boolean, definitionsVersion: string }>>`
        select call_index as "callIndex", budget_id as "budgetId", amount::text as amount, enforcement, current_amount::text as "currentAmount",
               reserved_amount::text as "reservedAmount", fits, is_current as "isCurrent", is_reserved as "isReserved",
               approved_through::text as "approvedThrough", projected_actions as "projectedActions",
               definitions_version::text as "definitionsVersion", held::text as held, out_of_range as "outOfRange"
        from budget_hold_batch(
          ${calls.map((call) => call.reservationId)}::text[]::uuid[], ${calls.map((call) => call.amount)}::text[]::numeric[],
          ${calls.map((call) => call.requestId)}::text[], ${currency}, ${`${ttlMs} milliseconds`}::interval,
          ${rows.map((row) => String(row.call))}::text[]::integer[], ${rows.map((row) => row.budget.budgetId)}::text[]::uuid[],
          ${rows.map((row) => row.budget.periodStart.toISOString())}::text[]::timestamptz[],
          ${rows.map((row) => row.budget.periodEnd.toISOString())}::text[]::timestamptz[],
          ${rows.map((row) => String(row.budget.scopeMatched))}::text[]::boolean[], ${rows.map((row) => String(row.budget.scopeRank))}::text[]::integer[],
          ${needs((alert) => alert.actions.includes('require-approval'))}, ${needs((alert) => alert.basis === 'projected')})`)
      const holds: Hold[] = calls.map((call) => ({ current: call.line.length === 0, reserved: false, budgets: [], definitionsVersion: -1 }))
      for (const { callIndex, isCurrent, isReserved, definitionsVersion, ...budget } of held) {
        const hold = holds[callIndex - 1]!
        hold.definitionsVersion = Number(definitionsVersion)
        hold.current = isCurrent
        hold.reserved = isReserved
        hold.budgets.push({
          ...budget,
          amount: normalizeMoney(budget.amount),
          currentAmount: normalizeMoney(budget.currentAmount),
          reservedAmount: normalizeMoney(budget.reservedAmount),
          approvedThrough: budget.approvedThrough === null ? null : normalizeMoney(budget.approvedThrough),
          held: budget.held === null ? null : normalizeMoney(budget.held)
        })
      }
      // A call none of whose windows was found holds nothing and must reload its line.
      calls.forEach((call, index) => { if (holds[index]!.budgets.length < call.line.length) holds[index]!.current = false })
      return holds
    },

    /** Ends many reservations in one transaction (budget_settle_batch, sql/functions/settlements.sql). Returns the usage ids by reservation found (a reservation already ended is not in the map). */
    async settleBatch (settlements: Settlement[]): Promise<{ usageIds: Map<string, string | null>, definitionsVersion: number }> {
      const rows = await sql<Array<{ reservationId: string, usageId: string | null, definitionsVersion: string }>>`
        select reservation_id as "reservationId", usage_id as "usageId", definitions_version::text as "definitionsVersion"
        from budget_settle_batch(${settlements.map((s) => s.reservationId)}::text[]::uuid[], ${settlements.map((s) => s.actualCost)}::text[]::numeric[],
                                 ${settlements.map((s) => s.source)}::text[], ${settlements.map((s) => s.description)}::text[],
                                 ${settlements.map((s) => JSON.stringify(s.metadata))}::text[]::jsonb[])`
      return { usageIds: new Map(rows.map((row) => [row.reservationId, row.usageId])), definitionsVersion: Number(rows[0]?.definitionsVersion ?? -1) }
    },

    /**
     * Takes (or adds to) a lease on the line: up to `wanted` on every budget, at most an eighth of the
     * tightest room, never past a threshold whose alert does more than notify; nothing when that is
     * under `least` or the line is out of date (budget_lease_take, sql/functions/leases.sql).
     */
    async takeLease (leaseId: string, line: LineBudget[], currency: string, ttlMs: number, wanted: Money, least: Money) {
      const rows = await retryingConflicts(async () => await sql<Array<{ granted: string, budgetId: string, amount: string, enforcement: 'hard' | 'soft', currentAmount: string, reservedAmount: string, definitionsVersion: string }>>`
        select granted::text as granted, budget_id as "budgetId", amount::text as amount, enforcement,
               current_amount::text as "currentAmount", reserved_amount::text as "reservedAmount", definitions_version::text as "definitionsVersion"
        from budget_lease_take(${leaseId}, ${currency}, ${`${ttlMs} milliseconds`}::interval, ${wanted}::numeric, ${least}::numeric,
          ${line.map((b) => b.budgetId)}::text[]::uuid[], ${line.map((b) => b.periodStart.toISOString())}::text[]::timestamptz[],
          ${line.map((b) => b.periodEnd.toISOString())}::text[]::timestamptz[], ${line.map((b) => String(b.scopeMatched))}::text[]::boolean[],
          ${line.map((b) => String(b.scopeRank))}::text[]::integer[])`)
      if (rows.length === 0) return null
      return {
        granted: normalizeMoney(rows[0]!.granted),
        definitionsVersion: Number(rows[0]!.definitionsVersion),
        budgets: rows.map((row) => ({
          budgetId: row.budgetId, amount: normalizeMoney(row.amount), enforcement: row.enforcement,
          currentAmount: normalizeMoney(row.currentAmount), reservedAmount: normalizeMoney(row.reservedAmount)
        }))
      }
    },

    /**
     * Keeps a lease alive while its process is; false when it has no row (not taken yet, or expired and
     * swept). Its rows are locked in the lock order of sql/functions/settlements.sql, (id, budget_id), before they are written:
     * an update alone locks them in whatever order its plan reads them, and deadlocked against a
     * settlement or a return of the same lease. The lock wait is bounded as take's is (a local setting,
     * evaluated before any row is locked: every row the lock reads is joined to it), then retried as the
     * other gate statements are.
     */
    async renewLease (leaseId: string, ttlMs: number): Promise<boolean> {
      const renewed = await retryingConflicts(async () => await sql`
        with bound as materialized (select set_config('lock_timeout', ${`${RENEW_LOCK_TIMEOUT_MS}ms`}, true)),
        locked as materialized (
          select r.id, r.budget_id from budget_reservations r cross join bound
          where r.id = ${leaseId} order by r.id, r.budget_id for update of r
        )
        update budget_reservations r set expires_at = now() + ${`${ttlMs} milliseconds`}::interval
        from locked l where r.id = l.id and r.budget_id = l.budget_id`)
      return renewed.count > 0
    },

    /**
     * Gives back `amount` of a lease (budget_lease_return, sql/functions/leases.sql). `final`: every call admitted from
     * it has settled, so all it still holds goes back and the lease is gone.
     */
    /** Whether the lease's rows are still there: false once they expired and were swept (counted as spent). */
    async leaseHeld (leaseId: string): Promise<boolean> {
      const [row] = await sql<Array<{ held: boolean }>>`select exists (select 1 from budget_reservations where id = ${leaseId} and lease) as held`
      return row?.held === true
    },

    async returnLease (leaseId: string, amount: Money, final = false): Promise<void> {
      await retryingConflicts(async () => await sql`select budget_lease_return(${leaseId}, ${amount}::numeric, ${final})`)
    },

    /** Settles calls admitted from leases, in one transaction (budget_settle_leased, sql/functions/settlements.sql): each call's outcome, by request id. */
    async settleLeased (settlements: LeasedSettlement[], ttlMs: number): Promise<{ outcomes: Map<string, LeasedOutcome>, definitionsVersion: number }> {
      const rows = await sql<Array<{ requestId: string, usageId: string | null, leaseFound: boolean, version: string }>>`
        select request_id as "requestId", usage_id as "usageId", lease_found as "leaseFound", definitions_version::text as version
        from budget_settle_leased(${settlements.map((s) => s.leaseId)}::text[]::uuid[], ${settlements.map((s) => s.requestId)}::text[],
                                  ${settlements.map((s) => s.actualCost)}::text[]::numeric[], ${settlements.map((s) => s.source)}::text[],
                                  ${settlements.map((s) => s.description)}::text[], ${settlements.map((s) => JSON.stringify(s.metadata))}::text[]::jsonb[],
                                  ${settlements.map((s) => s.occurredAt.toISOString())}::text[]::timestamptz[], ${`${ttlMs} milliseconds`}::interval)`
      return {
        outcomes: new Map(rows.map((row) => [row.requestId, { usageId: row.usageId, leaseFound: row.leaseFound }])),
        definitionsVersion: Number(rows[0]?.version ?? -1)
      }
    },

    /** Takes allowance from the budgets' rate buckets (budget_rate_take, sql/functions/rate-limits.sql), in one statement. */
    async takeRate (asks: RateAsk[]): Promise<RateGrant[]> {
      return await retryingConflicts(async () => await sql<Array<{ budgetId: string, grantedRequests: number, grantedTokens: number, requestsPerMinute: number | null, tokensPerMinute: number | null, requestsLeft: number | null, tokensLeft: number | null }>>`
        select budget_id as "budgetId", granted_requests::float8 as "grantedRequests", granted_tokens::float8 as "grantedTokens",
               requests_per_minute as "requestsPerMinute", tokens_per_minute::float8 as "tokensPerMinute",
               requests_left::float8 as "requestsLeft", tokens_left::float8 as "tokensLeft"
        from budget_rate_take(${asks.map((a) => a.budgetId)}::uuid[], ${asks.map((a) => String(a.needRequests))}::text[]::numeric[],
                              ${asks.map((a) => String(a.needTokens))}::text[]::numeric[], ${asks.map((a) => String(a.askRequests))}::text[]::numeric[],
                              ${asks.map((a) => String(a.askTokens))}::text[]::numeric[])`)
    },

    /** Gives rate allowance back to the buckets (budget_rate_give_back, sql/functions/rate-limits.sql); a negative amount takes more. */
    async giveBackRate (returns: Array<{ budgetId: string, requests: number, tokens: number }>): Promise<void> {
      if (returns.length === 0) return
      await retryingConflicts(async () => await sql`select budget_rate_give_back(${returns.map((r) => r.budgetId)}::uuid[], ${returns.map((r) => String(r.requests))}::text[]::numeric[],
                                             ${returns.map((r) => String(r.tokens))}::text[]::numeric[])`)
    },

    async sweepExpired (limit: number): Promise<number> {
      const [row] = await sql<Array<{ swept: number }>>`select budget_sweep_expired(${limit}) as swept`
      return row?.swept ?? 0
    },

    /**
     * The budgets that apply to the scopes, whatever their currency, with their current numbers and `estimate`
     * (in `currency`) converted into each one's; reads only, locks nothing.
     */
    async listApplicable ({ scopes, model, tags }: CallFilter, currency: string, estimate: Money = '0'): Promise<ApplicableBudget[]> {
      return await readStandings(sql`
        budget_applicable(${scopes.map((s) => s.type)}::text[], ${scopes.map((s) => s.id)}::text[], ${currency}, now(), ${model}, ${canonicalTags(tags)}::text::jsonb)`, estimate, currency)
    },

    /** The budget and each live ancestor with a window now, nearest first, with the same numbers as listApplicable (`estimate` in `currency`). */
    async listLineage (budgetId: string, currency: string, estimate: Money = '0'): Promise<ApplicableBudget[]> {
      return await readStandings(sql`(
        select l.id as budget_id, l.depth = 1 as scope_matched, l.depth as scope_rank, w.period_start, w.period_end
        from budget_lineage(${budgetId}) l
        join budget_definitions live on live.id = l.id and live.deleted_at is null
        cross join lateral budget_window(live, now()) w
      )`, estimate, currency)
    }
  }
}

export type ReservationRepository = ReturnType<typeof createReservationRepository>
