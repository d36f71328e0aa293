// Spend reports: who spent what, grouped and sorted, as JSON or CSV.
export type { SpendReports } from './reports.js'
