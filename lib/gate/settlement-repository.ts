// SQL for settlements: the ends of held calls and of calls admitted from leases, each kind one statement per batch.
import { NIL_ROOT, type Db } from '../kernel/database/db.js'
import type { Money } from '../kernel/money.js'

export interface Settlement {
  reservationId: string
  /** The call's request id and its line's budgets, when known: where its usage record is looked for after a connection cut. */
  origin?: RecordOrigin
  /** The trees of its line (treesOf), when known: the statement names them (else it reads them from the rows). */
  trees?: string[]
  actualCost: Money | null
  source: string
  description: string | null
  metadata: Record<string, unknown>
  /** The id its usage record gets: made once by the queue, and sent again with the settlement after a connection cut. */
  usageId?: string
  /** The window ledger's stamp when its statement was last sent (set by the queue; window-ledger.ts). */
  sentAt?: number
}

/** Where a settlement's usage record is: keyed by the call's request id, on one of the budgets that held it. */
export interface RecordOrigin {
  requestId: string
  budgetIds: string[]
}

/** The end of a call admitted from a lease: charged `actualCost` at `occurredAt` (inside the lease's windows). */
export interface LeasedSettlement {
  leaseId: string
  /** The lease's budgets: where the call's usage record is looked for after a connection cut. */
  budgetIds: string[]
  /** The trees of the lease's line (treesOf): the statement names them. */
  trees: string[]
  requestId: string
  actualCost: Money
  occurredAt: Date
  source: string
  description: string | null
  metadata: Record<string, unknown>
  /** The id its usage record gets: made once by the queue, and sent again with the settlement after a connection cut. */
  usageId?: string
  /** The window ledger's stamp when its statement was last sent (set by the queue; window-ledger.ts). */
  sentAt?: number
}

/** What became of a call admitted from a lease, once its batch committed (budget_settle_leased, sql/functions/settlements.sql). */
export interface LeasedOutcome {
  /** Its usage record; null when none was written by this settlement. */
  usageId: string | null
  /** False: the lease had expired and been swept (counting the call at its estimate) before this settlement. */
  leaseFound: boolean
}

/**
 * A jsonb[] argument from a batch's objects: sent as one JSON text and split in order by PostgreSQL
 * (budget_jsonb_elements, sql/functions/settlements.sql). A text[] of JSON texts would have every quote in
 * every object escaped for the array literal, per call.
 */
function jsonbArray (sql: Db, values: Array<Record<string, unknown>>) {
  return sql`budget_jsonb_elements(${JSON.stringify(values)}::text::jsonb)`
}

/**
 * The trees a batch's statement names, in root order: every settlement's, or null when one of them does not
 * know its own (the statement then reads them from the rows). On Citus the first one's node runs it.
 */
function batchTrees (settlements: Array<{ trees?: string[] }>): string[] | null {
  if (settlements.some((settlement) => settlement.trees === undefined)) return null
  return [...new Set(settlements.flatMap((settlement) => settlement.trees!))].sort()
}

export function createSettlementRepository (sql: Db) {
  return {
    /**
     * After a connection cut: the usage record with the settlement's own id (`own`: its first attempt
     * committed), else the one a settlement wrote for the request on one of these budgets (settlements record
     * one per request id: idempotency_key, on the budget that held it), and whether it is the sweeper's (the
     * call's hold expired and was counted at its estimate); null when there is none. `trees`: its line's
     * (treesOf), when known, where every record of the call is; on Citus the read then goes to their nodes only.
     */
    async findSettledRecord (origin: RecordOrigin | undefined, usageId: string, trees: string[] | undefined): Promise<{ usageId: string, own: boolean, swept: boolean } | null> {
      // Without its origin (a hold another process made) only the call's own record, by its id, can be told.
      const { requestId, budgetIds } = origin ?? { requestId: null, budgetIds: [] }
      const [row] = await sql<Array<{ usageId: string, own: boolean, swept: boolean }>>`
        select id as "usageId", id = ${usageId}::uuid as own, source = 'expired-reservation' as swept from budget_usage_records
        where (id = ${usageId}::uuid or (idempotency_key = ${requestId} and budget_id = any (${budgetIds}::text[]::uuid[])))
          ${trees === undefined ? sql`` : sql`and root_id = any (${trees}::text[]::uuid[])`}
        order by id = ${usageId}::uuid desc, recorded_at, id limit 1`
      return row ?? null
    },

    /** Ends many reservations in one transaction (budget_settle_batch, sql/functions/settlements.sql). Returns the usage ids by reservation found (a reservation already ended is not in the map). */
    async settleBatch (settlements: Settlement[]): Promise<{ usageIds: Map<string, string | null>, definitionsVersion: number }> {
      const trees = batchTrees(settlements)
      const rows = await sql<Array<{ reservationId: string, usageId: string | null, definitionsVersion: string }>>`
        select reservation_id as "reservationId", usage_id as "usageId", definitions_version::text as "definitionsVersion"
        from budget_settle_batch(${settlements.map((s) => s.reservationId)}::text[]::uuid[], ${settlements.map((s) => s.actualCost)}::text[]::numeric[],
                                 ${settlements.map((s) => s.source)}::text[], ${settlements.map((s) => s.description)}::text[],
                                 ${jsonbArray(sql, settlements.map((s) => s.metadata))}, ${settlements.map((s) => s.usageId ?? null)}::text[]::uuid[],
                                 ${trees}::text[]::uuid[], ${trees?.[0] ?? NIL_ROOT}::uuid)`
      return { usageIds: new Map(rows.map((row) => [row.reservationId, row.usageId])), definitionsVersion: Number(rows[0]?.definitionsVersion ?? -1) }
    },

    /** Settles calls admitted from leases, in one transaction (budget_settle_leased, sql/functions/settlements.sql): each call's outcome, by request id. */
    async settleLeased (settlements: LeasedSettlement[], ttlMs: number): Promise<{ outcomes: Map<string, LeasedOutcome>, definitionsVersion: number }> {
      const trees = batchTrees(settlements)
      const rows = await sql<Array<{ requestId: string, usageId: string | null, leaseFound: boolean, version: string }>>`
        select request_id as "requestId", usage_id as "usageId", lease_found as "leaseFound", definitions_version::text as version
        from budget_settle_leased(${settlements.map((s) => s.leaseId)}::text[]::uuid[], ${settlements.map((s) => s.requestId)}::text[],
                                  ${settlements.map((s) => s.actualCost)}::text[]::numeric[], ${settlements.map((s) => s.source)}::text[],
                                  ${settlements.map((s) => s.description)}::text[], ${jsonbArray(sql, settlements.map((s) => s.metadata))},
                                  ${settlements.map((s) => s.occurredAt.toISOString())}::text[]::timestamptz[], ${`${ttlMs} milliseconds`}::interval,
                                  ${settlements.map((s) => s.usageId ?? null)}::text[]::uuid[], ${trees}::text[]::uuid[], ${trees?.[0] ?? NIL_ROOT}::uuid)`
      return {
        outcomes: new Map(rows.map((row) => [row.requestId, { usageId: row.usageId, leaseFound: row.leaseFound }])),
        definitionsVersion: Number(rows[0]?.version ?? -1)
      }
    }
  }
}

export type SettlementRepository = ReturnType<typeof createSettlementRepository>
