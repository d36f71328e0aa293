// SQL for budget_definitions: one statement per function; hand it a transaction's sql to run inside one.
import { randomUUID } from 'node:crypto'
import { isUuid, type Db } from '../kernel/database/db.js'
import { normalizeMoney, type Money } from '../kernel/money.js'
import type { BudgetAlert, BudgetDefinition, BudgetDigest, Enforcement, NearLimitPolicy, BudgetFilters, Period, PeriodAlignment, RateLimits, ScopeType } from '../kernel/schemas.js'


/** A budget as the registry writes it: validated, canonical, dates parsed. */
export interface BudgetValues {
  name: string
  description: string | null
  scopeType: ScopeType
  scopeId: string
  parentId: string | null
  amount: Money
  currency: string
  period: Period
  startDate: Date
  endDate: Date | null
  recurring: boolean
  timezone: string
  fiscalYearStartMonth: number
  periodAlignment: PeriodAlignment
  filters: BudgetFilters
  rateLimits: RateLimits
  metrics: boolean
  alerts: BudgetAlert[]
  enforcement: Enforcement
  digest: BudgetDigest | null
  nearLimit: NearLimitPolicy | null
  maxCallCost: Money | null
}

interface BudgetRow {
  id: string
  name: string
  description: string | null
  scope_type: ScopeType
  scope_id: string
  parent_id: string | null
  root_id: string
  amount: string
  currency: string
  period: Period
  start_date: Date
  end_date: Date | null
  recurring: boolean
  timezone: string
  fiscal_year_start_month: number
  period_alignment: PeriodAlignment
  filter_models: string[] | null
  filter_tags: Record<string, string> | null
  rate_requests_per_minute: number | null
  rate_tokens_per_minute: string | null
  metrics: boolean
  alerts: BudgetAlert[]
  enforcement: Enforcement
  digest_every: BudgetDigest['every'] | null
  digest_channels: string[] | null
  near_limit: NearLimitPolicy | null
  max_call_cost: string | null
  created_by: string | null
  created_at: Date
  updated_at: Date
}


export function createBudgetRepository (sql: Db) {
  // amount::text keeps money exact even when the host's postgres.js instance parses numeric to float.
  const columns = sql`
    id, name, description, scope_type, scope_id, parent_id, root_id, amount::text as amount, currency, period,
    start_date, end_date, recurring, timezone, fiscal_year_start_month, period_alignment, filter_models, filter_tags,
    rate_requests_per_minute, rate_tokens_per_minute::text as rate_tokens_per_minute, metrics, alerts, enforcement, digest_every, digest_channels, near_limit, max_call_cost::text as max_call_cost, created_by, created_at, updated_at`

  // A filter that is not there is null in its column (a budget without filters matches every call).
  const filterColumns = (filters: BudgetFilters) => sql`
    ${filters.models ?? null}::text[], ${filters.tags === undefined ? null : JSON.stringify(filters.tags)}::text::jsonb`

  return {
    /**
     * Has any money been counted toward the budget, or is any held on it? Its own usage, a
     * descendant's, a gated call's through its allocations, or a live reservation: all are in its currency.
     */
    async hasSpend (budgetId: string): Promise<boolean> {
      const [row] = await sql`
        select exists (select 1 from budget_usage_allocations where budget_id = ${budgetId})
            or exists (select 1 from budget_reservations where budget_id = ${budgetId}) as found`
      return row!.found as boolean
    },

    /**
     * The spend and live holds of the budget's window of now, its row locked FOR UPDATE as a hold locks it
     * (after the definition's row, the order followDefinition keeps): no hold joins it before this
     * transaction ends. Null when the window has no row yet (nothing spent or held in it).
     */
    async lockWindowOfNow (budgetId: string): Promise<{ current: Money, reserved: Money } | null> {
      const [row] = await sql<Array<{ current: string, reserved: string }>>`
        select c.current_amount::text as current, c.reserved_amount::text as reserved from budget_status_cache c
        where c.budget_id = ${budgetId} and c.period_start <= now() and now() < c.period_end
        order by c.budget_id, c.period_start
        for update of c`
      return row === undefined ? null : { current: normalizeMoney(row.current), reserved: normalizeMoney(row.reserved) }
    },

    async findBudget (id: string): Promise<BudgetDefinition | null> {
      if (!isUuid(id)) return null
      const [row] = await sql<BudgetRow[]>`select ${columns} from budget_definitions where id = ${id} and deleted_at is null`
      return row === undefined ? null : toBudget(row)
    },

    /** findBudget for many ids in one statement: the budgets found, by id (an id not a uuid names none). */
    async findBudgets (ids: string[]): Promise<Map<string, BudgetDefinition>> {
      const wanted = ids.filter(isUuid)
      if (wanted.length === 0) return new Map()
      const rows = await sql<BudgetRow[]>`
        select ${columns} from budget_definitions where id = any(${wanted}::text[]::uuid[]) and deleted_at is null`
      return new Map(rows.map((row) => [row.id, toBudget(row)]))
    },

    /** A new budget, in the tree of `parentRootId` (null: a root of its own). */
    async insertBudget (values: BudgetValues, parentRootId: string | null, createdBy: string | null): Promise<BudgetDefinition> {
      // the id is made here so that a root can name itself as its root (Citus places a row by its root)
      const id = randomUUID()
      const [row] = await sql<BudgetRow[]>`
        insert into budget_definitions
          (id, root_id, name, description, scope_type, scope_id, parent_id, amount, currency, period, start_date, end_date, recurring,
           timezone, fiscal_year_start_month, period_alignment, filter_models, filter_tags, rate_requests_per_minute, rate_tokens_per_minute,
           metrics, alerts, enforcement, digest_every, digest_channels, near_limit, max_call_cost, created_by)
        values
          (${id}, ${parentRootId ?? id}, ${values.name}, ${values.description}, ${values.scopeType}, ${values.scopeId}, ${values.parentId}, ${values.amount},
           ${values.currency}, ${values.period}, ${values.startDate}, ${values.endDate}, ${values.recurring},
           ${values.timezone}, ${values.fiscalYearStartMonth}, ${values.periodAlignment}, ${filterColumns(values.filters)},
           ${values.rateLimits.requestsPerMinute ?? null}, ${values.rateLimits.tokensPerMinute ?? null}, ${values.metrics},
           ${sql.json(values.alerts as unknown as Parameters<typeof sql.json>[0])}, ${values.enforcement},
           ${values.digest?.every ?? null}, ${values.digest?.channels ?? null}::text[], ${values.nearLimit}, ${values.maxCallCost}, ${createdBy})
        returning ${columns}`
      return toBudget(row!)
    },

    async updateBudget (id: string, values: BudgetValues): Promise<BudgetDefinition> {
      const [row] = await sql<BudgetRow[]>`
        update budget_definitions set
          name = ${values.name}, description = ${values.description}, scope_type = ${values.scopeType},
          scope_id = ${values.scopeId}, parent_id = ${values.parentId}, amount = ${values.amount},
          currency = ${values.currency}, period = ${values.period}, start_date = ${values.startDate},
          end_date = ${values.endDate}, recurring = ${values.recurring}, timezone = ${values.timezone},
          fiscal_year_start_month = ${values.fiscalYearStartMonth}, period_alignment = ${values.periodAlignment},
          (filter_models, filter_tags) = (${filterColumns(values.filters)}),
          rate_requests_per_minute = ${values.rateLimits.requestsPerMinute ?? null}, rate_tokens_per_minute = ${values.rateLimits.tokensPerMinute ?? null},
          metrics = ${values.metrics},
          alerts = ${sql.json(values.alerts as unknown as Parameters<typeof sql.json>[0])}, enforcement = ${values.enforcement},
          digest_every = ${values.digest?.every ?? null}, digest_channels = ${values.digest?.channels ?? null}::text[],
          near_limit = ${values.nearLimit}, max_call_cost = ${values.maxCallCost},
          updated_at = now()
        where id = ${id} and deleted_at is null
        returning ${columns}`
      return toBudget(row!)
    },

    /**
     * Re-evaluates the budget's alerts in its window of now against its definition as this transaction
     * sees it (budget_alerts_follow_definition, sql/functions/alerts.sql): crossings that now hold are recorded and queued
     * for notification once, active ones that no longer hold are resolved. Run it in the change's transaction.
     */
    async followDefinition (id: string): Promise<{ recorded: number, resolved: number }> {
      const [row] = await sql<Array<{ recorded: number, resolved: number }>>`select recorded, resolved from budget_alerts_follow_definition(${id})`
      return row!
    },

    /** Archives the budgets: their rows and usage stay, every read stops seeing them. */
    async archiveBudgets (ids: string[]): Promise<number> {
      const result = await sql`update budget_definitions set deleted_at = now(), updated_at = now() where id in ${sql(ids)} and deleted_at is null`
      return result.count
    },

    /** Live budgets in id order, after `afterId`: the keyset pages of GET {prefix}. */
    /** `within`: these budgets only; null: every one. */
    async listBudgets (afterId: string | null, limit: number, within: string[] | null): Promise<BudgetDefinition[]> {
      const rows = await sql<BudgetRow[]>`
        select ${columns} from budget_definitions
        where deleted_at is null ${afterId === null ? sql`` : sql`and id > ${afterId}`}
          ${within === null ? sql`` : sql`and id = any (${within}::text[]::uuid[])`}
        order by id
        limit ${limit}`
      return rows.map(toBudget)
    },

    async listScopeBudgets (scopeType: ScopeType, scopeId: string): Promise<BudgetDefinition[]> {
      const rows = await sql<BudgetRow[]>`
        select ${columns} from budget_definitions
        where scope_type = ${scopeType} and scope_id = ${scopeId} and deleted_at is null
        order by created_at, id`
      return rows.map(toBudget)
    },

    /** Every ancestor of the given budgets, nearest first (budget_lineage, the one upward walk). */
    async listAncestors (ids: string[]): Promise<BudgetDefinition[]> {
      if (ids.length === 0) return []
      const rows = await sql<BudgetRow[]>`
        select ${columns} from budget_definitions
        join (
          select l.id, min(l.depth) as depth from unnest(${ids}::uuid[]) as start(id)
          cross join lateral budget_lineage(start.id) l where l.depth > 1 group by l.id
        ) a using (id)
        where deleted_at is null
        order by a.depth, created_at, id`
      return rows.map(toBudget)
    },

    /** Every descendant of the given budgets, parents before their children (budget_subtree, the one downward walk). */
    async listDescendants (ids: string[]): Promise<BudgetDefinition[]> {
      if (ids.length === 0) return []
      const rows = await sql<BudgetRow[]>`
        select ${columns} from budget_subtree(${ids}::uuid[]) d join budget_definitions using (id)
        order by d.depth, created_at, id`
      return rows.map(toBudget)
    },

    /**
     * How deep the tree would be if the budget `id` (null: a new one) hung under `parentId`: the
     * parent's own depth plus the budget and its deepest descendant. And the most allowed.
     */
    async depthUnder (parentId: string, id: string | null): Promise<{ depth: number, maxDepth: number }> {
      const [row] = await sql<Array<{ depth: number, maxDepth: number }>>`
        select (select count(*) from budget_lineage(${parentId}))::int
               + 1 + coalesce((select max(d.depth) from budget_subtree(array[${id}::uuid]) d), 0)::int as depth,
               budget_max_depth() as "maxDepth"`
      return row!
    },

    async listChildren (id: string): Promise<BudgetDefinition[]> {
      const rows = await sql<BudgetRow[]>`
        select ${columns} from budget_definitions where parent_id = ${id} and deleted_at is null order by created_at, id`
      return rows.map(toBudget)
    },

    /** Do a call to `model` carrying `tags` match the budget's filters? (budget_matches, sql/functions/definitions.sql: the one place they are read.) */
    async matchesCall (id: string, model: string | null, tags: Record<string, string> | undefined): Promise<boolean> {
      const [row] = await sql<Array<{ matches: boolean }>>`
        select budget_matches(b, ${model}, ${tags === undefined ? null : JSON.stringify(tags)}::text::jsonb) as matches from budget_definitions b where b.id = ${id}`
      return row?.matches === true
    },

    /**
     * The zone names PostgreSQL knows (its own time zone database computes every period), but for those
     * AT TIME ZONE would read as a fixed-offset abbreviation instead (CET, EST: summer time lost) and
     * the ones that are not places (localtime is the server's own setting).
     */
    async listTimeZones (): Promise<string[]> {
      const rows = await sql<Array<{ name: string }>>`
        select name from pg_timezone_names
        where name not in (select abbrev from pg_timezone_abbrevs where abbrev <> 'UTC') and name not in ('localtime', 'posixrules', 'Factory')`
      return rows.map((row) => row.name)
    },

    /** Local midnight of each date (YYYY-MM-DD) in the zone, as PostgreSQL reads it. */
    async localMidnights (dates: string[], timezone: string): Promise<Date[]> {
      const rows = await sql<Array<{ instant: Date }>>`
        select d::date::timestamp at time zone ${timezone} as instant from unnest(${dates}::text[]) with ordinality as u(d, i) order by i`
      return rows.map((row) => row.instant)
    },

    /**
     * Serializes every change to the budget tree, so two concurrent edits cannot together make a
     * cycle or orphan a child. Held until the transaction ends; admin writes are rare, reads never wait.
     */
    async lockHierarchy (): Promise<void> {
      await sql`select pg_advisory_xact_lock(hashtextextended('relaycore-budgets:hierarchy', 0))`
    },

    /**
     * Bumps the definitions' global version (budget_definitions_bump, sql/functions/definitions.sql): the last
     * statement of a change's transaction, so every process hears of it, a new budget in a tree it has no line in too.
     */
    async bumpDefinitionsVersion (): Promise<void> {
      await sql`select budget_definitions_bump()`
    }
  }
}

export type BudgetRepository = ReturnType<typeof createBudgetRepository>

function toBudget (row: BudgetRow): BudgetDefinition {
  return {
    id: row.id,
    name: row.name,
    description: row.description,
    scopeType: row.scope_type,
    scopeId: row.scope_id,
    parentId: row.parent_id,
    rootId: row.root_id,
    amount: normalizeMoney(row.amount),
    currency: row.currency,
    period: row.period,
    startDate: row.start_date.toISOString(),
    endDate: row.end_date?.toISOString() ?? null,
    recurring: row.recurring,
    timezone: row.timezone,
    fiscalYearStartMonth: row.fiscal_year_start_month,
    periodAlignment: row.period_alignment,
    filters: {
      ...(row.filter_models === null ? {} : { models: row.filter_models }),
      ...(row.filter_tags === null ? {} : { tags: row.filter_tags })
    },
    rateLimits: {
      ...(row.rate_requests_per_minute === null ? {} : { requestsPerMinute: row.rate_requests_per_minute }),
      ...(row.rate_tokens_per_minute === null ? {} : { tokensPerMinute: Number(row.rate_tokens_per_minute) })
    },
    metrics: row.metrics,
    alerts: row.alerts,
    enforcement: row.enforcement,
    digest: row.digest_every === null ? null : { every: row.digest_every, channels: row.digest_channels ?? [] },
    nearLimit: row.near_limit,
    maxCallCost: row.max_call_cost === null ? null : normalizeMoney(row.max_call_cost),
    createdBy: row.created_by,
    createdAt: row.created_at.toISOString(),
    updatedAt: row.updated_at.toISOString()
  }
}
