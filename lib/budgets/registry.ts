// The Budget Registry: creates, reads, changes and deletes budgets, keeping the hierarchy sound.
import { toUnits } from '../kernel/money.js'
import type { Sql, TransactionSql } from 'postgres'
import { BudgetNotFoundError, CurrencyLockedError, EnforcementOverLimitError, HasChildrenError, HierarchyCycleError, HierarchyTooDeepError, InvalidFieldError, MoveAcrossTreesError, ParentNotFoundError } from '../kernel/errors.js'
import { createBudgetRepository, type BudgetRepository, type BudgetValues } from './budget-repository.js'
import { createAuditRepository, type AuditContext } from '../audit/index.js'
import { BudgetIdParams, BudgetListQuery, CreateBudgetRequest, DeleteBudgetQuery, ScopeParams, UpdateBudgetRequest, type BudgetDefinition, type BudgetHierarchy, type BudgetTreeNode, type ScopeType } from '../kernel/schemas.js'
import { shapeCheck } from '../kernel/validator.js'
import { checkStorableString } from '../kernel/json-limits.js'
import { parseTimestamp } from '../kernel/timestamps.js'
import { checkChannels, checkChildFitsParent, checkFilterModels, normalizeBudget } from './budget-rules.js'
import { isUuid, retryingConflicts } from '../kernel/database/db.js'

const DATE_ONLY = /^\d{4}-\d{2}-\d{2}$/
// The API's schemas own a request's shape, for the library's callers as for the routes (lib/kernel/validator.ts):
// each method checks its arguments with its route's schemas, path and query as well as body, and goes on with
// what the check returns (a field set to undefined is a field left out, as in a JSON body), never with the
// raw argument. Fields are named as the route names them.
const checkCreateShape = shapeCheck(CreateBudgetRequest)
const checkUpdateShape = shapeCheck(UpdateBudgetRequest)
const checkIdParams = shapeCheck(BudgetIdParams)
const checkScopeParams = shapeCheck(ScopeParams)
const checkListQuery = shapeCheck(BudgetListQuery)
const checkDeleteQuery = shapeCheck(DeleteBudgetQuery)

/** A budget to create, as the library takes it: dates as ISO strings or Date objects. */
export type CreateBudgetInput = Omit<CreateBudgetRequest, 'startDate' | 'endDate'> & { startDate: string | Date, endDate?: string | Date | null }
/** The fields to change. */
export type UpdateBudgetInput = Omit<UpdateBudgetRequest, 'startDate' | 'endDate'> & { startDate?: string | Date, endDate?: string | Date | null }

export interface DeleteBudgetOptions {
  /** Also delete every descendant; without it a budget with children is refused. */
  cascade?: boolean
}

/** Who makes a change, for the audit log: from the library, the actor `library` unless named. */
const LIBRARY: AuditContext = { actor: 'library', requestId: null }

/**
 * Who makes a change is written with it (the audit log's actor and request id, a new budget's createdBy), so it
 * must be text PostgreSQL can store: checked before the transaction, a library caller's bad value is a 400 that
 * names it and changes nothing, never a driver error (undefined) or PostgreSQL's 22021 (a NUL). A request id
 * left out is none, as the type's null.
 */
function checkWho (context: AuditContext): AuditContext {
  if (typeof context !== 'object' || context === null) throw new InvalidFieldError('context', 'must be an object { actor, requestId }')
  const { actor, requestId = null } = context
  return { actor: checkStorableString(actor, 'actor'), requestId: requestId === null ? null : checkStorableString(requestId, 'requestId') }
}

/** The fields whose values differ between two versions of a budget (updatedAt aside). */
/** Fields whose change alone leaves every threshold crossing as it was. */
const NOT_READ_BY_ALERTS = new Set<string>(['name', 'description', 'metadata', 'digest', 'rateLimits', 'nearLimit', 'maxCallCost'])

function changedFields (before: BudgetDefinition, after: BudgetDefinition): string[] {
  return (Object.keys(after) as Array<keyof BudgetDefinition>)
    .filter((field) => field !== 'updatedAt' && JSON.stringify(before[field]) !== JSON.stringify(after[field]))
}

export interface RegistryOptions {
  /** A model's price-table name (a dated snapshot as its base model): what model filters are matched on. */
  modelName?: (name: string) => string
  /** Called once a change to the budgets has committed: this process's gate forgets what it derived from them at once. */
  onChange?: () => void
  /** The notification channels configured, by name: a budget naming another is refused. Absent: names are not checked. */
  channels?: readonly string[]
  /**
   * The database is a Citus cluster: each change bumps the global version once more after its commit. The
   * version is a reference table read on the coordinator, whose part of a two-phase commit is seen before the
   * workers' (no distributed snapshot): a process can read the change's version before the budget rows it
   * stands for, and keep a line without them under it. A version bumped once every node has committed is past
   * any such line, so the processes forget it at their next read of the version, as for any change.
   */
  bumpAfterCommit?: boolean
}

export function createBudgetRegistry (sql: Sql, { modelName = (name) => name, onChange = () => {}, channels, bumpAfterCommit = false }: RegistryOptions = {}) {
  const budgets = createBudgetRepository(sql)

  /**
   * Every write takes the hierarchy lock first, so checks and write see one consistent tree. A write that
   * meets the gate on a budget's rows can end in a deadlock or a serialization failure (a window change
   * whose carry-over finds a new reservation held by its settlement, sql/functions/window-changes.sql): nothing of it committed,
   * so it runs again from the start, a few times; one that keeps failing is 503 unavailable, never a 500.
   * Each ends by bumping the definitions' global version.
   */
  async function inHierarchyTransaction<T> (work: (repository: BudgetRepository, tx: TransactionSql) => Promise<T>): Promise<T> {
    const result = await retryingConflicts(async () => await sql.begin(async (tx) => {
      const repository = createBudgetRepository(tx)
      await repository.lockHierarchy()
      const result = await work(repository, tx)
      await repository.bumpDefinitionsVersion() // last: sql/functions/definitions.sql says why
      return result
    }) as T)
    // The change has committed: a failure here must not answer it as failed (a client would make it again). A
    // line read in between is then kept at most until its window or TTL ends, or the next change.
    if (bumpAfterCommit) await budgets.bumpDefinitionsVersion().catch(() => {})
    onChange()
    return result
  }

  // PostgreSQL's zone names, read once: it is PostgreSQL that computes every window in them.
  let timeZones: Promise<Set<string>> | undefined

  /**
   * The zone must be one PostgreSQL knows, and a date without a time is midnight in it (so a monthly
   * budget in America/New_York from 2026-01-01 starts at that city's midnight, not at UTC's).
   */
  async function readDatesInZone<T extends { startDate?: string | Date, endDate?: string | Date | null }> (
    repository: BudgetRepository, input: T, timezone: string
  ): Promise<T> {
    timeZones ??= repository.listTimeZones().then((names) => new Set(names))
    const known = await timeZones.catch((error: unknown) => { timeZones = undefined; throw error })
    if (!known.has(timezone)) throw new InvalidFieldError('timezone', `is not a time zone PostgreSQL knows: '${timezone}' (an IANA name such as America/New_York)`)
    const fields = (['startDate', 'endDate'] as const).filter((field) => typeof input[field] === 'string' && DATE_ONLY.test(input[field]))
    if (timezone === 'UTC' || fields.length === 0) return input
    for (const field of fields) parseTimestamp(input[field], field) // a day that exists, before PostgreSQL reads it
    const instants = await repository.localMidnights(fields.map((field) => input[field] as string), timezone)
    return { ...input, ...Object.fromEntries(fields.map((field, index) => [field, instants[index]])) }
  }

  async function getBudget (id: string): Promise<BudgetDefinition> {
    checkIdParams({ id })
    const budget = await budgets.findBudget(id)
    if (budget === null) throw new BudgetNotFoundError(id)
    return budget
  }

  return {
    async createBudget (request: CreateBudgetInput, createdBy: string | null = null, requestId: string | null = null): Promise<BudgetDefinition> {
      const checked = checkCreateShape(request)
      if (createdBy !== null) checkStorableString(createdBy, 'createdBy')
      const who = checkWho({ actor: createdBy ?? LIBRARY.actor, requestId })
      return await inHierarchyTransaction(async (repository, tx) => {
        const values = normalizeBudget(await readDatesInZone(repository, checked, checked.timezone ?? 'UTC'))
        checkFilterModels(values.filters, modelName)
        if (channels !== undefined) checkChannels(checked, channels)
        const parent = await checkParent(repository, values, null)
        const budget = await repository.insertBudget(values, parent?.rootId ?? null, createdBy)
        await createAuditRepository(tx).record(budget.id, 'create', who, { after: budget })
        return budget
      })
    },

    getBudget,

    /** Applies a partial update; the budget as it would become must pass every create rule. */
    async updateBudget (id: string, updates: UpdateBudgetInput, context: AuditContext = LIBRARY): Promise<BudgetDefinition> {
      checkIdParams({ id })
      // The patch holds only the fields given: one set to undefined is not in it, so the stored value stays.
      const patch = checkUpdateShape(updates)
      const who = checkWho(context)
      return await inHierarchyTransaction(async (repository, tx) => {
        const current = await repository.findBudget(id)
        if (current === null) throw new BudgetNotFoundError(id)
        const zoned = await readDatesInZone(repository, patch, patch.timezone ?? current.timezone)
        // A budget that becomes custom is a length of time: it leaves the calendar unless told otherwise.
        const alignment = patch.period === 'custom' && patch.periodAlignment === undefined
          ? { periodAlignment: 'start' as const, fiscalYearStartMonth: patch.fiscalYearStartMonth ?? 1 }
          : {}
        const values = normalizeBudget({ ...current, ...zoned, ...alignment } as CreateBudgetRequest)
        checkFilterModels(values.filters, modelName)
        if (channels !== undefined) checkChannels(patch, channels)
        await checkParent(repository, values, current)
        for (const child of await repository.listChildren(id)) {
          checkChildFitsParent(normalizeBudget(child), values)
        }
        if (values.currency !== current.currency && await repository.hasSpend(id)) {
          throw new CurrencyLockedError(id, current.currency)
        }
        const updated = await repository.updateBudget(id, values)
        if (current.enforcement === 'shadow' && values.enforcement === 'hard') {
          // Checked after the definition's row is updated (locked), with the window's row locked: a hold
          // waiting on it then reads the budget as hard, and none admitted as shadow slips in unseen.
          const window = await repository.lockWindowOfNow(id)
          if (window !== null && toUnits(window.current) + toUnits(window.reserved) > toUnits(values.amount)) {
            throw new EnforcementOverLimitError(`Budget '${id}' cannot become hard: its window has ${window.current} spent and ${window.reserved} held, ` +
              `more than its amount ${values.amount}. Raise the amount, wait for the holds to settle or the next period, or switch it to soft`)
          }
        }
        const changes = changedFields(current, updated)
        // The gate reads the new definition as soon as this commits: the alerts must say what it will do.
        // A change no threshold reads (a description) takes no lock on the spend window.
        if (changes.some((field) => !NOT_READ_BY_ALERTS.has(field))) await repository.followDefinition(id)
        await createAuditRepository(tx).record(id, 'update', who, { changes, before: current, after: updated })
        return updated
      })
    },

    async deleteBudget (id: string, options: DeleteBudgetOptions = {}, context: AuditContext = LIBRARY): Promise<void> {
      checkIdParams({ id })
      // As the route's query: cascade a boolean (a string 'false' is refused, not read as true), false unless given.
      const { cascade } = checkDeleteQuery(options)
      const who = checkWho(context)
      await inHierarchyTransaction(async (repository, tx) => {
        const budget = await repository.findBudget(id)
        if (budget === null) throw new BudgetNotFoundError(id)
        const descendants = await repository.listDescendants([id])
        if (descendants.length > 0 && !cascade) {
          throw new HasChildrenError(id, descendants.filter((d) => d.parentId === id).length)
        }
        await repository.archiveBudgets([id, ...descendants.map((d) => d.id)])
        const audit = createAuditRepository(tx)
        for (const archived of [budget, ...descendants]) {
          await audit.record(archived.id, 'delete', who, { before: archived, ...(archived.id === id ? {} : { changes: [`cascade from ${id}`] }) })
        }
      })
    },

    /** Every live budget, a page at a time in id order; the cursor is the last budget's id. */
    /** `within`: only these budgets (a scoped principal's area); null: every budget. */
    async listBudgets (query: { limit?: number, cursor?: string } = {}, within: ReadonlySet<string> | null = null): Promise<{ budgets: BudgetDefinition[], nextCursor: string | null }> {
      const { limit = 100, cursor } = checkListQuery(query)
      if (cursor !== undefined && !isUuid(cursor)) throw new InvalidFieldError('cursor', 'is not a cursor this API returned')
      const found = await budgets.listBudgets(cursor ?? null, limit + 1, within === null ? null : [...within])
      const shown = found.slice(0, limit)
      return { budgets: shown, nextCursor: found.length > limit ? shown[shown.length - 1]!.id : null }
    },

    async getBudgetsByScope (scopeType: ScopeType, scopeId: string, within: ReadonlySet<string> | null = null): Promise<BudgetDefinition[]> {
      checkScopeParams({ type: scopeType, id: scopeId })
      return visibleOf(await budgets.listScopeBudgets(scopeType, scopeId), within)
    },

    /**
     * The scope's budgets with all their ancestors and descendants, as trees from the topmost ancestors down.
     * `within`: only these budgets are shown (a scoped principal's area), the topmost of them as roots.
     */
    async getHierarchy (scopeType: ScopeType, scopeId: string, within: ReadonlySet<string> | null = null): Promise<BudgetHierarchy> {
      checkScopeParams({ type: scopeType, id: scopeId })
      const own = await budgets.listScopeBudgets(scopeType, scopeId)
      const ids = own.map((budget) => budget.id)
      const [ancestors, descendants] = await Promise.all([budgets.listAncestors(ids), budgets.listDescendants(ids)])
      return { scopeType, scopeId, roots: buildTrees(visibleOf([...ancestors, ...own, ...descendants], within)) }
    }
  }
}

export type BudgetRegistry = ReturnType<typeof createBudgetRegistry>

/**
 * The parent must exist, must keep a moved budget in its tree (its root never changes), must not be the
 * budget or one of its descendants, must keep the tree within its maximum depth, and must have room for
 * the child. `current`: the budget as stored, for an update; null for a create. Returns the parent (null:
 * none), whose root a new budget takes.
 */
async function checkParent (repository: BudgetRepository, values: BudgetValues, current: BudgetDefinition | null): Promise<BudgetDefinition | null> {
  if (values.parentId === null) {
    if (current !== null && current.rootId !== current.id) throw new MoveAcrossTreesError(current.id, current.rootId, 'would become a root of its own')
    return null
  }
  const parent = await repository.findBudget(values.parentId)
  if (parent === null) throw new ParentNotFoundError(values.parentId)
  if (current !== null) {
    if (parent.rootId !== current.rootId) throw new MoveAcrossTreesError(current.id, current.rootId, `its new parent '${parent.id}' is in the tree of '${parent.rootId}'`)
    const lineage = [parent, ...await repository.listAncestors([parent.id])]
    if (lineage.some((budget) => budget.id === current.id)) throw new HierarchyCycleError(current.id, parent.id)
  }
  const { depth, maxDepth } = await repository.depthUnder(parent.id, current?.id ?? null)
  if (depth > maxDepth) throw new HierarchyTooDeepError(depth, maxDepth)
  checkChildFitsParent(values, normalizeBudget(parent))
  return parent
}

function visibleOf (budgets: BudgetDefinition[], within: ReadonlySet<string> | null): BudgetDefinition[] {
  return within === null ? budgets : budgets.filter((budget) => within.has(budget.id))
}

function buildTrees (budgets: BudgetDefinition[]): BudgetTreeNode[] {
  const nodes = new Map<string, BudgetTreeNode>()
  for (const budget of budgets) nodes.set(budget.id, { ...budget, children: [] })
  const roots: BudgetTreeNode[] = []
  for (const node of nodes.values()) {
    const parent = node.parentId === null ? undefined : nodes.get(node.parentId)
    if (parent === undefined) roots.push(node)
    else parent.children.push(node)
  }
  return roots
}
