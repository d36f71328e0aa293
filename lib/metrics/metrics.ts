// Prometheus metrics, in a registry of the plugin's own (a host merges it into its own with
// Registry.merge, or serves it alone: the admin API's GET {prefix}/metrics). The gate's counters and
// histograms are kept in process as calls happen; the budgets' gauges are read when scraped, from the
// status cache in one query, never by summing usage. Their cardinality is bounded: the budgets marked
// `metrics: true` and the top `topBudgets` by spend in their current window, never one series a caller.
// Gauge values are floats, as Prometheus keeps them: for watching, never for money arithmetic.
// The gate's own series are kept in plain numbers and a buffer of timings as calls happen, and handed
// to prom-client when scraped (its collect()): a call pays an array write, not a label lookup and a
// bucket search per observation.
import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import { fromUnits, toUnits, type Money } from '../kernel/money.js'
import { remainingUnits, type MetricBudget } from '../usage/index.js'

/** What an unbudgeted call was charged by: its usage, or its estimate (no usage came, or its model has no price). */
export type CostBasis = 'usage' | 'estimate'

export interface MetricsOptions {
  /** How many budgets, besides those marked `metrics: true`, get gauges: the top spenders now. Default 10. */
  topBudgets: number
}

/** What a gated call came to: let through (allowed, or unchecked in open mode) or not, and why. */
export type GateOutcome = 'allowed' | 'unchecked' | 'refused' | 'rate_limited' | 'invalid' | 'unavailable'

export function createBudgetMetrics (listBudgets: (topBudgets: number, within?: readonly string[]) => Promise<MetricBudget[]>, options: MetricsOptions, currency = 'USD') {
  const registry = new Registry()
  // Decisions by outcome and code, counted since the last scrape.
  const decided = new Map<string, { outcome: GateOutcome, code: string, count: number }>()
  new Counter({
    name: 'relaycore_budget_gate_decisions_total',
    help: 'Gated calls by outcome and by the code of a refusal.',
    labelNames: ['outcome', 'code'] as const,
    registers: [registry],
    collect () {
      for (const entry of decided.values()) {
        if (entry.count > 0) this.inc({ outcome: entry.outcome, code: entry.code }, entry.count)
        entry.count = 0
      }
    }
  })
  const reservationSeconds = timings(registry, 'relaycore_budget_gate_reservation_seconds',
    'Time from a gated call\'s arrival at the gate to its decision (rate limits, lease or hold).',
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5])
  const settlementSeconds = timings(registry, 'relaycore_budget_gate_settlement_seconds',
    'Time from a call\'s end to its settlement committing (group commit included).',
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10])
  let live = 0
  new Gauge({
    name: 'relaycore_budget_gate_live_reservations',
    help: 'Calls this process admitted whose settlement has not committed yet.',
    registers: [registry],
    collect () { this.set(live) }
  })
  const sweeperRuns = new Counter({ name: 'relaycore_budget_sweeper_runs_total', help: 'Runs of the expired-reservation sweeper.', registers: [registry] })
  const swept = new Counter({ name: 'relaycore_budget_sweeper_swept_total', help: 'Expired reservations swept and counted as spent.', registers: [registry] })
  const notifications = new Counter({
    name: 'relaycore_budget_notifications_total',
    help: 'Alert notifications by outcome of the delivery attempt.',
    labelNames: ['outcome'] as const,
    registers: [registry]
  })

  // Served calls no budget covered (the spend ledger's budget-less records), counted once recorded.
  const unbudgetedCalls = new Counter({
    name: 'relaycore_budget_unbudgeted_calls_total',
    help: 'Served calls that no budget covered, recorded in the spend ledger without a budget, by what they were charged by.',
    labelNames: ['cost_basis'] as const,
    registers: [registry]
  })
  // Their cost is summed exactly, in units (lib/kernel/money.ts), and made a float only when scraped.
  let unbudgetedUnits = 0n
  new Counter({ // kept by `registry`, which calls its collect() at each scrape
    name: 'relaycore_budget_unbudgeted_cost_total',
    help: 'The cost of served calls that no budget covered, in the gate\'s currency.',
    labelNames: ['currency'] as const,
    registers: [registry],
    collect () {
      this.reset()
      this.inc({ currency }, Number(fromUnits(unbudgetedUnits)))
    }
  })

  // One query a scrape: the first gauge collected (spend) reads the budgets, the five after it reuse that.
  let scrape: Promise<MetricBudget[]> | null = null
  budgetGauges(registry, async (fresh) => {
    if (fresh || scrape === null) scrape = listBudgets(options.topBudgets)
    const current = scrape
    return await current.catch((error: unknown) => { if (scrape === current) scrape = null; throw error })
  })
  const shadowDecisions = new Counter({
    name: 'relaycore_budget_shadow_decisions_total',
    help: 'Calls a shadow budget would have refused, clamped or downgraded, by the code and the outcome of its hard twin.',
    labelNames: ['code', 'outcome'] as const,
    registers: [registry]
  })

  return {
    registry,
    /**
     * The budget gauges alone, for a scoped reader (lib/access): those of `within`'s budgets marked `metrics: true`
     * and its top spenders, in a registry of this scrape's own. The gate's series count every tree's calls: not in it.
     */
    async budgetsOnly (within: ReadonlySet<string>): Promise<Registry> {
      const scoped = new Registry()
      let budgets: Promise<MetricBudget[]> | undefined // read once, by the first gauge collected
      budgetGauges(scoped, async () => await (budgets ??= listBudgets(options.topBudgets, [...within])))
      return scoped
    },
    /** Counts a gated call's outcome; `code` is the refusal's (budget_exceeded, invalid_scope, …), '' when allowed. */
    decision (outcome: GateOutcome, code = ''): void {
      const key = `${outcome} ${code}`
      const entry = decided.get(key)
      if (entry !== undefined) entry.count++
      else decided.set(key, { outcome, code, count: 1 })
    },
    /** A shadow budget's verdict on a call (what its hard twin would have done: refused, clamped, downgraded). */
    shadowDecision (code: string, outcome: string): void {
      shadowDecisions.inc({ code, outcome })
    },
    /** A served call that no budget covered, once its record is stored: counted, and its cost added exactly. */
    unbudgeted (cost: Money, basis: CostBasis): void {
      unbudgetedCalls.inc({ cost_basis: basis })
      unbudgetedUnits += toUnits(cost)
    },
    /** Starts timing a reservation; call the result when it is decided. */
    reservationTimer: reservationSeconds.startTimer,
    /** A call admitted with a reservation: live until its settlement commits (`settled`). */
    admitted (): () => void {
      live++
      let done = false
      return () => { if (!done) { done = true; live-- } }
    },
    /** Times a settlement from the call's end to its commit. */
    settlementTimer: settlementSeconds.startTimer,
    sweeperRan (count: number): void {
      sweeperRuns.inc()
      swept.inc(count)
    },
    notified ({ delivered, failed }: { delivered: number, failed: number }): void {
      if (delivered > 0) notifications.inc({ outcome: 'delivered' }, delivered)
      if (failed > 0) notifications.inc({ outcome: 'failed' }, failed)
    }
  }
}

export type BudgetMetrics = ReturnType<typeof createBudgetMetrics>

/**
 * The gauges of each budget read at a scrape: spend, reserved, limit, remaining, blocked, seconds to reset.
 * `budgetsNow(fresh)`: the budgets to show; fresh for the first gauge collected, which may read them again.
 */
function budgetGauges (registry: Registry, budgetsNow: (fresh: boolean) => Promise<MetricBudget[]>): void {
  const labelNames = ['budget_id', 'budget_name', 'scope_type', 'scope_id', 'currency'] as const
  const budgetGauge = (name: string, help: string, value: (budget: MetricBudget, now: number) => number, fresh = false) => new Gauge({
    name,
    help,
    labelNames,
    registers: [registry],
    async collect () {
      const budgets = await budgetsNow(fresh)
      const now = Date.now()
      this.reset() // a budget that left the top N leaves the scrape
      for (const budget of budgets) {
        this.set({ budget_id: budget.id, budget_name: budget.name, scope_type: budget.scopeType, scope_id: budget.scopeId, currency: budget.currency }, value(budget, now))
      }
    }
  })
  budgetGauge('relaycore_budget_spend', 'Settled spend in the budget\'s current window.', (budget) => Number(budget.currentAmount), true)
  budgetGauge('relaycore_budget_reserved', 'Held by calls in flight and leases, in the current window.', (budget) => Number(budget.reservedAmount))
  budgetGauge('relaycore_budget_limit', 'The budget\'s amount.', (budget) => Number(budget.amount))
  budgetGauge('relaycore_budget_remaining', 'Amount - spend - reserved, never below 0.',
    (budget) => Number(fromUnits(remainingUnits(toUnits(budget.amount), toUnits(budget.currentAmount), toUnits(budget.reservedAmount)))))
  // The status's `blocked` state: 1 while a block-all alert is in force, so an alert rule can tell a block from a full budget.
  budgetGauge('relaycore_budget_blocked', 'Whether a block-all alert is in force in the current window (1) or not (0).', (budget) => budget.blocked ? 1 : 0)
  budgetGauge('relaycore_budget_seconds_to_reset', 'Seconds until the current window ends.', (budget, now) => Math.max(0, (budget.periodEnd.getTime() - now) / 1000))
}

/** Timings kept between two scrapes; past it they are handed to the histogram at once. */
const MOST_TIMINGS_KEPT = 65_536

/**
 * A histogram whose observations wait in a buffer until a scrape hands them to prom-client. Past
 * MOST_TIMINGS_KEPT (no scrape for a long while) the oldest are folded in at once, so memory stays bounded.
 */
function timings (registry: Registry, name: string, help: string, buckets: number[]) {
  const kept = new Float64Array(MOST_TIMINGS_KEPT)
  let count = 0
  const histogram: Histogram = new Histogram({
    name,
    help,
    buckets,
    registers: [registry],
    collect () { flush() }
  })
  function flush (): void {
    for (let index = 0; index < count; index++) histogram.observe(kept[index]!)
    count = 0
  }
  function observe (seconds: number): void {
    if (count === MOST_TIMINGS_KEPT) flush()
    kept[count++] = seconds
  }
  return {
    /** Starts timing; the function it returns observes the seconds since. */
    startTimer (): () => void {
      const start = performance.now()
      return () => { observe((performance.now() - start) / 1000) }
    }
  }
}
