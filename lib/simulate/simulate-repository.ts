// SQL of the what-if replay: one slice of the range through budget_simulate_slice (sql/functions/simulate.sql),
// the replay's state carried in and out as JSON, and the names of the budgets it met. Every statement runs on
// the replay's own connection, inside its transaction (the proposal is visible there, and nowhere else).
import type { ReservedSql } from 'postgres'

/**
 * The replay's state between slices, as budget_simulate_slice returns it. Amounts are exact decimal strings
 * (the function writes them as text, so no JSON number rounds them).
 */
export interface ReplayState {
  events?: number
  unknowns?: Record<string, boolean>
  windowIndex?: Record<string, number>
  refusalIndex?: Record<string, number>
  windows?: Array<{ b: string, s: string, e: string, spent: string, calls: number, actions: string, crossed: string }>
  crossings?: Array<{ w: number, b: string, s: string, threshold: string, at: string, spent: string }>
  refusals?: Array<{ b: string, outcome: 'refused' | 'downgraded', code: string, count: number, cost: string, first: string, avoided: string }>
}

export interface SliceInput {
  from: Date
  to: Date
  /** The start of the whole range: a window that began before it starts from the spend recorded before it. */
  rangeFrom: Date
  cheapModels: readonly string[]
  downgrades: Readonly<Record<string, string>>
  /** The slice's gated calls priced on the model auto-downgrade would have sent them to (repricedCalls). */
  repriced: { ids: string[], costs: string[] }
}

/** A gated call's record as the repricing reads it: its model, instant and the usage the provider reported. */
export interface DowngradableCall {
  id: string
  model: string
  occurredAt: Date
  metadata: Record<string, unknown>
}

export function createSimulateRepository () {
  return {
    /** One slice replayed; aborting `signal` cancels the statement (PostgreSQL's cancel request: SQLSTATE 57014). */
    async slice (connection: ReservedSql, state: ReplayState, input: SliceInput, signal?: AbortSignal): Promise<ReplayState> {
      const query = connection<Array<{ state: string }>>`
        select budget_simulate_slice(${JSON.stringify(state)}::text::jsonb, ${input.from}, ${input.to}, ${input.rangeFrom},
                                     ${[...input.cheapModels]}::text[], ${JSON.stringify(input.downgrades)}::text::jsonb,
                                     ${input.repriced.ids}::uuid[], ${input.repriced.costs}::numeric[])::text as state`
      const cancel = () => { void query.cancel() }
      signal?.addEventListener('abort', cancel, { once: true })
      try {
        if (signal?.aborted === true) cancel()
        const [row] = await query
        return JSON.parse(row!.state) as ReplayState
      } finally {
        signal?.removeEventListener('abort', cancel)
      }
    },

    /**
     * Whether any budget the transaction sees (the proposal's included) has an auto-downgrade alert: only then
     * can the replay send a call to a cheaper model, and only then are calls repriced.
     */
    async downgradeInForce (connection: ReservedSql): Promise<boolean> {
      const [row] = await connection<Array<{ any: boolean }>>`
        select exists (select 1 from budget_definitions d cross join lateral jsonb_array_elements(d.alerts) alert
                       where d.deleted_at is null and alert -> 'actions' ? 'auto-downgrade') as any`
      return row!.any
    },

    /**
     * The slice's gated calls (an estimate as the gate writes it, a string: budget_simulate_slice's test), in the
     * price currency, on a model auto-downgrade switches. Not a call the gate downgraded: it ran on the cheaper
     * model, and costs what it cost.
     */
    async downgradableCalls (connection: ReservedSql, from: Date, to: Date, models: string[], currency: string): Promise<DowngradableCall[]> {
      return await connection<DowngradableCall[]>`
        select u.id, u.model_id as model, u.occurred_at as "occurredAt", u.metadata
        from budget_usage_records u
        where u.occurred_at >= ${from} and u.occurred_at < ${to} and jsonb_typeof(u.metadata -> 'estimatedCost') = 'string'
          and u.model_id = any(${models}::text[]) and u.currency = ${currency} and not (u.metadata ? 'requestedModel')`
    },

    /** The name and currency of each budget, as the transaction sees them (a proposed budget included). */
    async budgetNames (connection: ReservedSql, ids: string[]): Promise<Map<string, { name: string, currency: string }>> {
      if (ids.length === 0) return new Map()
      const rows = await connection<Array<{ id: string, name: string, currency: string }>>`
        select id, name, currency from budget_definitions where id = any(${[...new Set(ids)]}::uuid[])`
      return new Map(rows.map((row) => [row.id, { name: row.name, currency: row.currency }]))
    }
  }
}
