// Delivers each queued crossing to its channels: a webhook (JSON with a Slack-compatible `text`), an
// email over SMTP (nodemailer), or the log. The queue is budget_notification_outbox, written in the crossing's own transaction, so a crash
// loses nothing; retries back off exponentially; a delivery the endpoint answered 2xx is never repeated.
import type { FastifyBaseLogger } from 'fastify'
import nodemailer from 'nodemailer'
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

/**
 * A channel by type. `email`: an SMTP URL with the sender and the recipients in its query,
 * smtp://user:pass@host:587?from=budgets@example.com&to=ops@example.com,cfo@example.com (smtps:// for TLS from the start).
 */
export type ChannelConfig = { type: 'webhook', url: string, timeoutMs?: number } | { type: 'email', url: string } | { type: 'log' } | Notifier

export interface NotificationOptions {
  channels: Record<string, ChannelConfig>
  /** How often each process delivers what is due; 0: only when deliverDue is called. */
  intervalMs: number
  maxAttempts: number
  /** The first retry's delay; each later one doubles it. */
  backoffMs: number
  /** Where the budgets' dashboard page is, when known: emails link to it. */
  dashboardUrl?: string
}

/** An email channel's SMTP URL, split into where to connect and who sends to whom; null when it is not one. */
export function parseEmailChannel (url: string): { transport: string, from: string, to: string[] } | null {
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    return null
  }
  if (parsed.protocol !== 'smtp:' && parsed.protocol !== 'smtps:') return null
  const from = parsed.searchParams.get('from') ?? ''
  const to = (parsed.searchParams.get('to') ?? '').split(',').map((address) => address.trim()).filter(Boolean)
  const address = /^[^\s@<>,]+@[^\s@<>,]+$/
  if (!address.test(from) || to.length === 0 || !to.every((recipient) => address.test(recipient))) return null
  parsed.searchParams.delete('from')
  parsed.searchParams.delete('to')
  return { transport: parsed.toString(), from, to }
}

/** An email a crossing sends: a subject and a plain-text body that say which budget crossed what. */
export function alertEmail (event: AlertEvent, dashboardUrl?: string): { subject: string, text: string } {
  const { budget } = event
  const crossed = event.basis === 'projected' ? 'is projected to cross' : 'crossed'
  return {
    subject: `Budget '${budget.name}' ${crossed} ${event.threshold}%: ${event.spent} of ${event.limit} ${budget.currency}`,
    text: [
      `Budget '${budget.name}' (${budget.scopeType} ${budget.scopeId}) ${crossed} its ${event.threshold}% alert threshold.`,
      '',
      `Spent: ${event.spent} of ${event.limit} ${budget.currency} in the period from ${event.periodStart}.`,
      `Actions now in force: ${event.actions.join(', ')}.`,
      `Crossed at: ${event.crossedAt}.`,
      ...(dashboardUrl === undefined ? [] : ['', `Dashboard: ${dashboardUrl}`]),
      '',
      `Budget id ${budget.id}, alert ${event.alertId}.`
    ].join('\n')
  }
}

export function emailNotifier (url: string, dashboardUrl?: string): Notifier {
  const channel = parseEmailChannel(url)
  if (channel === null) throw new Error('an email channel needs smtp:// or smtps:// with from= and to= addresses')
  const transport = nodemailer.createTransport(channel.transport)
  return {
    async deliver (event) {
      // Accepted by the SMTP server (250) is delivered; X-Budget-Event-Id lets a mail rule drop a repeat.
      await transport.sendMail({ from: channel.from, to: channel.to, ...alertEmail(event, dashboardUrl), headers: { 'X-Budget-Event-Id': event.alertId } })
    }
  }
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
    'deliver' in config
      ? config
      : config.type === 'webhook' ? webhookNotifier(config.url, config.timeoutMs) : config.type === 'email' ? emailNotifier(config.url, options.dashboardUrl) : fallback]))

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
