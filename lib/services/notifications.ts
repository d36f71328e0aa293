// Delivers each queued crossing to its channels: a webhook (JSON with a Slack-compatible `text`) or the
// log. The queue is budget_notification_outbox, written in the crossing's own transaction, so a crash
// loses nothing; retries back off exponentially; a delivery the endpoint answered 2xx is never repeated.
import type { FastifyBaseLogger } from 'fastify'
import type { Sql } from 'postgres'
import { createAlertRepository, type DueNotification } from '../repository/alerts.js'

export interface AlertEvent {
  type: 'budget.threshold_crossed'
  /** Slack incoming webhooks show this. */
  text: string
  alertId: string
  budget: DueNotification['budget']
  threshold: number
  basis: 'current' | 'projected'
  actions: string[]
  spent: string
  limit: string
  periodStart: string
  crossedAt: string
}

/** A channel: resolves when delivered, throws when not (and the delivery is retried). */
export interface Notifier {
  deliver: (event: AlertEvent) => Promise<void>
}

export type ChannelConfig = { type: 'webhook', url: string, timeoutMs?: number } | { type: 'log' } | Notifier

export interface NotificationOptions {
  channels: Record<string, ChannelConfig>
  /** How often each process delivers what is due; 0: only when deliverDue is called. */
  intervalMs: number
  maxAttempts: number
  /** The first retry's delay; each later one doubles it. */
  backoffMs: number
}

export function webhookNotifier (url: string, timeoutMs = 5000): Notifier {
  return {
    async deliver (event) {
      const response = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-budget-event-id': event.alertId },
        body: JSON.stringify(event),
        signal: AbortSignal.timeout(timeoutMs)
      })
      await response.arrayBuffer()
      if (!response.ok) throw new Error(`webhook answered ${response.status}`)
    }
  }
}

export function logNotifier (log: FastifyBaseLogger): Notifier {
  return { deliver: async (event) => { log.warn({ budgetAlert: event }, event.text) } }
}

function toEvent ({ alert, budget }: DueNotification): AlertEvent {
  const what = alert.basis === 'projected' ? 'is projected to reach' : 'crossed'
  return {
    type: 'budget.threshold_crossed',
    text: `Budget '${budget.name}' ${what} ${alert.threshold}% (${alert.spent} of ${alert.limit} ${budget.currency}): ${alert.actions.join(', ')}`,
    alertId: alert.id,
    budget,
    threshold: alert.threshold,
    basis: alert.basis,
    actions: alert.actions,
    spent: alert.spent,
    limit: alert.limit,
    periodStart: alert.periodStart,
    crossedAt: alert.crossedAt
  }
}

export function createNotificationDeliverer (sql: Sql, options: NotificationOptions, log: FastifyBaseLogger,
  observe: (outcome: { delivered: number, failed: number }) => void = () => {}) {
  const fallback = logNotifier(log)
  const notifiers = new Map<string, Notifier>(Object.entries(options.channels).map(([name, config]) => [name,
    'deliver' in config ? config : config.type === 'webhook' ? webhookNotifier(config.url, config.timeoutMs) : fallback]))

  /** Delivers what is due, one transaction a batch: claimed rows stay locked until their outcome is written. */
  async function deliverDue (limit = 20): Promise<{ delivered: number, failed: number }> {
    const outcome = await sql.begin(async (tx) => {
      const alerts = createAlertRepository(tx)
      let delivered = 0
      let failed = 0
      for (const due of await alerts.claimDueNotifications(limit)) {
        const notifier = notifiers.get(due.channel)
        try {
          await (notifier ?? fallback).deliver(toEvent(due))
          await alerts.markDelivered(due.outboxId, notifier === undefined ? `no channel '${due.channel}' is configured: written to the log` : null)
          delivered++
        } catch (error) {
          const attempt = due.attempts + 1
          const retryInMs = attempt >= options.maxAttempts ? null : options.backoffMs * 2 ** (attempt - 1)
          await alerts.markAttemptFailed(due.outboxId, (error as Error).message, retryInMs)
          failed++
        }
      }
      return { delivered, failed }
    }) as { delivered: number, failed: number }
    observe(outcome) // once the outcomes are committed
    return outcome
  }

  let timer: NodeJS.Timeout | undefined
  let running: Promise<unknown> = Promise.resolve()
  return {
    deliverDue,
    start () {
      if (options.intervalMs <= 0) return
      timer = setInterval(() => {
        running = deliverDue().catch((error: unknown) => { log.error({ err: error }, 'delivering budget notifications failed') })
      }, options.intervalMs)
      timer.unref()
    },
    async stop () {
      clearInterval(timer)
      await running
    }
  }
}

export type NotificationDeliverer = ReturnType<typeof createNotificationDeliverer>
