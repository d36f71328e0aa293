// SQL for reconciliation (sql/migrations/007_reconciliation.sql, sql/functions/reconciliation.sql): the
// mappings, each stored under its budget's tree (root_id) and audited; the report, the drift check and the
// true-up are the functions', read here.
import { createAuditRepository, type AuditContext } from '../audit/index.js'
import type { Db } from '../kernel/database/db.js'

export type MappingKind = 'project' | 'workspace' | 'account'

export interface CostMapping {
  id: string
  provider: string
  kind: MappingKind
  value: string
  budgetId: string
  trueUp: boolean
  createdAt: string
  updatedAt: string
}

export interface ReportLine {
  day: string
  provider: string
  budgetId: string
  budgetName: string
  currency: string
  trueUp: boolean
  filtered: boolean
  providerAmount: string | null
  recordedAmount: string
  correction: string | null
  difference: string | null
  ratio: string | null
  missingRate: string | null
}

export interface TrueUpOutcome {
  status: 'created' | 'adjusted' | 'unchanged' | 'no-report' | 'no-bucket'
  usageId: string | null
  amount: string | null
  previous: string | null
}

interface MappingRow extends Omit<CostMapping, 'createdAt' | 'updatedAt'> { createdAt: Date, updatedAt: Date }
const toMapping = (row: MappingRow): CostMapping => ({ ...row, createdAt: row.createdAt.toISOString(), updatedAt: row.updatedAt.toISOString() })

export function createReconciliationRepository (sql: Db) {
  const columns = sql`id::text as id, provider, kind, value, budget_id as "budgetId", true_up as "trueUp", created_at as "createdAt", updated_at as "updatedAt"`
  const audited = (mapping: Omit<CostMapping, 'createdAt' | 'updatedAt'>) => ({ id: mapping.id, provider: mapping.provider, kind: mapping.kind, value: mapping.value, budgetId: mapping.budgetId, trueUp: mapping.trueUp })
  const audit = createAuditRepository(sql)
  /** The tree a mapping is stored in, or a budget is in: a read by id (on Citus, of every shard), before the statements that name it. */
  const mappingRoot = async (id: string) => (await sql<Array<{ rootId: string }>>`select root_id as "rootId" from budget_recon_mappings where id = ${id}::bigint`)[0]?.rootId
  const budgetRoot = async (budgetId: string) => (await sql<Array<{ rootId: string }>>`select root_id as "rootId" from budget_definitions where id = ${budgetId}`)[0]?.rootId

  return {
    async listMappings (): Promise<CostMapping[]> {
      return (await sql<MappingRow[]>`select ${columns} from budget_recon_mappings order by provider, kind, value, id`).map(toMapping)
    },

    async findMapping (id: string, lock = false): Promise<CostMapping | null> {
      const rootId = await mappingRoot(id)
      if (rootId === undefined) return null
      const [row] = await sql<MappingRow[]>`select ${columns} from budget_recon_mappings where root_id = ${rootId} and id = ${id}::bigint ${lock ? sql`for update` : sql``}`
      return row === undefined ? null : toMapping(row)
    },

    /** Serializes mapping changes, so that "one provider per budget" and "a dimension once" hold across concurrent writers. */
    async lockMappings (): Promise<void> {
      await sql`select pg_advisory_xact_lock(hashtextextended('relaycore-budgets:cost-mappings', 0))`
    },

    /** Taken by a true-up: a mapping moved or deleted (lockMappings) waits for it, and sees the corrections it wrote. */
    async lockMappingsShared (): Promise<void> {
      await sql`select pg_advisory_xact_lock_shared(hashtextextended('relaycore-budgets:cost-mappings', 0))`
    },

    /** The providers other than `provider` the budget is mapped to (by mappings other than `except`). */
    async otherProviders (budgetId: string, provider: string, except: string | null): Promise<string[]> {
      const rows = await sql<Array<{ provider: string }>>`
        select distinct provider from budget_recon_mappings
        where budget_id = ${budgetId} and provider <> ${provider} ${except === null ? sql`` : sql`and id <> ${except}::bigint`} order by provider`
      return rows.map((row) => row.provider)
    },

    /** Whether the buckets a mapping reads are mapped already: project and workspace both read the report's project column, so they are one dimension. */
    async dimensionTaken (provider: string, kind: MappingKind, value: string, except: string | null): Promise<boolean> {
      const kinds = kind === 'account' ? ['account'] : ['project', 'workspace']
      const [row] = await sql<Array<{ found: boolean }>>`
        select exists (select 1 from budget_recon_mappings where provider = ${provider} and kind = any(${kinds}::text[]) and value = ${value}
                       ${except === null ? sql`` : sql`and id <> ${except}::bigint`}) as found`
      return row!.found
    },

    async insertMapping (mapping: { provider: string, kind: MappingKind, value: string, budgetId: string, trueUp: boolean }, context: AuditContext): Promise<CostMapping> {
      const [row] = await sql<MappingRow[]>`
        insert into budget_recon_mappings (provider, kind, value, budget_id, root_id, true_up)
        select ${mapping.provider}, ${mapping.kind}, ${mapping.value}, d.id, d.root_id, ${mapping.trueUp} from budget_definitions d where d.id = ${mapping.budgetId}
        returning ${columns}`
      if (row === undefined) throw new Error(`no cost mapping written for budget ${mapping.budgetId}: it does not exist`)
      await audit.record(row.budgetId, 'create-cost-mapping', context, { after: audited(row) })
      return toMapping(row)
    },

    /**
     * A mapping moved to a budget of another tree changes the column its row is stored by, which Citus refuses:
     * its row is deleted and inserted again there, with the same id and creation time, in one statement (the
     * caller holds the mapping lock, so no other change sees it gone; on Citus a read of every shard made while
     * the two trees commit may see it in neither or both, as Citus takes no snapshot across nodes).
     */
    async updateMapping (before: CostMapping, changes: { value?: string, budgetId?: string, trueUp?: boolean }, context: AuditContext): Promise<CostMapping> {
      const fromRoot = await mappingRoot(before.id)
      const budgetId = changes.budgetId ?? before.budgetId
      const toRoot = budgetId === before.budgetId ? fromRoot : await budgetRoot(budgetId)
      if (fromRoot === undefined || toRoot === undefined) throw new Error(`cost mapping ${before.id} or budget ${budgetId} is not there`)
      const set = { value: changes.value ?? before.value, trueUp: changes.trueUp ?? before.trueUp }
      const [row] = toRoot === fromRoot
        ? await sql<MappingRow[]>`
            update budget_recon_mappings set value = ${set.value}, budget_id = ${budgetId}, true_up = ${set.trueUp}, updated_at = statement_timestamp()
            where root_id = ${fromRoot} and id = ${before.id}::bigint
            returning ${columns}`
        : await sql<MappingRow[]>`
            with moved as (delete from budget_recon_mappings where root_id = ${fromRoot} and id = ${before.id}::bigint returning id, provider, kind, created_at)
            insert into budget_recon_mappings (id, provider, kind, value, budget_id, root_id, true_up, created_at, updated_at)
            overriding system value
            select m.id, m.provider, m.kind, ${set.value}, ${budgetId}, ${toRoot}, ${set.trueUp}, m.created_at, clock_timestamp() from moved m
            returning ${columns}`
      if (row === undefined) throw new Error(`cost mapping ${before.id} was not written`)
      const changed = (['value', 'budgetId', 'trueUp'] as const).filter((field) => changes[field] !== undefined && changes[field] !== before[field])
      await audit.record(row.budgetId, 'update-cost-mapping', context, { changes: changed, before: audited(before), after: audited(row) })
      return toMapping(row)
    },

    async deleteMapping (before: CostMapping, context: AuditContext): Promise<void> {
      await sql`delete from budget_recon_mappings where root_id = ${await mappingRoot(before.id) ?? null} and id = ${before.id}::bigint`
      await audit.record(before.budgetId, 'delete-cost-mapping', context, { before: audited(before) })
    },

    /** The days a (provider, budget) has true-up corrections for, unless another mapping than `except` still maps that pair (a true-up can then still adjust them). */
    async strandedCorrections (provider: string, budgetId: string, except: string): Promise<string[]> {
      const rows = await sql<Array<{ day: string }>>`
        select c.day::text as day from budget_recon_corrections c
        where c.provider = ${provider} and c.budget_id = ${budgetId}
          and not exists (select 1 from budget_recon_mappings m
                          where m.root_id = c.root_id and m.provider = c.provider and m.budget_id = c.budget_id and m.id <> ${except}::bigint)
        order by c.day`
      return rows.map((row) => row.day)
    },

    async budgetExists (budgetId: string): Promise<boolean> {
      const [row] = await sql<Array<{ found: boolean }>>`select exists (select 1 from budget_definitions where id = ${budgetId} and deleted_at is null) as found`
      return row!.found
    },

    async report (from: string, to: string, provider: string | null, budgetId: string | null): Promise<ReportLine[]> {
      const rows = await sql<Array<Omit<ReportLine, 'day'> & { day: string }>>`
        select day::text as day, provider, budget_id as "budgetId", budget_name as "budgetName", currency, true_up as "trueUp", filtered,
               provider_amount::text as "providerAmount", recorded_amount::text as "recordedAmount", correction::text as correction,
               difference::text as difference, ratio::text as ratio, missing_rate as "missingRate"
        from budget_recon_report(${from}::date, ${to}::date, ${provider}, ${budgetId}::uuid)`
      return rows
    },

    /** Records the drifts past `tolerance` from `from` to the day before `today`, each once, with their notifications. */
    async evaluate (tolerance: string, from: string, today: string): Promise<Array<{ id: string, provider: string, day: string, budgetId: string }>> {
      return await sql<Array<{ id: string, provider: string, day: string, budgetId: string }>>`
        select drift_id as id, provider, day::text as day, budget_id as "budgetId" from budget_recon_evaluate(${tolerance}::numeric, ${from}::date, ${today}::date)`
    },

    /** The true-up of one line, then of the ancestors trued up before for the day (budget_recon_true_up), and an audit entry for each correction written or moved. */
    async trueUp (provider: string, day: string, budgetId: string, context: AuditContext): Promise<TrueUpOutcome> {
      const rows = await sql<Array<{ status: TrueUpOutcome['status'] | 'ancestor', budgetId: string, provider: string, usageId: string | null, amount: string | null, previous: string | null }>>`
        select t.status, t.budget_id as "budgetId", t.provider, t.usage_id as "usageId", t.amount::text as amount, t.previous::text as previous
        from budget_recon_true_up(${provider}, ${day}::date, ${budgetId}::uuid) with ordinality t
        order by t.ordinality`
      for (const row of rows) {
        if (row.status === 'created' || row.status === 'adjusted' || row.status === 'ancestor') {
          await audit.record(row.budgetId, 'true-up', context, {
            changes: row.status === 'created' ? [] : ['amount'],
            before: row.previous === null ? null : { provider: row.provider, day, amount: row.previous },
            after: { provider: row.provider, day, amount: row.amount, usageId: row.usageId }
          })
        }
      }
      const [own] = rows
      return { status: own!.status as TrueUpOutcome['status'], usageId: own!.usageId, amount: own!.amount, previous: own!.previous }
    }
  }
}

export type ReconciliationRepository = ReturnType<typeof createReconciliationRepository>
