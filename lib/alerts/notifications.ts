// Delivers each queued crossing, digest, drift and approval step to its channels: a webhook (JSON with a Slack-compatible `text`), an
// email over SMTP (nodemailer), or the log. The queue is budget_notification_outbox, written in the event's own
// transaction (the crossing's, the digest's, the step's), so a crash loses nothing. A row is claimed in a short statement of its own, sent
// with no transaction open, and its outcome recorded under the claim (sql/migrations/002_outbox_claims.sql); retries back off exponentially; a
// delivery whose 2xx was recorded is never repeated, and one whose process died before that is sent again once its
// claim runs out (at least once: the event id lets a receiver drop the repeat). The same loop, one round at a time,
// makes the digests that are due (lib/alerts/digests.ts).
import { randomUUID } from 'node:crypto'
import type { Logger } from '../kernel/logger.js'
import nodemailer from 'nodemailer'
import type { Sql } from 'postgres'
import { bestEffort } from '../kernel/best-effort.js'
import { storableText } from '../kernel/json-limits.js'
import { isDatabaseUnavailable } from '../kernel/errors.js'
import { createAlertRepository, type AlertRepository, type ClaimChannels, type DueApprovalStepNotification, type DueDriftNotification, type DueNotification, type OutboxClaim } from './alert-repository.js'
import { createDigestRepository, type DigestRepository, type DueDigestNotification, type TopSpender } from './digest-repository.js'

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
  /** A shadow budget's crossing: notify only (its actions are what a hard budget would have done). */
  shadow: boolean
}

/** A scheduled digest: a day's or week's spend, the budget's window so far, its forecast, the top models and callers. */
export interface DigestEvent {
  type: 'budget.digest'
  /** Slack incoming webhooks show this. */
  text: string
  digestId: string
  budget: DueDigestNotification['budget']
  every: 'daily' | 'weekly'
  /** The digest period, as UTC instants, and as its first and last local days in `timezone`. */
  periodStart: string
  periodEnd: string
  timezone: string
  firstDay: string
  lastDay: string
  spent: string
  usageCount: number
  /** The budget's window that the digest period ends in, as of the digest period's end. */
  window: { periodStart: string, periodEnd: string, spent: string, limit: string, percentUsed: number, burnRate: string, projectedTotal: string }
  topModels: Array<{ modelId: string | null, total: string, count: number }>
  topUsers: Array<{ userId: string | null, total: string, count: number }>
  createdAt: string
}

/** A test an operator sent through one channel (POST {prefix}/channels/{name}/test): no budget crossed anything. */
export interface TestEvent {
  type: 'budget.test'
  /** Slack incoming webhooks show this. */
  text: string
  testId: string
  channel: string
  sentAt: string
}

/**
 * The provider's bill drifted from the gate's spend past the tolerance for one UTC day (docs/provider-costs.md#reconciliation):
 * sent once per provider, day and budget, through the channels the budget's alerts name.
 */
export interface DriftEvent {
  type: 'budget.provider_drift'
  /** Slack incoming webhooks show this. */
  text: string
  driftId: string
  budget: DueDriftNotification['budget']
  provider: string
  day: string
  /** In the budget's currency: the provider's amount, the gate's, their difference and its ratio to the gate's (null when it recorded nothing). */
  providerAmount: string
  recordedAmount: string
  difference: string
  ratio: string | null
  tolerance: string
  alertedAt: string
}

/**
 * A step of a request for approval (docs/approvals.md#notifications), sent through the channels the budget's
 * alerts name: its filing, a level approved with another to come, the last level approved (the approval is in
 * force), or a level's rejection (the request is closed).
 */
export interface ApprovalStepEvent {
  type: 'budget.approval_step'
  /** Slack incoming webhooks show this. */
  text: string
  /** `<request id>:<level>`, the filing's level being 0: one event per step. */
  stepId: string
  budget: DueApprovalStepNotification['budget']
  step: 'requested' | 'level-approved' | 'approved' | 'rejected'
  request: { id: string, amount: string, reason: string | null, requestedBy: string, levelsRequired: number, expiresAt: string }
  /** The level decided (0: the filing), and its name in the request's policy (null for the filing). */
  level: number
  levelName: string | null
  /** Who filed (the filing) or decided, when, and the decision's comment. */
  by: string
  at: string
  comment: string | null
  /** The level that decides next, after a filing or a level approved with another to come; null once the request is closed. */
  nextLevel: { level: number, name: string } | null
}

export type BudgetEvent = AlertEvent | DigestEvent | TestEvent | DriftEvent | ApprovalStepEvent

/** The id a receiver drops a repeat by: the crossing's, the digest's, the test's, the drift's or the approval step's. */
export function eventId (event: BudgetEvent): string {
  switch (event.type) {
    case 'budget.digest': return event.digestId
    case 'budget.test': return event.testId
    case 'budget.provider_drift': return event.driftId
    case 'budget.approval_step': return event.stepId
    default: return event.alertId
  }
}

/** How a sentence shows what users wrote (names, reasons, comments, callers' ids): as written, or escaped. */
type Quote = (value: string) => string
const asWritten: Quote = (value) => value
/**
 * Text as Slack asks senders to escape it: &, < and > as entities, so that a name, a reason or a caller's id
 * cannot mention @channel or show a link of its own in a webhook's `text`. Emails and logs show text as written.
 */
export const slackEscaped: Quote = (value) => value.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;')

/** Text that says something, or null: an empty reason or comment is none. */
const said = (value: string | null): string | null => value === null || value.trim() === '' ? null : value

/** The step in one sentence: what `text` says (Slack-escaped), and the first line of its email (as written). */
function approvalStepSentence (event: Omit<ApprovalStepEvent, 'text'>, quote: Quote): string {
  const { budget, request, nextLevel } = event
  const name = `Budget '${quote(budget.name)}'`
  const asked = `${request.amount} ${budget.currency} more`
  const decided = `level ${event.level} (${quote(event.levelName ?? '')}) by ${quote(event.by)}`
  const next = nextLevel === null ? '' : `level ${nextLevel.level} (${quote(nextLevel.name)})`
  switch (event.step) {
    case 'requested':
      return `${name}: ${quote(event.by)} asks approval of ${asked}${request.reason === null ? '' : ` (${quote(request.reason)})`}; ${next} decides first, ${request.levelsRequired} ${request.levelsRequired === 1 ? 'level' : 'levels'} in all.`
    case 'level-approved': return `${name}: the request for ${asked} was approved at ${decided}; ${next} decides next.`
    case 'approved': return `${name}: the request for ${asked} was approved at ${decided}, its last level: the approval is in force.`
    case 'rejected': return `${name}: the request for ${asked} was rejected at ${decided}${event.comment === null ? '' : `: ${quote(event.comment)}`}.`
  }
}

/** What a claimed step says: which step it is, by whom, and which level comes next. */
export function toApprovalStepEvent ({ budget, request, level, decision }: DueApprovalStepNotification): ApprovalStepEvent {
  const levelName = (n: number) => request.policy.levels[n - 1]?.name ?? `level ${n}`
  const step = decision === null ? 'requested' : decision.verdict === 'reject' ? 'rejected' : level >= request.levelsRequired ? 'approved' : 'level-approved'
  const next = step === 'requested' ? 1 : step === 'level-approved' ? level + 1 : null
  const event: Omit<ApprovalStepEvent, 'text'> = {
    type: 'budget.approval_step',
    stepId: `${request.id}:${level}`,
    budget,
    step,
    request: { id: request.id, amount: request.amount, reason: said(request.reason), requestedBy: request.requestedBy, levelsRequired: request.levelsRequired, expiresAt: request.expiresAt },
    level,
    levelName: decision === null ? null : levelName(level),
    by: decision?.decidedBy ?? request.requestedBy,
    at: decision?.decidedAt ?? request.createdAt,
    comment: said(decision?.comment ?? null),
    nextLevel: next === null ? null : { level: next, name: levelName(next) }
  }
  return { ...event, text: approvalStepSentence(event, slackEscaped) }
}

/** An approval step's email: the step in its subject; the request, the step and what comes next in its body. */
export function approvalStepEmail (event: ApprovalStepEvent, dashboardUrl?: string): { subject: string, text: string } {
  const { budget, request } = event
  const subject = {
    requested: `Budget '${budget.name}': approval of ${request.amount} ${budget.currency} requested by ${event.by}`,
    'level-approved': `Budget '${budget.name}': level ${event.level} approved the request for ${request.amount} ${budget.currency}`,
    approved: `Budget '${budget.name}': the request for ${request.amount} ${budget.currency} is approved`,
    rejected: `Budget '${budget.name}': the request for ${request.amount} ${budget.currency} is rejected`
  }[event.step]
  return {
    subject,
    text: [
      approvalStepSentence(event, asWritten),
      '',
      `Requested by ${request.requestedBy}: ${request.amount} ${budget.currency}${request.reason === null ? '' : `, "${request.reason}"`}. It waits for its decisions until ${request.expiresAt}.`,
      ...(event.comment === null ? [] : [`Comment: ${event.comment}`]),
      ...(event.nextLevel === null ? [] : [`Next: level ${event.nextLevel.level} (${event.nextLevel.name}) of ${request.levelsRequired}.`]),
      ...(dashboardUrl === undefined ? [] : ['', `Dashboard: ${dashboardUrl}`]),
      '',
      `Budget id ${budget.id}, request ${request.id}, step ${event.stepId}.`
    ].join('\n')
  }
}

/** A drift's email: which budget, which day, both amounts. */
export function driftEmail (event: DriftEvent, dashboardUrl?: string): { subject: string, text: string } {
  const { budget } = event
  return {
    subject: `Budget '${budget.name}': the ${event.provider} bill of ${event.day} differs by ${event.difference} ${budget.currency}`,
    text: [
      driftSentence(event, asWritten),
      '',
      `${event.provider} billed ${event.providerAmount} ${budget.currency}; the gate recorded ${event.recordedAmount} ${budget.currency} (ratio ${event.ratio ?? 'n/a'}, tolerance ${event.tolerance}).`,
      ...(dashboardUrl === undefined ? [] : ['', `Dashboard: ${dashboardUrl}`]),
      '',
      `Budget id ${budget.id}, drift ${event.driftId}.`
    ].join('\n')
  }
}

function driftSentence ({ budget, provider, providerAmount, day, recordedAmount, difference }: Omit<DriftEvent, 'text'>, quote: Quote): string {
  return `Budget '${quote(budget.name)}': ${quote(provider)} billed ${providerAmount} ${budget.currency} on ${day}, the gate recorded ${recordedAmount} (difference ${difference}).`
}

function toDriftEvent ({ drift, budget }: DueDriftNotification): DriftEvent {
  const event: Omit<DriftEvent, 'text'> = {
    type: 'budget.provider_drift',
    driftId: drift.id,
    budget,
    provider: drift.provider,
    day: drift.day,
    providerAmount: drift.providerAmount,
    recordedAmount: drift.recordedAmount,
    difference: drift.difference,
    ratio: drift.ratio,
    tolerance: drift.tolerance,
    alertedAt: drift.alertedAt
  }
  return { ...event, text: driftSentence(event, slackEscaped) }
}

const testSentence = (channel: string, quote: Quote) => `Test notification from RelayCore Budgets through channel '${quote(channel)}': no budget crossed anything.`

export function testEvent (channel: string, now = new Date()): TestEvent {
  return {
    type: 'budget.test',
    text: testSentence(channel, slackEscaped),
    testId: randomUUID(),
    channel,
    sentAt: now.toISOString()
  }
}

/** A test's email: marked as a test in its subject. */
export function testEmail (event: TestEvent, dashboardUrl?: string): { subject: string, text: string } {
  return {
    subject: `[test] RelayCore Budgets: channel '${event.channel}' works`,
    text: [
      testSentence(event.channel, asWritten),
      '',
      `Sent at ${event.sentAt} by an operator's test (POST /channels/${event.channel}/test).`,
      ...(dashboardUrl === undefined ? [] : ['', `Dashboard: ${dashboardUrl}`]),
      '',
      `Test ${event.testId}.`
    ].join('\n')
  }
}

/** A channel: resolves when delivered, throws when not (and the delivery is retried). `event.type` tells a crossing, a digest and an operator's test (budget.test) apart. */
export interface Notifier {
  deliver: (event: BudgetEvent) => Promise<void>
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
  /**
   * How long a due delivery through a channel this process does not configure is left to a process that
   * has it (a rolling deploy adding a channel); then this process records the attempt as failed, with the reason.
   */
  unconfiguredChannelGraceMs: number
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
    subject: `${event.shadow ? '[shadow] ' : ''}Budget '${budget.name}' ${crossed} ${event.threshold}%: ${event.spent} of ${event.limit} ${budget.currency}`,
    text: [
      `Budget '${budget.name}' (${budget.scopeType} ${budget.scopeId}) ${crossed} its ${event.threshold}% alert threshold.`,
      '',
      `Spent: ${event.spent} of ${event.limit} ${budget.currency} in the period from ${event.periodStart}.`,
      event.shadow
        ? `A shadow budget: nothing is in force; a hard budget would now do: ${event.actions.join(', ')}.`
        : `Actions now in force: ${event.actions.join(', ')}.`,
      `Crossed at: ${event.crossedAt}.`,
      ...(dashboardUrl === undefined ? [] : ['', `Dashboard: ${dashboardUrl}`]),
      '',
      `Budget id ${budget.id}, alert ${event.alertId}.`
    ].join('\n')
  }
}

/** What a digest period is called: its day, or its first and last days. */
function digestPeriod (event: DigestEvent): string {
  return event.every === 'daily' ? event.firstDay : `${event.firstDay} to ${event.lastDay}`
}

function spenders (label: string, rows: Array<{ key: string | null, total: string, count: number }>, currency: string): string[] {
  if (rows.length === 0) return [`${label}: none.`]
  return [`${label}:`, ...rows.map((row) => `  ${row.key ?? '(none given)'}: ${row.total} ${currency} (${row.count} ${row.count === 1 ? 'call' : 'calls'})`)]
}

/** An email a digest sends: the period's spend in the subject; the window, burn rate, forecast and top spenders in the body. */
export function digestEmail (event: DigestEvent, dashboardUrl?: string): { subject: string, text: string } {
  const { budget, window } = event
  return {
    subject: `Budget '${budget.name}' ${event.every} digest, ${digestPeriod(event)}: ${event.spent} ${budget.currency} spent`,
    text: [
      `Budget '${budget.name}' (${budget.scopeType} ${budget.scopeId}), ${event.every} digest for ${digestPeriod(event)} (${event.timezone}).`,
      '',
      `Spent: ${event.spent} ${budget.currency} in ${event.usageCount} ${event.usageCount === 1 ? 'call' : 'calls'}.`,
      `Budget period from ${window.periodStart} to ${window.periodEnd}: ${window.spent} of ${window.limit} ${budget.currency} spent (${window.percentUsed}%).`,
      `Burn rate: ${window.burnRate} ${budget.currency} a day.`,
      `Projected by the end of the budget period: ${window.projectedTotal} ${budget.currency}.`,
      '',
      ...spenders('Top models', event.topModels.map((row) => ({ ...row, key: row.modelId })), budget.currency),
      ...spenders('Top callers', event.topUsers.map((row) => ({ ...row, key: row.userId })), budget.currency),
      ...(dashboardUrl === undefined ? [] : ['', `Dashboard: ${dashboardUrl}`]),
      '',
      `Budget id ${budget.id}, digest ${event.digestId}.`
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
      const message = event.type === 'budget.digest' ? digestEmail(event, dashboardUrl) : event.type === 'budget.test' ? testEmail(event, dashboardUrl)
        : event.type === 'budget.provider_drift' ? driftEmail(event, dashboardUrl) : event.type === 'budget.approval_step' ? approvalStepEmail(event, dashboardUrl)
          : alertEmail(event, dashboardUrl)
      await transport.sendMail({ from: channel.from, to: channel.to, ...message, headers: { 'X-Budget-Event-Id': eventId(event) } })
    }
  }
}

/** How long a webhook delivery waits for the endpoint unless the channel says. */
const WEBHOOK_TIMEOUT_MS = 5000

export function webhookNotifier (url: string, timeoutMs = WEBHOOK_TIMEOUT_MS): Notifier {
  return {
    async deliver (event) {
      const response = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-budget-event-id': eventId(event) },
        body: JSON.stringify(event),
        signal: AbortSignal.timeout(timeoutMs)
      })
      await response.arrayBuffer()
      if (!response.ok) throw new Error(`webhook answered ${response.status}`)
    }
  }
}

export function logNotifier (log: Logger): Notifier {
  return {
    deliver: async (event) => {
      if (event.type === 'budget.digest') log.info({ budgetDigest: event }, event.text)
      else if (event.type === 'budget.test') log.info({ budgetTest: event }, event.text)
      else if (event.type === 'budget.provider_drift') log.warn({ budgetDrift: event }, event.text)
      else if (event.type === 'budget.approval_step') log.info({ budgetApprovalStep: event }, event.text)
      else log.warn({ budgetAlert: event }, event.text)
    }
  }
}

/** A configured channel as GET {prefix}/channels shows it: what it is and where it goes, never a secret. */
export interface ChannelInfo {
  name: string
  kind: 'webhook' | 'email' | 'log' | 'custom'
  /** webhook: the endpoint's scheme and host (its path, query and credentials can hold the secret, and are left out). */
  url?: string
  /** webhook: how long a delivery waits for the endpoint. */
  timeoutMs?: number
  /** email: the SMTP server's host and port, without its user and password. */
  smtpHost?: string
  /** email: TLS from the start (smtps://). */
  tls?: boolean
  /** email: how many addresses each message goes to. */
  recipients?: number
}

/** The non-secret facts of a channel: a URL's origin alone (no path, query or userinfo), an SMTP server's host, a count. */
export function describeChannel (name: string, config: ChannelConfig): ChannelInfo {
  if ('deliver' in config) return { name, kind: 'custom' }
  if (config.type === 'log') return { name, kind: 'log' }
  const url = parseUrl(config.url)
  if (config.type === 'webhook') {
    return { name, kind: 'webhook', url: url === null ? '(not a URL)' : `${url.protocol}//${url.host}`, timeoutMs: config.timeoutMs ?? WEBHOOK_TIMEOUT_MS }
  }
  return { name, kind: 'email', smtpHost: url?.host ?? '(not a URL)', tls: url?.protocol === 'smtps:', recipients: parseEmailChannel(config.url)?.to.length ?? 0 }
}

function parseUrl (text: string): URL | null {
  try {
    return new URL(text)
  } catch {
    return null
  }
}

/** What a failed delivery threw, as text; a custom notifier may throw a value that has none (Object.create(null)). */
function messageOf (error: unknown): string {
  try {
    const message: unknown = error instanceof Error ? error.message : String(error)
    return typeof message === 'string' ? message : String(message)
  } catch {
    return 'the channel failed with a value that has no text'
  }
}

/**
 * An error's message as an answer may show it and last_error may store it: without the channel's URL (a
 * fetch error can quote it, secrets and all), and without a NUL or an unpaired surrogate (an SMTP reply
 * can carry one; text cannot store it, and the outcome would never be recorded).
 */
function redactedMessage (error: unknown, config: ChannelConfig, info: ChannelInfo): string {
  const message = messageOf(error)
  const secret = 'url' in config && typeof config.url === 'string' && config.url !== '' ? config.url : null
  const shown = secret === null ? message : message.replaceAll(secret, info.url ?? info.smtpHost ?? '(the channel\'s URL)')
  // Cut first: the cut can halve a surrogate pair.
  return storableText(shown.length > 1000 ? `${shown.slice(0, 1000)}…` : shown)
}

/** A send through a channel: delivered, or not and why. */
export type DeliveryOutcome = { delivered: true } | { delivered: false, error: string }
/** A test through a channel (POST {prefix}/channels/{name}/test): delivered, or not and why. */
export type TestOutcome = DeliveryOutcome

function toEvent ({ alert, budget }: DueNotification): AlertEvent {
  const what = alert.basis === 'projected' ? 'is projected to reach' : 'crossed'
  return {
    type: 'budget.threshold_crossed',
    text: `${alert.shadow ? '[shadow] ' : ''}Budget '${slackEscaped(budget.name)}' ${what} ${alert.threshold}% (${alert.spent} of ${alert.limit} ${budget.currency}): ${alert.actions.join(', ')}`,
    alertId: alert.id,
    budget,
    threshold: alert.threshold,
    basis: alert.basis,
    actions: alert.actions,
    spent: alert.spent,
    limit: alert.limit,
    periodStart: alert.periodStart,
    crossedAt: alert.crossedAt,
    shadow: alert.shadow
  }
}

function toDigestEvent ({ digest, budget }: DueDigestNotification): DigestEvent {
  const event: DigestEvent = {
    type: 'budget.digest',
    text: '',
    digestId: digest.id,
    budget,
    every: digest.every,
    periodStart: digest.periodStart,
    periodEnd: digest.periodEnd,
    timezone: digest.timezone,
    firstDay: digest.firstDay,
    lastDay: digest.lastDay,
    spent: digest.spent,
    usageCount: digest.usageCount,
    window: {
      periodStart: digest.windowStart,
      periodEnd: digest.windowEnd,
      spent: digest.windowSpent,
      limit: digest.limit,
      percentUsed: digest.percentUsed,
      burnRate: digest.burnRate,
      projectedTotal: digest.projectedTotal
    },
    topModels: digest.topModels.map(({ key, total, count }: TopSpender) => ({ modelId: key, total, count })),
    topUsers: digest.topUsers.map(({ key, total, count }: TopSpender) => ({ userId: key, total, count })),
    createdAt: digest.createdAt
  }
  const top = (rows: TopSpender[]) => rows.length === 0 ? 'none' : rows.map((row) => `${row.key === null ? '(none given)' : slackEscaped(row.key)} ${row.total}`).join(', ')
  event.text = `Budget '${slackEscaped(budget.name)}' ${digest.every} digest, ${digestPeriod(event)}: ${digest.spent} ${budget.currency} spent. ` +
    `Period so far ${digest.windowSpent} of ${digest.limit} ${budget.currency} (${digest.percentUsed}%), ` +
    `burn rate ${digest.burnRate} a day, projected ${digest.projectedTotal} by ${digest.windowEnd}. ` +
    `Top models: ${top(digest.topModels)}. Top callers: ${top(digest.topUsers)}.`
  return event
}

/** How long a delivery through a channel without a timeout of its own (email, a custom notifier) may take; then it counts as failed. */
const DELIVERY_TIMEOUT_MS = 30_000
/** A claim lasts this much longer than its delivery may take: the outcome's statement, a busy event loop. */
const CLAIM_SLACK_MS = 30_000
/**
 * The most one statement of the loop (a claim, an outcome) may run or wait for a lock: a locked table or a
 * hung server costs a round, never holds the loop (and close) for ever.
 */
const LOOP_STATEMENT_BOUND_MS = 5000
/** How long an outcome's record is tried again when the database is away (a failover, a terminated connection): a 2xx lost is a repeat. */
const RECORD_RETRY_DELAYS_MS = [50, 200, 500, 1000, 2000]
/** The most close (stop) waits for the round in flight, like every other step of close; the rest is sent again after its claim runs out. */
const STOP_BOUND_MS = 10_000

/** The longest a failed delivery waits for its next attempt, however many attempts came before. */
export const MAX_RETRY_DELAY_MS = 24 * 60 * 60_000

/** The delay before the attempt after `attempt` (1 for the first): backoffMs doubling, capped (2 ** 1024 is Infinity, no interval). */
export function retryDelay (backoffMs: number, attempt: number): number {
  return Math.min(backoffMs * 2 ** Math.min(attempt - 1, 64), MAX_RETRY_DELAY_MS)
}

export function createNotificationDeliverer (sql: Sql, options: NotificationOptions, log: Logger,
  observe: (outcome: { delivered: number, failed: number }) => void = () => {},
  /** Makes the digests due at an instant (default now), returning how many; run before each delivery round of the loop. */
  produceDigests: (at?: Date) => Promise<number> = async () => 0) {
  const logged = logNotifier(log)
  const notifiers = new Map<string, Notifier>(Object.entries(options.channels).map(([name, config]) => [name,
    'deliver' in config
      ? config
      : config.type === 'webhook' ? webhookNotifier(config.url, config.timeoutMs) : config.type === 'email' ? emailNotifier(config.url, options.dashboardUrl) : logged]))
  const described = Object.entries(options.channels).map(([name, config]) => describeChannel(name, config))
  /** The longest one delivery through a channel waits: a webhook's own timeout, else DELIVERY_TIMEOUT_MS. */
  const deliveryBound = (name: string) => described.find((channel) => channel.name === name)?.timeoutMs ?? DELIVERY_TIMEOUT_MS
  // A claim outlasts the slowest channel's delivery: a living process records its outcome before anyone may claim the row again.
  const claimMs = Math.max(DELIVERY_TIMEOUT_MS, ...described.map((channel) => deliveryBound(channel.name))) + CLAIM_SLACK_MS
  /** One statement of the loop in a transaction of its own, cut by PostgreSQL at LOOP_STATEMENT_BOUND_MS. */
  async function bounded<T> (work: (repositories: { alerts: AlertRepository, digests: DigestRepository }) => Promise<T>): Promise<T> {
    return await sql.begin(async (tx) => {
      await tx.unsafe(`set local statement_timeout = ${LOOP_STATEMENT_BOUND_MS}; set local lock_timeout = ${LOOP_STATEMENT_BOUND_MS}`)
      return await work({ alerts: createAlertRepository(tx), digests: createDigestRepository(tx) })
    }) as T
  }
  // Another process's channel is left to that process; this one records it failed only once no process took it for the grace.
  const claimable: ClaimChannels = { configured: [...notifiers.keys()], graceMs: options.unconfiguredChannelGraceMs }

  /** Sends `event` through a channel, waiting at most `waitMs`; a send still running then is not delivered, and its late outcome is dropped. */
  async function deliverWithin (name: string, notifier: Notifier, event: BudgetEvent, waitMs: number): Promise<DeliveryOutcome> {
    let timer: NodeJS.Timeout | undefined
    const timedOut = new Promise<DeliveryOutcome>((resolve) => {
      timer = setTimeout(() => { resolve({ delivered: false, error: `no answer within ${waitMs} ms` }) }, waitMs)
    })
    const sent = Promise.resolve().then(async () => { await notifier.deliver(event) }).then(
      (): DeliveryOutcome => ({ delivered: true }),
      (error: unknown): DeliveryOutcome => ({ delivered: false, error: redactedMessage(error, options.channels[name]!, described.find((channel) => channel.name === name)!) }))
    try {
      return await Promise.race([sent, timedOut])
    } finally {
      clearTimeout(timer)
    }
  }

  /**
   * Sends a test event through one channel now, waiting at most the channel's own timeout (a webhook's
   * timeoutMs) and never longer than `boundMs`. Null for a name that is no channel. A send still running
   * at the bound is answered as not delivered; its late outcome is dropped.
   */
  async function sendTest (name: string, boundMs: number): Promise<TestOutcome | null> {
    const notifier = notifiers.get(name)
    if (notifier === undefined) return null
    return await deliverWithin(name, notifier, testEvent(name), Math.min(deliveryBound(name), boundMs))
  }

  /**
   * The next due delivery, but none in `tried`, that this process now holds the claim of: a crossing's, then an
   * approval step's (someone waits on it), then a digest's, then a drift's; null when none is due.
   */
  async function claimNext (tried: string[]): Promise<(OutboxClaim & { event: BudgetEvent }) | null> {
    const crossing = await bounded(async ({ alerts }) => await alerts.claimDueNotification(claimMs, tried, claimable))
    if (crossing !== null) return { ...crossing, event: toEvent(crossing) }
    const step = await bounded(async ({ alerts }) => await alerts.claimDueApprovalStep(claimMs, tried, claimable))
    if (step !== null) return { ...step, event: toApprovalStepEvent(step) }
    const digest = await bounded(async ({ digests }) => await digests.claimDueDigest(claimMs, tried, claimable))
    if (digest !== null) return { ...digest, event: toDigestEvent(digest) }
    const drift = await bounded(async ({ alerts }) => await alerts.claimDueDrift(claimMs, tried, claimable))
    return drift === null ? null : { ...drift, event: toDriftEvent(drift) }
  }

  /**
   * Records an outcome, tried again for a few seconds while the database is away: a connection terminated
   * between an endpoint's 2xx and its record would otherwise send the event again once the claim runs out.
   */
  async function recordOutcome (write: Parameters<typeof bounded<boolean>>[0]): Promise<boolean> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await bounded(write)
      } catch (error) {
        const delay = RECORD_RETRY_DELAYS_MS[attempt]
        if (delay === undefined || !isDatabaseUnavailable(error)) throw error
        await new Promise((resolve) => setTimeout(resolve, delay))
      }
    }
  }

  /** Delivers one claimed row, with no transaction open, and records the outcome under its claim. True when it was delivered. */
  async function deliverClaimed (claim: OutboxClaim & { event: BudgetEvent }): Promise<boolean> {
    const { channel, attempts, event } = claim
    const notifier = notifiers.get(channel)
    let outcome: DeliveryOutcome
    if (notifier === undefined) {
      // A budget stored before channels were checked (or a channel since removed) names one this process
      // lacks, and no process that has it took the row for unconfiguredChannelGraceMs: that is no delivery.
      // The row stays undelivered with the reason, retried as any failure (a process with the channel may
      // yet come), and failed once the attempts run out.
      log.warn({ channel, eventId: eventId(event), eventType: event.type }, `a budget notification names channel '${channel}', which is not configured: not delivered`)
      outcome = { delivered: false, error: `no channel '${channel}' is configured` }
    } else {
      outcome = await deliverWithin(channel, notifier, event, deliveryBound(channel))
    }
    const attempt = attempts + 1
    const retryInMs = attempt >= options.maxAttempts ? null : retryDelay(options.backoffMs, attempt)
    // The outcome is recorded only under this claim. When that fails (or the claim had run out and another
    // process holds the row), the row comes due again at the claim's deadline: sent again, at least once.
    await bestEffort(log, async () => {
      const mine = await recordOutcome(async ({ alerts }) => outcome.delivered ? await alerts.markDelivered(claim) : await alerts.markAttemptFailed(claim, outcome.error, retryInMs))
      if (!mine) log.warn({ outboxId: claim.outboxId, channel, eventId: eventId(event) }, 'a notification\'s claim ran out before its outcome was recorded: another process has it now')
    }, 'recording a notification\'s delivery failed: it will be sent again after its claim runs out', { outboxId: claim.outboxId, channel, eventId: eventId(event), delivered: outcome.delivered })
    return outcome.delivered
  }

  /** Set by stop: a round in flight finishes the delivery it has claimed and claims no more. */
  let stopping = false

  /**
   * Delivers up to `limit` due notifications, one after another: each claimed in a statement of its own
   * (committed at once), then sent with no transaction open and no connection held, then its outcome
   * recorded in another short statement. A row is tried at most once a round, however short its backoff,
   * and none is claimed once the deliverer stops. Resolves with how many were delivered and how many failed.
   */
  async function deliverDue (limit = 20): Promise<{ delivered: number, failed: number }> {
    let delivered = 0
    let failed = 0
    const tried: string[] = []
    try {
      while (tried.length < limit && !stopping) {
        const claim = await claimNext(tried)
        if (claim === null) break
        tried.push(claim.outboxId)
        if (await deliverClaimed(claim)) delivered++
        else failed++
      }
    } finally {
      observe({ delivered, failed }) // the outcomes recorded so far, even when a claim then failed
    }
    return { delivered, failed }
  }

  // One round at a time: the next is scheduled when the current one has ended, never on a fixed beat
  // (setInterval started a round while the last was still sending).
  let timer: NodeJS.Timeout | undefined
  let running: Promise<void> = Promise.resolve()
  let looping = false

  async function round (): Promise<void> {
    // A failure to make digests must not hold up the crossings' deliveries; what failed stays due for the next round.
    await bestEffort(log, async () => await produceDigests(), 'making budget digests failed', {}, 'error')
    await bestEffort(log, async () => await deliverDue(), 'delivering budget notifications failed: what is due stays due for the next round', {}, 'error')
  }

  function scheduleRound (): void {
    if (!looping) return
    timer = setTimeout(() => {
      running = round().finally(scheduleRound)
    }, options.intervalMs)
    timer.unref()
  }

  return {
    deliverDue,
    /** The configured channels, without their secrets, in the order the options name them. */
    channels: (): ChannelInfo[] => described.map((channel) => ({ ...channel })),
    sendTest,
    /** Makes the digests whose period ended before `at` (default now) that no process has made yet; the loop does this on its own. */
    produceDigests,
    start () {
      if (options.intervalMs <= 0 || looping) return
      looping = true
      stopping = false
      scheduleRound()
    },
    /**
     * Schedules no more rounds, and waits for the one running to finish the delivery it holds, for at most
     * STOP_BOUND_MS (a database that does not answer must not hold close for ever): a delivery whose
     * outcome is not recorded by then is sent again once its claim runs out.
     */
    async stop () {
      looping = false
      stopping = true
      clearTimeout(timer)
      let bound: NodeJS.Timeout | undefined
      const ended = await Promise.race([running.then(() => true), new Promise<false>((resolve) => { bound = setTimeout(() => { resolve(false) }, STOP_BOUND_MS) })])
      clearTimeout(bound)
      if (!ended) log.warn({ waitedMs: STOP_BOUND_MS }, 'closing without the notification round in flight: a delivery it had not recorded is sent again after its claim runs out')
    }
  }
}

export type NotificationDeliverer = ReturnType<typeof createNotificationDeliverer>
