// Prometheus metrics: the gate's counters and the budgets' gauges.
export type { BudgetMetrics } from './metrics.js'
