// Alerts and channels: threshold crossings, approvals, deliveries through the outbox, digests.
import type { Sql } from 'postgres'
import type { BudgetRepository } from '../budgets/index.js'
import { boundedTransaction } from '../kernel/database/bounded.js'
import type { Logger } from '../kernel/logger.js'
import type { Part } from '../kernel/part.js'
import type { StatusRepository, UsageTracker } from '../usage/index.js'
import type { AlertRepository } from './alert-repository.js'
import { createBudgetAlerts, type BudgetAlerts } from './alerts.js'
import { createChannelTests, type ChannelTests } from './channels.js'
import type { DigestRepository } from './digest-repository.js'
import { createDigestScheduler } from './digests.js'
import { createNotificationDeliverer, type NotificationDeliverer, type NotificationOptions } from './notifications.js'

export type { BudgetAlerts } from './alerts.js'
export { createAlertRepository } from './alert-repository.js'
export type { ChannelTests } from './channels.js'

export interface Alerts {
  alerts: BudgetAlerts
  notifications: NotificationDeliverer
  /** The channels as the admin API lists and tests them. */
  channels: ChannelTests
}

export interface AlertStores {
  alerts: AlertRepository
  digests: DigestRepository
  budgets: BudgetRepository
  status: StatusRepository
}

export interface AlertsOptions {
  notifications: NotificationOptions
  /** Told each delivery round's outcome (the metrics' counter). */
  notified: (outcome: { delivered: number, failed: number }) => void
  /** A channel test's audit entry is written in a transaction bounded at this, like every admin write. */
  adminTimeoutMs: number
  now: () => Date
}

/** Alerts, and the outbox's deliverer: one round at a time once started, each round making the digests due first. */
export function createAlerts (sql: Sql, stores: AlertStores, tracker: UsageTracker, options: AlertsOptions, log: Logger): Part<Alerts> {
  const digests = createDigestScheduler(stores, options.now)
  const notifications = createNotificationDeliverer(sql, options.notifications, log, options.notified, digests.produceDue)
  return {
    api: {
      alerts: createBudgetAlerts(stores.alerts, tracker, options.now),
      notifications,
      channels: createChannelTests(notifications, boundedTransaction(sql, options.adminTimeoutMs, log), options.adminTimeoutMs)
    },
    start: notifications.start,
    stop: notifications.stop
  }
}
