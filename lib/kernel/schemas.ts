// The API's shapes, declared once: they validate requests, type the code and document the routes.
import { Type, type Static, type TSchema } from '@sinclair/typebox'

/** A string enum as JSON Schema `enum`, so a bad value gets one clear message listing the allowed ones. */
function StringEnum<const T extends readonly string[]> (values: T, options: { description?: string } = {}) {
  return Type.Unsafe<T[number]>({ type: 'string', enum: [...values], ...options })
}

/** `null` or the schema; a type array rather than anyOf keeps validation messages plain. */
function Nullable<T extends TSchema> (schema: T) {
  return Type.Unsafe<Static<T> | null>({ ...schema, type: [schema.type, 'null'] })
}

export const SCOPE_TYPES = ['organization', 'team', 'user', 'project'] as const
/** What the gate does when a call's worst case no longer fits a hard budget (the gate's nearLimit option, or the budget's own). */
/** 'hard' refuses what would exceed the budget, 'soft' only alerts, 'shadow' records what hard would have done (docs/budgets.md#shadow-budgets). */
export const ENFORCEMENTS = ['hard', 'soft', 'shadow'] as const
export type Enforcement = typeof ENFORCEMENTS[number]
export const NEAR_LIMIT_POLICIES = ['refuse', 'clamp'] as const
export const PERIODS = ['daily', 'weekly', 'monthly', 'quarterly', 'annual', 'custom'] as const
export const PERIOD_ALIGNMENTS = ['start', 'calendar'] as const
export const ALERT_ACTIONS = ['notify', 'restrict-models', 'require-approval', 'block-all', 'auto-downgrade'] as const
/** The roles of an admin API principal (lib/access/principal.ts says what each may do). */
export const ROLES = ['viewer', 'editor', 'approver', 'admin'] as const

export const ScopeType = StringEnum(SCOPE_TYPES)
export const Period = StringEnum(PERIODS)
export const AlertAction = StringEnum(ALERT_ACTIONS)

export const MoneyInput = Type.Unsafe<string | number>({
  type: ['string', 'number'],
  description: 'A decimal amount: a string such as "25.50" (exact, up to 10 decimal places) or a JSON number of at most 15 significant digits.',
  examples: ['10000', 25.5]
})
export const Money = Type.String({
  description: 'An exact decimal amount as a string, without exponent or trailing zeros.',
  examples: ['10000', '25.5']
})
export const TimestampInput = Type.String({
  description: 'An ISO 8601 date (2024-01-01, read as midnight UTC) or date-time with a zone (2024-01-01T00:00:00Z).',
  examples: ['2024-01-01', '2024-01-01T00:00:00.000Z']
})
const Timestamp = Type.String({ format: 'date-time', description: 'ISO 8601 date-time in UTC.' })
const Uuid = Type.String({ format: 'uuid' })

/** A decimal written as a string, as an alert's money settings are kept: no sign, no exponent. */
const DecimalText = (description: string) => Type.String({ pattern: '^\\d+(\\.\\d+)?$', description })

export const ApprovalLevel = Type.Object({
  name: Type.String({ minLength: 1, maxLength: 100, description: 'What the level is called in requests and notifications: team lead, finance.' }),
  roles: Type.Optional(Type.Array(StringEnum(ROLES), { minItems: 1, maxItems: 4, uniqueItems: true, description: 'Principals of these roles, whose area holds the budget, decide this level.' })),
  actors: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 200 }), { minItems: 1, maxItems: 50, uniqueItems: true, description: 'These principals (by actor), whose area holds the budget, decide this level.' })),
  upTo: Type.Optional(DecimalText('This level alone decides a request of at most this amount; above it, the next level must approve as well. Every level but the last has one, each above the one before.'))
}, { additionalProperties: false })
export const ApprovalPolicy = Type.Object({
  levels: Type.Array(ApprovalLevel, { minItems: 1, maxItems: 5, description: 'In order: a request needs the first level, and each next one while its amount is above the level\'s upTo.' }),
  requestTtlMinutes: Type.Optional(Type.Integer({ minimum: 5, maximum: 43_200, description: 'How long a request waits for its decisions before it expires (default 1440, a day).' }))
}, { additionalProperties: false, description: 'require-approval: who decides a request for more spend, level by level (docs/approvals.md). Without one, one level of principals that may approve (approver, admin) decides.' })
export type ApprovalPolicy = Static<typeof ApprovalPolicy>

export const BudgetAlert = Type.Object({
  threshold: Type.Number({ exclusiveMinimum: 0, maximum: 1000, description: 'Percent of the budget amount at which the alert fires.' }),
  actions: Type.Array(AlertAction, { minItems: 1, maxItems: 5, uniqueItems: true }),
  notificationChannels: Type.Array(Type.String({ minLength: 1, maxLength: 500 }), { maxItems: 20, uniqueItems: true, default: [] }),
  basis: Type.Optional(StringEnum(['current', 'projected'] as const, { description: 'Compare the spend (default) or the projected total for the period.' })),
  allowedModels: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 200 }), { maxItems: 50, uniqueItems: true, description: 'restrict-models: the models still allowed (default: the gate\'s cheapModels).' })),
  maxPricePerMillion: Type.Optional(DecimalText('restrict-models: also allow any model whose output price per 1M tokens is at most this.')),
  approvalPolicy: Type.Optional(ApprovalPolicy)
}, { additionalProperties: false })

/** Tag keys and values: short, printable, and free of the `,` and `=` that the x-relay-tags header uses. */
export const TAG_KEY_PATTERN = '^[A-Za-z0-9_.:/@+-]{1,64}$'
export const TAG_VALUE_PATTERN = '^[A-Za-z0-9_.:/@+-]{1,200}$'
export const MOST_TAGS = 10
export const Tags = Type.Unsafe<Record<string, string>>({
  type: 'object',
  patternProperties: { [TAG_KEY_PATTERN]: { type: 'string', pattern: TAG_VALUE_PATTERN } },
  additionalProperties: false,
  maxProperties: MOST_TAGS,
  description: 'Key/value pairs: letters, digits and _ . : / @ + -; keys up to 64 characters, values up to 200.',
  examples: [{ feature: 'summarize', env: 'prod' }]
})
export const BudgetFilters = Type.Object({
  models: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 200, pattern: '^[^*]+\\*?$' }), {
    minItems: 1, maxItems: 50, uniqueItems: true, description: "Exact model names, or prefixes ending in '*' (gpt-4o*), matched on the model the gate calls."
  })),
  tags: Type.Optional(Type.Unsafe<Record<string, string>>({ ...Tags, minProperties: 1, description: 'Tags a call must all carry (x-relay-tags: feature=summarize,env=prod).' }))
}, { additionalProperties: false, description: 'A budget with filters counts, and gates, only the calls that match every one of them.' })

export const RateLimits = Type.Object({
  requestsPerMinute: Type.Optional(Type.Integer({ minimum: 1, maximum: 1_000_000_000, description: 'Calls a minute, across every gateway process.' })),
  tokensPerMinute: Type.Optional(Type.Integer({ minimum: 1, maximum: 1_000_000_000_000, description: 'Tokens (input and output) a minute, reserved at the estimate and corrected from the usage.' }))
}, { additionalProperties: false, description: 'Limits on the rate of the calls that count toward the budget, beside its money: over one, the gate answers 429.' })

export const DIGEST_FREQUENCIES = ['daily', 'weekly'] as const
export const BudgetDigest = Type.Object({
  every: StringEnum(DIGEST_FREQUENCIES, { description: "'daily': after each local day ends; 'weekly': after each ISO week (Monday to Sunday), in the budget's timezone." }),
  channels: Type.Array(Type.String({ minLength: 1, maxLength: 500 }), { minItems: 1, maxItems: 20, uniqueItems: true, description: 'Notification channels, by the names in the plugin\'s notifications.channels.' })
}, { additionalProperties: false, description: 'A scheduled digest: spend, burn rate, the forecast and the top models and callers of each day or week.' })

const budgetFields = {
  name: Type.String({ minLength: 1, maxLength: 200 }),
  description: Nullable(Type.String({ maxLength: 2000 })),
  scopeType: ScopeType,
  scopeId: Type.String({ minLength: 1, maxLength: 200 }),
  parentId: Nullable(Type.String({ description: 'The parent budget; its spend includes this one\'s.' })),
  amount: MoneyInput,
  currency: Type.String({ pattern: '^[A-Z]{3}$', description: 'ISO 4217 code.', examples: ['USD'] }),
  period: Period,
  startDate: TimestampInput,
  endDate: Nullable(TimestampInput),
  recurring: Type.Boolean({ description: 'Rolls over to a fresh period when one ends.' }),
  timezone: Type.String({
    minLength: 1,
    maxLength: 64,
    description: 'The IANA time zone whose wall clock the periods follow (default UTC). A date without a time (startDate, endDate) is midnight in this zone.',
    examples: ['America/New_York']
  }),
  fiscalYearStartMonth: Type.Integer({ minimum: 1, maximum: 12, description: 'The month (1-12) a fiscal year begins in: calendar-aligned quarterly and annual windows follow it (default 1).' }),
  periodAlignment: StringEnum(PERIOD_ALIGNMENTS, {
    description: "'calendar': windows start at local midnight, on Monday, on the 1st, on fiscal quarters and years; 'start': they step from startDate's local time. Default: 'calendar' when the budget names a timezone or fiscalYearStartMonth, else 'start'; custom periods are always 'start'."
  }),
  filters: BudgetFilters,
  rateLimits: RateLimits,
  metrics: Type.Boolean({ description: 'Always export this budget\'s Prometheus gauges (default false: only while among the top spenders).' }),
  alerts: Type.Array(BudgetAlert, { maxItems: 20 }),
  enforcement: StringEnum(ENFORCEMENTS, { description: "A hard budget refuses calls that would exceed it; a soft one only alerts; a shadow one never refuses, clamps or downgrades, and records each call a hard one would have (x-budget-shadow, metadata.shadow, its status's shadow)." }),
  digest: Nullable(BudgetDigest),
  nearLimit: Nullable(StringEnum(NEAR_LIMIT_POLICIES, {
    description: "When a call's worst case no longer fits this hard budget: 'refuse' it, or 'clamp' its max_tokens to what the budget can still afford (refused only below the gate's floor). Null (default): the gate's nearLimit option."
  })),
  maxCallCost: Type.Unsafe<string | number | null>({
    type: ['string', 'number', 'null'],
    description: "The most one call may cost, in the budget's currency (a decimal > 0, as amount): a call whose worst case is more is clamped under nearLimit 'clamp', else refused (402 call_cost_cap_exceeded), whatever the budget's room or enforcement. Null (default): no cap.",
    examples: ['0.50']
  })
}

export const CreateBudgetRequest = Type.Object({
  ...budgetFields,
  description: Type.Optional(budgetFields.description),
  parentId: Type.Optional(budgetFields.parentId),
  endDate: Type.Optional(budgetFields.endDate),
  recurring: Type.Optional(budgetFields.recurring),
  timezone: Type.Optional(budgetFields.timezone),
  fiscalYearStartMonth: Type.Optional(budgetFields.fiscalYearStartMonth),
  periodAlignment: Type.Optional(budgetFields.periodAlignment),
  filters: Type.Optional(budgetFields.filters),
  rateLimits: Type.Optional(budgetFields.rateLimits),
  metrics: Type.Optional(budgetFields.metrics),
  alerts: Type.Optional(budgetFields.alerts),
  enforcement: Type.Optional(budgetFields.enforcement),
  digest: Type.Optional(budgetFields.digest),
  nearLimit: Type.Optional(budgetFields.nearLimit),
  maxCallCost: Type.Optional(budgetFields.maxCallCost)
}, {
  additionalProperties: false,
  examples: [{
    name: 'Engineering Team Q1 Budget',
    description: 'Quarterly budget for engineering team AI usage',
    scopeType: 'team',
    scopeId: 'team-engineering',
    amount: 10000,
    currency: 'USD',
    period: 'quarterly',
    startDate: '2024-01-01T00:00:00.000Z',
    recurring: true,
    alerts: [
      { threshold: 50, actions: ['notify'], notificationChannels: ['email'] },
      { threshold: 80, actions: ['notify', 'restrict-models'], notificationChannels: ['email', 'slack'] },
      { threshold: 95, actions: ['require-approval'], notificationChannels: ['email', 'slack'] }
    ]
  }, {
    name: 'Summaries, gpt-4o family, per Berlin day',
    scopeType: 'team',
    scopeId: 'team-engineering',
    amount: '50',
    currency: 'USD',
    period: 'daily',
    timezone: 'Europe/Berlin',
    startDate: '2026-01-01',
    filters: { models: ['gpt-4o*'], tags: { feature: 'summarize' } },
    rateLimits: { requestsPerMinute: 600, tokensPerMinute: 2000000 }
  }]
})

export const UpdateBudgetRequest = Type.Partial(Type.Object(budgetFields), { additionalProperties: false, minProperties: 1, examples: [{ amount: '12500.75' }] })

export const BudgetDefinition = Type.Object({
  id: Uuid,
  name: Type.String(),
  description: Nullable(Type.String()),
  scopeType: ScopeType,
  scopeId: Type.String(),
  parentId: Nullable(Uuid),
  rootId: Type.String({ ...Uuid, description: 'The root of the budget\'s tree (its own id for a root); read-only, fixed when the budget is created.' }),
  amount: Money,
  currency: Type.String(),
  period: Period,
  startDate: Timestamp,
  endDate: Nullable(Timestamp),
  recurring: Type.Boolean(),
  timezone: Type.String(),
  fiscalYearStartMonth: Type.Integer(),
  periodAlignment: StringEnum(PERIOD_ALIGNMENTS),
  filters: BudgetFilters,
  rateLimits: RateLimits,
  metrics: Type.Boolean(),
  alerts: Type.Array(BudgetAlert),
  enforcement: StringEnum(ENFORCEMENTS),
  digest: Nullable(BudgetDigest),
  nearLimit: Nullable(StringEnum(NEAR_LIMIT_POLICIES)),
  maxCallCost: Nullable(Type.String({ description: "The most one call may cost, in the budget's currency; null: no cap." })),
  createdBy: Nullable(Type.String()),
  createdAt: Timestamp,
  updatedAt: Timestamp
})

export const BudgetTreeNode = Type.Recursive((Node) => Type.Composite([
  BudgetDefinition,
  Type.Object({ children: Type.Array(Node) })
]), { $id: 'BudgetTreeNode' })

export const BudgetList = Type.Object({ budgets: Type.Array(BudgetDefinition) })
export const BudgetPage = Type.Object({
  budgets: Type.Array(BudgetDefinition),
  nextCursor: Nullable(Type.String({ description: 'Pass as cursor for the next page; null on the last page.' }))
})
export const BudgetListQuery = Type.Object({
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500, default: 100 })),
  cursor: Type.Optional(Type.String({ maxLength: 40, description: 'nextCursor of the previous page.' }))
}, { additionalProperties: false })
export const BudgetHierarchy = Type.Object({
  scopeType: ScopeType,
  scopeId: Type.String(),
  roots: Type.Array(BudgetTreeNode, { description: 'The topmost ancestors of the scope\'s budgets, each with its descendants.' })
})

export const BudgetIdParams = Type.Object({ id: Type.String({ description: 'Budget id (uuid).' }) })
export const ScopeParams = Type.Object({ type: ScopeType, id: Type.String({ minLength: 1, maxLength: 200 }) })
export const DeleteBudgetQuery = Type.Object({
  cascade: Type.Boolean({ default: false, description: 'Also delete the budget\'s descendants.' })
}, { additionalProperties: false })

export const ErrorResponse = Type.Object({
  statusCode: Type.Integer(),
  code: Type.String({ description: 'Stable error code, such as BUDGET_ERR_NOT_FOUND.' }),
  error: Type.String(),
  message: Type.String(),
  field: Type.Optional(Type.String({ description: 'The request field at fault, as a dotted path.' }))
})

export type ScopeType = Static<typeof ScopeType>
export type Period = Static<typeof Period>
export type BudgetFilters = Static<typeof BudgetFilters>
export type RateLimits = Static<typeof RateLimits>
export type PeriodAlignment = typeof PERIOD_ALIGNMENTS[number]
export type NearLimitPolicy = typeof NEAR_LIMIT_POLICIES[number]
export type AlertAction = Static<typeof AlertAction>
export type BudgetAlert = Static<typeof BudgetAlert>
export type BudgetDigest = Static<typeof BudgetDigest>
export type CreateBudgetRequest = Static<typeof CreateBudgetRequest>
export type UpdateBudgetRequest = Static<typeof UpdateBudgetRequest>
export type BudgetDefinition = Static<typeof BudgetDefinition>
export type BudgetTreeNode = Static<typeof BudgetTreeNode>
export type BudgetHierarchy = Static<typeof BudgetHierarchy>

// Usage and status

export const UsageMetadata = Type.Object({
  requestId: Type.Optional(Type.String({ minLength: 1, maxLength: 200, description: 'Makes recording idempotent: one record per request id and budget.' })),
  modelId: Type.Optional(Type.String({ maxLength: 200 })),
  userId: Type.Optional(Type.String({ maxLength: 200 })),
  teamId: Type.Optional(Type.String({ maxLength: 200 })),
  projectId: Type.Optional(Type.String({ maxLength: 200 })),
  organizationId: Type.Optional(Type.String({ maxLength: 200 })),
  inputTokens: Type.Optional(Type.Integer({ minimum: 0 })),
  outputTokens: Type.Optional(Type.Integer({ minimum: 0 })),
  cachedInputTokens: Type.Optional(Type.Integer({ minimum: 0, description: 'Of inputTokens, those read from the provider\'s prompt cache (priced at the cache-read rate).' })),
  tags: Type.Optional(Tags)
}, { additionalProperties: true, maxProperties: 50, description: 'The keys above are checked; other keys are kept as given.' })

export const RecordUsageBody = Type.Object({
  amount: MoneyInput,
  currency: Type.String({ pattern: '^[A-Z]{3}$', description: 'Must be the budget\'s currency.' }),
  source: Type.Optional(Type.String({ maxLength: 200 })),
  description: Type.Optional(Type.String({ maxLength: 2000 })),
  metadata: Type.Optional(UsageMetadata),
  occurredAt: Type.Optional(TimestampInput)
}, {
  additionalProperties: false,
  examples: [{
    amount: 25.50,
    currency: 'USD',
    source: 'openai-gpt-4',
    description: 'GPT-4 API calls for code review',
    metadata: { requestId: 'req-123', modelId: 'gpt-4', userId: 'user-456', teamId: 'team-engineering', inputTokens: 1500, outputTokens: 800 }
  }]
})

export const UsageRecord = Type.Object({
  id: Uuid,
  budgetId: Nullable(Type.String({ format: 'uuid', description: 'The budget the record is stored on; null, in a usage page read by a principal with scopes, when that budget is outside its area (the record counts toward a budget of the area through its allocations: docs/access.md).' })),
  amount: Money,
  currency: Type.String(),
  source: Nullable(Type.String()),
  description: Nullable(Type.String()),
  metadata: Type.Object({}, { additionalProperties: true }),
  occurredAt: Timestamp,
  recordedAt: Timestamp
})

// Usage in bulk (POST /usage/batch)

/** At most this many records in one batch. */
export const MAX_BATCH_RECORDS = 10_000

export const BatchUsageScopes = Type.Object({
  user: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
  team: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
  project: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
  organization: Type.Optional(Type.String({ minLength: 1, maxLength: 200 }))
}, { additionalProperties: false, minProperties: 1, description: 'The caller\'s scopes, as a gated call gives them: the record goes on the budgets the gate would count the call on.' })

export const BatchUsageRecord = Type.Object({
  budgetId: Type.Optional(Type.String({ maxLength: 200, description: 'The budget to record on (uuid); or give scopes.' })),
  scopes: Type.Optional(BatchUsageScopes),
  ...RecordUsageBody.properties
}, { additionalProperties: false, description: 'A RecordUsageRequest with either budgetId or scopes. metadata.requestId is its idempotency key.' })

export const RecordUsageBatchBody = Type.Object({
  records: Type.Array(BatchUsageRecord, { minItems: 1, maxItems: MAX_BATCH_RECORDS, description: 'Each is checked, and answered, on its own.' })
}, {
  additionalProperties: false,
  examples: [{
    records: [
      { budgetId: '0b6e3f4e-8a62-4d8e-9a39-5d3f0f6f2c11', amount: '25.50', currency: 'USD', source: 'openai-gpt-4', metadata: { requestId: 'req-123', modelId: 'gpt-4' } },
      { scopes: { user: 'user-456', team: 'team-engineering' }, amount: '0.0042', currency: 'USD', source: 'gateway', metadata: { requestId: 'req-124', modelId: 'gpt-4o-mini', tags: { feature: 'summarize' } }, occurredAt: '2026-01-15T10:00:00Z' }
    ]
  }]
})

export const BatchUsageResult = Type.Object({
  index: Type.Integer({ description: 'The record\'s position in records.' }),
  status: StringEnum(['created', 'replayed', 'refused'] as const),
  record: Type.Optional(UsageRecord),
  error: Type.Optional(Type.Object({
    code: Type.String({ description: 'As the single route would answer: BUDGET_ERR_VALIDATION, BUDGET_ERR_NOT_FOUND, BUDGET_ERR_NOT_ACTIVE, BUDGET_ERR_IDEMPOTENCY_CONFLICT, BUDGET_ERR_NO_APPLICABLE_BUDGET...' }),
    message: Type.String(),
    field: Type.Optional(Type.String({ description: 'The field at fault, inside the record.' }))
  }))
})

export const UsageBatchResponse = Type.Object({
  results: Type.Array(BatchUsageResult, { description: 'One per record, in input order.' }),
  created: Type.Integer(),
  replayed: Type.Integer(),
  refused: Type.Integer()
}, {
  examples: [{
    results: [
      { index: 0, status: 'created', record: { id: '5c2f1f0e-1d2b-4c59-8f0a-2e7f4a1d9b30', budgetId: '0b6e3f4e-8a62-4d8e-9a39-5d3f0f6f2c11', amount: '25.5', currency: 'USD', source: 'openai-gpt-4', description: null, metadata: { requestId: 'req-123', modelId: 'gpt-4' }, occurredAt: '2026-01-15T10:00:00.000Z', recordedAt: '2026-01-15T10:00:01.000Z' } },
      { index: 1, status: 'refused', error: { code: 'BUDGET_ERR_NO_APPLICABLE_BUDGET', message: 'No budget applies to the scopes user user-456, team team-engineering (model gpt-4o-mini)', field: 'scopes' } }
    ],
    created: 1,
    replayed: 0,
    refused: 1
  }]
})

export type BatchUsageRecord = Static<typeof BatchUsageRecord>
export type BatchUsageResult = Static<typeof BatchUsageResult>

export const UsageHistoryQuery = Type.Object({
  from: Type.Optional(TimestampInput),
  to: Type.Optional(TimestampInput),
  modelId: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
  userId: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
  tag: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_.:/@+-]{1,64}=[A-Za-z0-9_.:/@+-]{1,200}$', description: 'Only usage carrying this tag, as key=value.', examples: ['feature=summarize'] })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500, default: 50 })),
  cursor: Type.Optional(Type.String({ maxLength: 500, description: 'nextCursor of the previous page.' }))
}, { additionalProperties: false })

export const UsagePage = Type.Object({
  records: Type.Array(UsageRecord),
  nextCursor: Nullable(Type.String({ description: 'Pass as cursor for the next page; null on the last page.' }))
})

const UsageTotals = { total: Money, count: Type.Integer() }
export const UsageSummaryQuery = Type.Object({
  from: Type.Optional(TimestampInput),
  to: Type.Optional(TimestampInput),
  modelId: UsageHistoryQuery.properties.modelId,
  tag: UsageHistoryQuery.properties.tag,
  tagKey: Type.Optional(Type.String({ pattern: TAG_KEY_PATTERN, description: 'Also total the usage by the value of this tag (byTag).', examples: ['feature'] }))
}, { additionalProperties: false })
export const UsageSummary = Type.Object({
  budgetId: Uuid,
  currency: Type.String(),
  from: Timestamp,
  to: Timestamp,
  ...UsageTotals,
  byModel: Type.Array(Type.Object({ modelId: Nullable(Type.String()), ...UsageTotals })),
  byUser: Type.Array(Type.Object({ userId: Nullable(Type.String()), ...UsageTotals })),
  byDay: Type.Array(Type.Object({ day: Type.String({ description: 'UTC day, YYYY-MM-DD.' }), ...UsageTotals })),
  byTag: Type.Optional(Type.Array(Type.Object({ value: Nullable(Type.String({ description: 'The tagKey tag\'s value; null for usage without it.' })), ...UsageTotals })))
})

// blocked: a block-all alert is in force, and the gate refuses every call (budget_blocked).
const Health = StringEnum(['normal', 'warning', 'critical', 'exceeded', 'blocked'] as const)
const Basis = StringEnum(['current', 'projected'] as const)

export const ActiveAlert = Type.Object({
  id: Uuid,
  threshold: Type.Number(),
  basis: Basis,
  actions: Type.Array(AlertAction),
  crossedAt: Timestamp,
  acknowledged: Type.Boolean()
}, { description: 'A threshold crossed in this period (from the alert history).' })

/** A shadow budget's as-if ledger this window: what a hard twin would have spent, and what it would have done. */
export const ShadowStatus = Type.Object({
  asIfCurrentAmount: Type.String({ description: 'What the budget would have spent were it hard: currentAmount less excludedAmount.' }),
  excludedAmount: Type.String({ description: 'The real spend of the calls a hard budget would have refused.' }),
  counts: Type.Array(Type.Object({
    code: Type.String({ description: 'The refusal code a hard budget would have answered with (auto_downgrade: it would have sent the call to a cheaper model).' }),
    outcome: StringEnum(['refused', 'clamped', 'downgraded'] as const),
    calls: Type.Integer()
  }), { description: 'Calls the budget would have refused, clamped or downgraded, by code and outcome.' })
})
export type ShadowStatus = Static<typeof ShadowStatus>

export const BudgetStatusInfo = Type.Object({
  budgetId: Uuid,
  currentAmount: Money,
  limit: Money,
  currency: Type.String(),
  percentUsed: Type.Number({ description: 'currentAmount / limit in percent, rounded down to 2 decimals.' }),
  remaining: Type.String({ description: 'limit - currentAmount - reservedAmount, never below 0.' }),
  daysRemaining: Type.Number(),
  burnRate: Type.String({ description: 'Spend per day over the elapsed part of the period (at least one hour).' }),
  projectedTotal: Type.String({ description: "The forecast for the period's end: currentAmount + each day left at its weekday's spend per day over the last 4 weeks (the budget's timezone); with under 2 weeks of history, currentAmount + burnRate x the time left." }),
  status: Health,
  activeAlerts: Type.Array(ActiveAlert),
  lastUpdated: Timestamp,
  reservedAmount: Type.String({ description: 'In flight: reserved by the gate, not yet settled.' }),
  periodStart: Timestamp,
  periodEnd: Timestamp,
  timezone: Type.String({ description: 'The zone whose calendar the window follows; periodStart and periodEnd are its bounds as UTC instants.' }),
  state: StringEnum(['scheduled', 'active', 'ended'] as const),
  enforcement: StringEnum(ENFORCEMENTS),
  shadow: Type.Optional(ShadowStatus)
})

export const CheckConstraintsBody = Type.Object({ estimatedCost: MoneyInput }, { additionalProperties: false, examples: [{ estimatedCost: '12.50' }] })

const BudgetCheck = Type.Object({
  budgetId: Uuid,
  name: Type.String(),
  limit: Money,
  currentAmount: Money,
  reservedAmount: Money,
  remaining: Money,
  status: Health,
  activeActions: Type.Array(AlertAction),
  enforcement: StringEnum(ENFORCEMENTS),
  fits: Type.Boolean(),
  approved: Type.Boolean({ description: 'An approval in force covers this estimate.' }),
  allowedModels: Nullable(Type.Array(Type.String(), { description: 'restrict-models is in force and the model is not allowed: the allowed ones.' })),
  currency: Nullable(Type.String({ description: 'The budget\'s currency: limit, spend and remaining are in it.' })),
  estimatedCost: Nullable(Type.String({ description: 'The estimate in the budget\'s currency, converted at the rate in force and rounded up; null when no exchange rate is in force.' })),
  nearLimit: Nullable(StringEnum(NEAR_LIMIT_POLICIES, { description: 'The budget\'s own nearLimit policy; null: the gate\'s.' })),
  maxCallCost: Nullable(Type.String({ description: 'The budget\'s cap on the cost of one call, in its currency; null: none.' })),
  overCap: Type.Boolean({ description: 'The estimate in the budget\'s currency is over its maxCallCost: the call does not fit it.' })
})

export const BudgetConstraintCheck = Type.Object({
  canProceed: Type.Boolean(),
  code: Nullable(StringEnum(['exchange_rate_missing', 'estimate_out_of_range', 'budget_blocked', 'approval_required', 'model_restricted', 'call_cost_cap_exceeded', 'budget_exceeded', 'rate_limit_exceeded'] as const)),
  reason: Type.String(),
  suggestedActions: Type.Array(Type.String()),
  estimatedCost: Money,
  bindingBudgetId: Nullable(Uuid),
  limit: Nullable(Money),
  currentAmount: Nullable(Money),
  reservedAmount: Nullable(Money),
  remaining: Nullable(Money),
  currency: Nullable(Type.String({ description: 'The binding budget\'s currency (its limit, spend and remaining are in it).' })),
  bindingEstimate: Nullable(Type.String({ description: 'The estimate in the binding budget\'s currency.' })),
  status: Nullable(Health),
  activeActions: Type.Array(AlertAction),
  downgradeTo: Nullable(Type.String({ description: 'auto-downgrade is in force: the cheaper model to call.' })),
  budgets: Type.Array(BudgetCheck, { description: 'The budget and each ancestor, nearest first.' })
})

// Alerts and approvals

export const AlertRecord = Type.Object({
  id: Uuid,
  budgetId: Uuid,
  periodStart: Timestamp,
  threshold: Type.Number(),
  basis: Basis,
  actions: Type.Array(AlertAction),
  spent: Type.String({ description: 'The spend (or projection) that crossed.' }),
  limit: Money,
  crossedAt: Timestamp,
  resolvedAt: Nullable(Type.String({ format: 'date-time', description: 'When a change of the budget\'s definition stopped its numbers reaching this crossing (ISO 8601, UTC); null while it is active (in activeAlerts).' })),
  acknowledgedBy: Nullable(Type.String()),
  acknowledgedAt: Nullable(Timestamp),
  shadow: Type.Boolean({ description: "A shadow budget's crossing: notify only, its actions are what a hard budget would have done." }),
  deliveries: Type.Array(Type.Object({
    channel: Type.String(),
    status: StringEnum(['pending', 'delivered', 'failed'] as const),
    attempts: Type.Integer(),
    deliveredAt: Nullable(Timestamp),
    lastError: Nullable(Type.String())
  }))
})
export const AlertList = Type.Object({ alerts: Type.Array(AlertRecord) })
export const RecentAlertsQuery = Type.Object({
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500, default: 50 }))
}, { additionalProperties: false })
export const AlertParams = Type.Object({ id: Type.String(), alertId: Type.String() })
export const ApprovalRequestParams = Type.Object({ id: Type.String({ description: 'Budget id (uuid).' }), requestId: Type.String({ description: 'Approval request id (uuid).' }) })

export const ApprovalRequest = Type.Object({
  amount: MoneyInput,
  expiresAt: Type.Optional(TimestampInput),
  reason: Type.Optional(Type.String({ maxLength: 2000 }))
}, { additionalProperties: false, examples: [{ amount: '250', expiresAt: '2024-03-31T00:00:00Z', reason: 'release week' }] })
export const Approval = Type.Object({
  id: Uuid,
  budgetId: Uuid,
  periodStart: Timestamp,
  amount: Money,
  spentAtApproval: Money,
  approvedBy: Type.String(),
  reason: Nullable(Type.String()),
  createdAt: Timestamp,
  expiresAt: Timestamp
})
export const ApprovalList = Type.Object({ approvals: Type.Array(Approval) })

export const APPROVAL_VERDICTS = ['approve', 'reject'] as const
export const APPROVAL_REQUEST_STATES = ['pending', 'approved', 'rejected', 'expired'] as const
export const FileApprovalRequest = Type.Object({
  amount: MoneyInput,
  reason: Type.Optional(Type.String({ maxLength: 2000 })),
  expiresAt: Type.Optional(Type.String({ description: 'When the approval, once given, ends (an ISO 8601 date or date-time with a zone; default: an hour after the last level approves; never past the period). The request expires no later.', examples: ['2024-03-31T00:00:00Z'] }))
}, { additionalProperties: false, examples: [{ amount: '800', reason: 'launch week' }] })
export const ApprovalDecisionInput = Type.Object({
  level: Type.Integer({ minimum: 1, maximum: 5, description: 'The level you decide: the request\'s next one (a level is never skipped, nor decided twice).' }),
  verdict: StringEnum(APPROVAL_VERDICTS),
  comment: Type.Optional(Type.String({ maxLength: 2000 }))
}, { additionalProperties: false, examples: [{ level: 1, verdict: 'approve', comment: 'fine for the launch' }] })
export const ApprovalRequestRecord = Type.Object({
  id: Uuid,
  budgetId: Uuid,
  amount: Money,
  reason: Nullable(Type.String()),
  requestedBy: Type.String(),
  state: StringEnum(APPROVAL_REQUEST_STATES),
  createdAt: Timestamp,
  expiresAt: Timestamp,
  decidedAt: Nullable(Timestamp),
  approvalId: Nullable(Uuid),
  levels: Type.Array(Type.Object({
    level: Type.Integer(),
    name: Type.String(),
    decidedBy: Nullable(Type.String()),
    verdict: Nullable(StringEnum(APPROVAL_VERDICTS)),
    comment: Nullable(Type.String()),
    decidedAt: Nullable(Timestamp)
  }), { description: 'The levels the request needs, in order, each with its decision once made.' }),
  nextLevel: Nullable(Type.Integer({ description: 'The level to decide now; null once decided or expired.' })),
  mayDecide: Type.Boolean({ description: 'Whether you may decide its next level.' })
})
export const ApprovalRequestQuery = Type.Object({
  state: Type.Optional(StringEnum(APPROVAL_REQUEST_STATES, { description: 'Default pending.' })),
  budgetId: Type.Optional(Type.String({ format: 'uuid' })),
  decidable: Type.Optional(Type.Boolean({ description: 'Only those whose next level you may decide.' })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 200, default: 50 }))
}, { additionalProperties: false })
export const ApprovalRequestList = Type.Object({ requests: Type.Array(ApprovalRequestRecord) })
export type ApprovalRequestRecord = Static<typeof ApprovalRequestRecord>
export type ActiveAlert = Static<typeof ActiveAlert>

// The audit log

export const AuditEntry = Type.Object({
  id: Type.String({ description: 'Increases with each entry.' }),
  budgetId: Nullable(Type.String({ format: 'uuid', description: 'Null for an exchange rate set (set-exchange-rate): before is the rate it replaced at the same instant, or null; after is the rate set. Null for a channel tested (test-channel): after is the channel and the outcome. Null for a provider\'s cost bucket corrected (correct-provider-cost): before and after are the bucket with its old and new amount. Null for a what-if replay (simulate): after is the range and the proposal.' })),
  action: StringEnum(['create', 'update', 'delete', 'approve', 'acknowledge', 'refresh-cache', 'set-exchange-rate', 'test-channel', 'correct-provider-cost',
    'create-cost-mapping', 'update-cost-mapping', 'delete-cost-mapping', 'true-up', 'simulate', 'request-approval', 'decide-approval'] as const),
  changes: Type.Array(Type.String(), { description: 'For an update, the fields it changed (currency, parentId, amount, ...).' }),
  before: Type.Unknown({ description: 'The budget (or numbers) before the change; null for a create.' }),
  after: Type.Unknown({ description: 'The budget (or the approval, acknowledgement or refreshed numbers) after it; null for a delete.' }),
  actor: Type.String({ description: 'Who: the authorize option\'s name (admin for the admin token).' }),
  requestId: Nullable(Type.String({ description: 'The admin request that made the change (null from the library).' })),
  at: Timestamp
})
export const AuditPage = Type.Object({
  entries: Type.Array(AuditEntry),
  nextCursor: Nullable(Type.String({ description: 'Pass as cursor for the next (older) page; null on the last page.' }))
})
export const AuditQuery = Type.Object({
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500, default: 50 })),
  cursor: Type.Optional(Type.String({ maxLength: 40, description: 'nextCursor of the previous page.' }))
}, { additionalProperties: false })
export type AuditQuery = Static<typeof AuditQuery>

// Spend reports

export const SPEND_GROUP_BYS = ['scope', 'organization', 'team', 'user', 'project', 'model', 'day', 'tag'] as const
export const SPEND_SORTS = ['total', 'key'] as const
export const SPEND_PRESETS = ['this-week', 'last-week', 'this-month', 'last-month'] as const
export const SpendReportQuery = Type.Object({
  from: Type.Optional(TimestampInput),
  to: Type.Optional(TimestampInput),
  preset: Type.Optional(StringEnum(SPEND_PRESETS, { description: 'The window instead of from/to (not with them): the ISO week (Monday to Monday) or the calendar month that holds now, or the one before, from local midnight in timeZone. The response echoes the resolved from/to.' })),
  timeZone: Type.Optional(Type.String({ minLength: 1, maxLength: 64, examples: ['Europe/Paris'], description: 'An IANA time zone (PostgreSQL\'s names) for preset and for groupBy=day. Default UTC. An unknown zone is a 400 naming timeZone.' })),
  groupBy: Type.Optional(StringEnum(SPEND_GROUP_BYS, { description: 'scope: the budget the usage was recorded on (null: usage no budget covered). organization, team, user, project: the caller\'s scope of that type, read from the record itself whatever budget it was recorded on, budgeted or not (null: callers without one). model; day (in timeZone); tag (a tag\'s value, with tagKey). Default scope.' })),
  tagKey: Type.Optional(Type.String({ pattern: TAG_KEY_PATTERN, examples: ['feature'] })),
  scopeType: Type.Optional(ScopeType),
  scopeId: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
  currency: Type.Optional(Type.String({ pattern: '^[A-Z]{3}$' })),
  sort: Type.Optional(StringEnum(SPEND_SORTS, { description: 'total: largest total first (ties by key, then currency); key: by group, then currency. Default total.' })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, description: 'At most this many groups (rows), in sort order; the rest are summed per currency in others, and truncated is true.' }))
}, { additionalProperties: false })
const SpendTotals = {
  currency: Type.String(),
  total: Money,
  calls: Type.Integer(),
  inputTokens: Type.String({ description: 'Summed from the records\' metadata.inputTokens.' }),
  outputTokens: Type.String()
}
export const SpendReport = Type.Object({
  from: Timestamp,
  to: Timestamp,
  timeZone: Type.String(),
  groupBy: StringEnum(SPEND_GROUP_BYS),
  sort: StringEnum(SPEND_SORTS),
  limit: Nullable(Type.Integer()),
  groups: Type.Array(Type.Object({
    key: Nullable(Type.String({ description: 'The group: scopeType:scopeId (groupBy=scope), a scope id, a model, a YYYY-MM-DD day or a tag value; null for usage without one (for scope: usage no budget covered).' })),
    ...SpendTotals
  })),
  truncated: Type.Boolean({ description: 'True when limit left groups out; others then sums them.' }),
  others: Type.Array(Type.Object({
    ...SpendTotals,
    groups: Type.Integer({ description: 'How many groups in this currency were left out.' })
  }), { description: 'Per currency, the groups past limit, summed; empty when none were left out.' })
})
export type SpendReport = Static<typeof SpendReport>

// Exchange rates (budget_exchange_rates)

const CurrencyCode = Type.String({ pattern: '^[A-Z]{3}$', description: 'ISO 4217 code, upper case.' })
export const ExchangeRateParams = Type.Object({ from: CurrencyCode, to: CurrencyCode })
export const SetExchangeRateBody = Type.Object({
  rate: Type.Unsafe<string | number>({ type: ['string', 'number'], description: 'One unit of `from` in units of `to`: an exact decimal string (up to 18 digits either side of the point), or a JSON number of at most 15 significant digits.' }),
  effectiveFrom: Type.Optional(TimestampInput)
}, { additionalProperties: false, examples: [{ rate: '0.92', effectiveFrom: '2024-01-01T00:00:00Z' }] })
export const ExchangeRate = Type.Object({
  id: Type.String({ description: 'Increases with each rate set.' }),
  from: Type.String(),
  to: Type.String(),
  rate: Type.String({ description: 'An exact decimal.' }),
  effectiveFrom: Timestamp,
  setBy: Nullable(Type.String()),
  setAt: Timestamp,
  replaced: Type.Boolean({ description: 'A later rate was set for the same pair and instant: this one is history, no longer in force.' })
})
export const ExchangeRateList = Type.Object({
  rates: Type.Array(ExchangeRate),
  nextCursor: Nullable(Type.String({ description: 'Pass as cursor for the next page; null on the last page.' }))
})
export const ExchangeRateQuery = Type.Object({
  from: Type.Optional(CurrencyCode),
  to: Type.Optional(CurrencyCode),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500, default: 100 })),
  cursor: Type.Optional(Type.String({ maxLength: 40, description: 'nextCursor of the previous page.' }))
}, { additionalProperties: false })

// Notification channels

export const ChannelInfo = Type.Object({
  name: Type.String({ description: 'The name budgets use in notificationChannels and digest.channels.' }),
  kind: StringEnum(['webhook', 'email', 'log', 'custom'] as const, { description: 'custom: a notifier the host passed in (an object with deliver()).' }),
  url: Type.Optional(Type.String({ description: 'webhook: the endpoint\'s scheme and host only (its path, query and credentials can hold the secret).' })),
  timeoutMs: Type.Optional(Type.Integer({ description: 'webhook: how long a delivery waits for the endpoint.' })),
  smtpHost: Type.Optional(Type.String({ description: 'email: the SMTP server\'s host and port, without its user and password.' })),
  tls: Type.Optional(Type.Boolean({ description: 'email: TLS from the start (smtps://).' })),
  recipients: Type.Optional(Type.Integer({ description: 'email: how many addresses each message goes to.' }))
}, { additionalProperties: false })
export const ChannelList = Type.Object({ channels: Type.Array(ChannelInfo) })
export const ChannelParams = Type.Object({ name: Type.String({ minLength: 1, maxLength: 500, description: 'The channel\'s name, as in notifications.channels.' }) })
export const ChannelTestResult = Type.Object({
  delivered: Type.Boolean({ description: 'True once the channel accepted the test: a webhook answered 2xx, an SMTP server took the message.' }),
  error: Type.Optional(Type.String({ description: 'When not delivered: why (the endpoint\'s status, a refusal, no answer within the channel\'s timeout).' }))
}, { additionalProperties: false })

// The decision log (budget_decision_log): the gate's refusals, clamps and downgrades

export const DECISION_OUTCOMES = ['refused', 'clamped', 'downgraded'] as const
export const DecisionQuery = Type.Object({
  budgetId: Type.Optional(Type.String({ maxLength: 64, description: 'Decisions whose binding budget is this one.' })),
  code: Type.Optional(Type.String({ maxLength: 64, description: 'A refusal code (budget_exceeded, rate_limit_exceeded, ...); for a clamp the code it avoided; for a downgrade that refused nothing, auto_downgrade.' })),
  outcome: Type.Optional(StringEnum(DECISION_OUTCOMES)),
  scopeType: Type.Optional(ScopeType),
  scopeId: Type.Optional(Type.String({ minLength: 1, maxLength: 200, description: 'With scopeType: decisions on calls whose caller had this id at that scope.' })),
  from: Type.Optional(TimestampInput),
  to: Type.Optional(TimestampInput),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })),
  cursor: Type.Optional(Type.String({ maxLength: 100, description: 'nextCursor of the previous page.' }))
}, { additionalProperties: false })
export const GateDecision = Type.Object({
  id: Type.String(),
  at: Timestamp,
  requestId: Type.String({ description: 'The gate\'s request id (also the reservation\'s and the usage record\'s).' }),
  api: StringEnum(['chat', 'responses', 'messages', 'embeddings'] as const),
  outcome: StringEnum(DECISION_OUTCOMES),
  code: Type.String(),
  scopes: Type.Object({
    organization: Type.Optional(Type.String()),
    team: Type.Optional(Type.String()),
    user: Type.Optional(Type.String()),
    project: Type.Optional(Type.String())
  }, { description: 'The caller, as the gate resolved it.' }),
  tags: Type.Optional(Type.Record(Type.String(), Type.String())),
  model: Type.String({ description: 'The model the decision was about (after a downgrade, the cheaper one).' }),
  requestedModel: Type.Optional(Type.String({ description: 'The model asked for, when auto-downgrade swapped it.' })),
  estimate: Type.String({ description: 'The worst-case cost the decision was about, an exact decimal: in the binding budget\'s currency when the call\'s converts into it, else the call\'s.' }),
  currency: Type.String(),
  budget: Nullable(Type.Object({
    id: Type.String({ format: 'uuid' }),
    name: Type.String(),
    limit: Nullable(Type.String({ description: 'The budget\'s amount when the gate decided, an exact decimal in the budget\'s currency; null for a rate-limit refusal (a rate limit refuses before any money is read).' })),
    current: Nullable(Type.String({ description: 'Settled spend in the budget\'s window when the gate decided; null for a rate-limit refusal.' })),
    reserved: Nullable(Type.String({ description: 'Held by calls in flight (and leases) when the gate decided; null for a rate-limit refusal.' }))
  }, { description: 'The binding budget as the gate read it: the one that refused, clamped or downgraded, or whose rate limit refused; null when none binds.' }))
})
export const DecisionPage = Type.Object({
  decisions: Type.Array(GateDecision),
  nextCursor: Nullable(Type.String({ description: 'Pass as cursor for the next (older) page; null on the last page.' }))
})
export type DecisionQuery = Static<typeof DecisionQuery>

// Provider costs (budget_provider_costs)

const COST_SOURCES = ['openai', 'anthropic', 'csv'] as const
const Day = Type.String({ pattern: '^\\d{4}-\\d{2}-\\d{2}$', description: 'A UTC day, YYYY-MM-DD.' })
export const ProviderCost = Type.Object({
  id: Type.String({ description: 'Increases with each bucket stored (a correction keeps the id).' }),
  source: StringEnum(COST_SOURCES, { description: 'Who reported it: a collector, or a CSV import.' }),
  provider: Type.String(),
  account: Type.String({ description: 'The organization the report is of.' }),
  date: Day,
  project: Type.String({ description: 'OpenAI project_id, Anthropic workspace_id (\'\' for the default workspace), the CSV\'s project; \'\' when none.' }),
  lineItem: Type.String({ description: 'OpenAI line_item, Anthropic description, the CSV\'s line_item; \'\' when none.' }),
  model: Type.String(),
  costType: Type.String({ description: 'Anthropic cost_type (tokens, web_search, code_execution); \'\' elsewhere.' }),
  tokenType: Type.String({ description: 'Anthropic token_type; \'\' elsewhere.' }),
  serviceTier: Type.String({ description: 'Anthropic service_tier; \'\' elsewhere.' }),
  contextWindow: Type.String({ description: 'Anthropic context_window; \'\' elsewhere.' }),
  currency: Type.String(),
  amount: Type.String({ description: 'An exact decimal in the currency\'s major unit (dollars, not cents), as the report gave it.' }),
  collectedAt: Timestamp,
  correctedAt: Nullable(Timestamp)
})
export const ProviderCostList = Type.Object({
  costs: Type.Array(ProviderCost),
  nextCursor: Nullable(Type.String({ description: 'Pass as cursor for the next page; null on the last page.' }))
})
export const ProviderCostQuery = Type.Object({
  provider: Type.Optional(Type.String({ maxLength: 64 })),
  source: Type.Optional(StringEnum(COST_SOURCES)),
  from: Type.Optional(Type.String({ maxLength: 10, description: 'The first day, YYYY-MM-DD (inclusive).' })),
  to: Type.Optional(Type.String({ maxLength: 10, description: 'The last day, YYYY-MM-DD (inclusive).' })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })),
  cursor: Type.Optional(Type.String({ maxLength: 40, description: 'nextCursor of the previous page.' }))
}, { additionalProperties: false })
const StoreCounts = {
  inserted: Type.Integer({ description: 'Buckets not stored before.' }),
  corrected: Type.Integer({ description: 'Buckets stored before with another amount: replaced, the old amount in the audit log (correct-provider-cost).' }),
  unchanged: Type.Integer({ description: 'Buckets stored before with the same amount: nothing changed.' })
}
export const ProviderCostImportBody = Type.String({
  description: 'A CSV file (text/csv): a header line naming the columns date, provider, account, amount, currency (required) and project, model, line_item (optional), in any order, then one bucket per line, such as "date,provider,account,amount,currency\\n2024-06-01,mistral,acme,12.3456,EUR". At most 10,000 lines and 1 MiB: split a larger file (each part is imported on its own, and importing a part again changes nothing).'
})
export const ProviderCostImportResult = Type.Object({ rows: Type.Integer({ description: 'Data lines read.' }), ...StoreCounts })
export const ProviderCostCollectResult = Type.Object({
  collectors: Type.Array(Type.Object({
    source: Type.String(),
    account: Type.String(),
    status: StringEnum(['completed', 'failed'] as const, { description: 'failed: the run stopped at a page (its reason in error); what it stored before stays, and the next run resumes at that page.' }),
    pages: Type.Integer({ description: 'Pages stored by this run.' }),
    from: Day,
    to: Type.String({ description: 'The day after the last day read (exclusive).' }),
    error: Type.Optional(Type.String()),
    ...StoreCounts
  }), { description: 'One per configured collector; empty when none is configured.' })
})

// Reconciliation with the provider's bill (lib/reconciliation/)
const MAPPING_KINDS = ['project', 'workspace', 'account'] as const
const ProviderName = Type.String({ pattern: '^[a-z0-9][a-z0-9._-]{0,63}$', description: 'The provider as the cost reports name it: openai, anthropic, or a CSV\'s provider.' })
const mappingFields = {
  provider: ProviderName,
  kind: StringEnum(MAPPING_KINDS, { description: 'project: an OpenAI project id (or a CSV\'s project); workspace: an Anthropic workspace id (\'\' for the default workspace); account: every bucket of an account.' }),
  value: Type.String({ maxLength: 256, description: 'The project id, workspace id or account.' }),
  budgetId: Type.String({ format: 'uuid', description: 'The budget the provider\'s amounts are compared with; a budget is mapped to one provider.' }),
  trueUp: Type.Boolean({ description: 'Whether POST /reconciliation/true-up may write the difference into the budget. Default false.' })
}
export const CostMappingBody = Type.Object({ ...mappingFields, trueUp: Type.Optional(mappingFields.trueUp) }, {
  additionalProperties: false, examples: [{ provider: 'openai', kind: 'project', value: 'proj_abc123', budgetId: '0b6e3f4e-8a62-4d8e-9a39-5d3f0f6f2c11', trueUp: true }]
})
export const CostMappingUpdate = Type.Object({
  value: Type.Optional(mappingFields.value),
  budgetId: Type.Optional(mappingFields.budgetId),
  trueUp: Type.Optional(mappingFields.trueUp)
}, { additionalProperties: false, minProperties: 1, examples: [{ trueUp: false }] })
export const CostMapping = Type.Object({ id: Type.String({ pattern: '^[1-9]\\d{0,18}$' }), ...mappingFields, createdAt: Timestamp, updatedAt: Timestamp })
export const CostMappingList = Type.Object({ mappings: Type.Array(CostMapping) })
export const CostMappingParams = Type.Object({ id: Type.String({ pattern: '^[1-9]\\d{0,18}$', maxLength: 19 }) }, { additionalProperties: false })
export const ReconciliationQuery = Type.Object({
  from: Type.Optional(Type.String({ maxLength: 10, description: 'The first UTC day, YYYY-MM-DD (inclusive). Default: 30 days before to.' })),
  to: Type.Optional(Type.String({ maxLength: 10, description: 'The last UTC day, YYYY-MM-DD (inclusive); at most 366 days after from. Default: today (UTC).' })),
  provider: Type.Optional(Type.String({ maxLength: 64 })),
  budgetId: Type.Optional(Type.String({ format: 'uuid' })),
  format: Type.Optional(StringEnum(['json', 'csv'] as const, { description: 'csv: the same lines as text/csv (as Accept: text/csv does).' }))
}, { additionalProperties: false })
export const ReconciliationLine = Type.Object({
  day: Day,
  provider: Type.String(),
  budgetId: Uuid,
  budgetName: Type.String(),
  currency: CurrencyCode,
  trueUp: Type.Boolean(),
  providerAmount: Nullable(Type.String({ description: 'The provider\'s amount in the budget\'s currency (rate at noon UTC of the day); null when a rate is missing (missingRate).' })),
  recordedAmount: Money,
  correction: Nullable(Type.String({ description: 'What a true-up wrote for the day; null: none.' })),
  difference: Nullable(Type.String({ description: 'providerAmount - recordedAmount.' })),
  ratio: Nullable(Type.String({ description: 'difference / recordedAmount, 6 decimal places; null when nothing was recorded.' })),
  drift: Type.Boolean({ description: 'Whether the difference is past the tolerance (reconciliation.tolerance).' }),
  missingRate: Nullable(Type.String({ description: 'The currency without a rate into the budget\'s at noon of the day.' }))
})
export const ReconciliationReport = Type.Object({ tolerance: Type.String(), lines: Type.Array(ReconciliationLine) })
export const TrueUpBody = Type.Object({
  provider: ProviderName,
  day: Type.String({ maxLength: 10, description: 'A UTC day before today, YYYY-MM-DD.' }),
  budgetId: Type.String({ format: 'uuid' })
}, { additionalProperties: false, examples: [{ provider: 'openai', day: '2026-01-15', budgetId: '0b6e3f4e-8a62-4d8e-9a39-5d3f0f6f2c11' }] })
export const TrueUpResult = Type.Object({
  status: StringEnum(['created', 'adjusted', 'unchanged'] as const),
  usageId: Nullable(Uuid),
  amount: Type.String({ description: 'The correction now, in the budget\'s currency.' }),
  previous: Nullable(Type.String({ description: 'The correction before (adjusted, unchanged).' }))
})
export const DriftEvaluation = Type.Object({
  drifts: Type.Array(Type.Object({ id: Uuid, provider: Type.String(), day: Day, budgetId: Uuid }), { description: 'The drifts alerted now; one alerted before is not again.' })
})

// What-if replay (POST /simulate): a proposal replayed over the recorded calls of a past range

export const SimulateRequest = Type.Object({
  from: TimestampInput,
  to: TimestampInput,
  proposal: Type.Optional(Type.Object({
    create: Type.Optional(Type.Array(CreateBudgetRequest, { maxItems: 50, description: 'New budgets, created in this order (a later one may name an earlier existing budget as parent).' })),
    update: Type.Optional(Type.Array(Type.Object({
      id: Type.String({ maxLength: 64, description: 'The budget to change.' }),
      changes: UpdateBudgetRequest
    }, { additionalProperties: false }), { maxItems: 50, description: 'Changes to existing budgets: amounts, periods, thresholds, actions, filters, parents, enforcement.' }))
  }, { additionalProperties: false, description: 'The change to try: applied by the same rules as POST and PATCH /budgets, in a transaction that is always rolled back. Absent: the budgets as they are.' }))
}, { additionalProperties: false, examples: [{ from: '2024-06-01', to: '2024-07-01', proposal: { update: [{ id: '3f0c2a4e-8d1b-4c6e-9a57-2b1d0e6f4a10', changes: { amount: '500' } }] } }] })
export type SimulateRequest = Static<typeof SimulateRequest>
const SimulatedOutcome = Type.Object({
  code: Type.String({ description: 'The refusal code decide() would answer (budget_exceeded, budget_blocked, ...); auto_downgrade for a downgrade that refused nothing.' }),
  count: Type.Integer(),
  cost: Money,
  firstAt: Timestamp
})
export const SimulateResult = Type.Object({
  type: Type.Literal('result'),
  from: Timestamp,
  to: Timestamp,
  events: Type.Integer({ description: 'Recorded calls and refusals replayed.' }),
  budgets: Type.Array(Type.Object({
    budgetId: Uuid,
    name: Type.String(),
    proposed: Type.Boolean({ description: 'Created or changed by the proposal.' }),
    currency: Type.String(),
    periods: Type.Array(Type.Object({ periodStart: Timestamp, periodEnd: Timestamp, spent: Money, calls: Type.Integer() })),
    crossings: Type.Array(Type.Object({ periodStart: Timestamp, threshold: Type.String(), at: Timestamp, spent: Money })),
    refused: Type.Array(SimulatedOutcome, { description: 'Calls this budget would have refused (it was the binding budget).' }),
    downgraded: Type.Array(SimulatedOutcome),
    avoidedSpend: Money
  })),
  unknowns: Type.Array(Type.String(), { description: 'What the replay cannot know, in words.' })
})
export type SimulateResult = Static<typeof SimulateResult>
