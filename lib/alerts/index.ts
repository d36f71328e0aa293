// Alerts and channels: threshold crossings, approvals, deliveries through the outbox, digests.
export type { BudgetAlerts } from './alerts.js'
export type { ChannelTests } from './channels.js'
