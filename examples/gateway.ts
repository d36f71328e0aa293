// The example RelayCore gateway behind `npm start`: the budgets plugin, its admin API, and four model
// APIs behind the budget gate, on PORT (default 3000): OpenAI's chat completions, Responses and
// embeddings, forwarded to UPSTREAM_URL (OpenAI-compatible, …/v1), and Anthropic's Messages, forwarded
// to ANTHROPIC_UPSTREAM_URL (https://api.anthropic.com/v1) with ANTHROPIC_API_KEY. Unset: mock providers.
// With no DATABASE_URL it runs an embedded PostgreSQL whose data stays in .data/ across restarts, and with
// no ADMIN_TOKEN either, its admin token is kept there too (.data/postgres/admin-token).
// SIGTERM, SIGINT or SIGHUP stop it gracefully: see shutdown() below.
import type { ServerResponse } from 'node:http'
import { constants } from 'node:os'
import { fileURLToPath } from 'node:url'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import Fastify, { type FastifyRequest } from 'fastify'
import { Registry, collectDefaultMetrics } from 'prom-client'
import budgets, { budgetJsonParser } from '../lib/index.js'
import { keptAdminToken, randomAdminToken } from './admin-token.js'
import { embeddings } from './apis/embeddings.js'
import { messages } from './apis/messages.js'
import { responses } from './apis/responses.js'
import { chatCompletions } from './chat-completions.js'
import type { EmbeddedDatabase } from './embedded-postgres.js'
import { maxCallCostOfKey, parseGatewayKeys, scopesFromKey, type GatewayKeys } from './gateway-keys.js'
import { adminAuthorize, parseAdminKeys, type AdminKeys } from './admin-keys.js'

const port = Number(process.env.PORT ?? 3000)
const host = process.env.HOST ?? '127.0.0.1'
// How long a stop waits for the calls in flight before it cuts them: under Kubernetes' default 30 s.
const stopGraceMs = process.env.STOP_GRACE_MS === undefined ? 20_000 : Number(process.env.STOP_GRACE_MS)
const dataDir = process.env.BUDGETS_DATA_DIR ?? fileURLToPath(new URL('../.data/postgres', import.meta.url))

// GATEWAY_KEYS='{"sk-alice": {"user": "alice", "team": "platform", "organization": "acme"}}': callers send
// Authorization: Bearer <key> and their scopes come from the key. Unset: from the x-relay-* headers, as sent.
let gatewayKeys: GatewayKeys | null = null
if (process.env.GATEWAY_KEYS !== undefined) {
  try {
    gatewayKeys = parseGatewayKeys(process.env.GATEWAY_KEYS)
  } catch (error) {
    process.stderr.write(`The gateway cannot start: ${(error as Error).message}\n`)
    process.exit(1)
  }
}

// ADMIN_KEYS='{"<key>": {"actor": "lead-platform", "role": "editor", "scopes": [{"scopeType": "team", "scopeId": "platform"}]}}':
// admin keys for team leads, finance and viewers, each limited to its role and its budget subtrees (docs/access.md).
// The admin token stays the platform admin.
let adminKeys: AdminKeys | null = null
if (process.env.ADMIN_KEYS !== undefined && process.env.ADMIN_KEYS !== '') {
  try {
    adminKeys = parseAdminKeys(process.env.ADMIN_KEYS)
  } catch (error) {
    process.stderr.write(`The gateway cannot start: ${(error as Error).message}\n`)
    process.exit(1)
  }
}

/** The model routes, and who answers each: its upstream when one is set, else the mock provider. */
const MODEL_ROUTES = [
  { url: '/v1/chat/completions', upstream: process.env.UPSTREAM_URL },
  { url: '/v1/responses', upstream: process.env.UPSTREAM_URL },
  { url: '/v1/embeddings', upstream: process.env.UPSTREAM_URL },
  { url: '/v1/messages', upstream: process.env.ANTHROPIC_UPSTREAM_URL }
]

/** The signals that stop the gateway gracefully (shutdown below). */
const STOP_SIGNALS: NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP']

let embedded: EmbeddedDatabase | null = null
let databaseUrl = process.env.DATABASE_URL
if (databaseUrl === undefined || databaseUrl === '') {
  // Imported only when used: the embedded-postgres package's exit hook would otherwise stop the process
  // on SIGTERM before Fastify has drained. Here the gateway takes the stop signals over from it and
  // stops the embedded server itself, after Fastify has closed.
  const { startEmbeddedPostgres } = await import('./embedded-postgres.js')
  embedded = await startEmbeddedPostgres({ dataDir, persistent: true, handledSignals: STOP_SIGNALS })
  databaseUrl = embedded.url
}

// ADMIN_TOKEN wins. Unset, with the embedded PostgreSQL: the token kept in its data directory (made at the
// first start), so the dashboard and scrapers survive a restart as the data does. Unset, with DATABASE_URL:
// the gateway owns no directory to keep it in, so a fresh random token is printed at every start.
let adminToken: string
let adminTokenNote: string
if (process.env.ADMIN_TOKEN !== undefined && process.env.ADMIN_TOKEN !== '') {
  adminToken = process.env.ADMIN_TOKEN
  adminTokenNote = 'from ADMIN_TOKEN'
} else if (embedded !== null) {
  try {
    const kept = await keptAdminToken(dataDir)
    adminToken = kept.token
    adminTokenNote = `${adminToken}   (${kept.created ? 'made now and kept' : 'kept'} in ${kept.file}; set ADMIN_TOKEN to choose your own)`
  } catch (error) {
    process.stderr.write(`The gateway cannot start: ${(error as Error).message}\n`)
    await embedded.stop()
    process.exit(1)
  }
} else {
  adminToken = randomAdminToken()
  adminTokenNote = `${adminToken}   (new at every start with DATABASE_URL; set ADMIN_TOKEN to keep one)`
}

const app = Fastify({ logger: { level: process.env.LOG_LEVEL ?? 'info' } })
// JSON bodies parsed in slices (Fastify's own parser holds the event loop 30 ms on a 1 MiB body of many
// keys, before the gate runs): the same values and the same 400s as the default, for every route here.
app.addContentTypeParser('application/json', { parseAs: 'string' }, budgetJsonParser)

/**
 * A graceful stop: closing Fastify refuses new calls (503), waits for the calls in flight to end,
 * settles them at their actual cost, and gives back the leases and rate allowances this process
 * holds; only then does the embedded server (if any) stop, and the process exit 0. A second stop
 * signal during the drain means "now" (an operator's second Ctrl-C): the process exits at once with
 * 128 + the signal's number, and what it still holds expires and is counted as spent.
 */
let stopping = false
async function shutdown (signal: NodeJS.Signals): Promise<void> {
  if (stopping) {
    await embedded?.stop()
    process.exit(128 + (constants.signals[signal] ?? 0))
  }
  stopping = true
  app.log.info({ signal }, 'shutting down: draining the calls in flight')
  let code = 0
  try {
    const closing = app.close()
    // Also on a timer: a connection opened after the last response ended has no response to wait for.
    const sweeping = setInterval(closeUnusedConnections, 100)
    closeUnusedConnections()
    // A call still running after the grace (a stream a client keeps open) is cut, and the gate settles it
    // as any cut call, before an orchestrator's SIGKILL would leave it and the leases held until they expire.
    const cutting = setTimeout(() => {
      app.log.warn({ answering, stopGraceMs }, 'the stop grace is over: cutting the calls still in flight')
      app.server.closeAllConnections()
    }, stopGraceMs)
    await closing.finally(() => {
      clearInterval(sweeping)
      clearTimeout(cutting)
    })
  } catch (error) {
    app.log.error({ err: error }, 'closing the gateway failed')
    code = 1
  }
  await embedded?.stop()
  process.exit(code)
}
for (const signal of STOP_SIGNALS) process.on(signal, () => { void shutdown(signal) })

// Closing the server waits for every connection to end, and Node closes idle keep-alive connections
// only once, when the close begins: one whose last response ends later, or one a client opened and
// sent nothing on, would hold the stop for the keep-alive timeout (72 s). So while stopping, every
// connection is closed as soon as no request is being answered.
let answering = 0
function closeUnusedConnections (): void {
  if (stopping && answering === 0) app.server.closeAllConnections()
}
app.server.on('request', (_request, response: ServerResponse) => {
  answering++
  response.once('close', () => {
    answering--
    closeUnusedConnections()
  })
})

// NOTIFY_CHANNELS="slack=https://hooks.slack.com/services/…,email=smtp://127.0.0.1:2525?from=budgets@example.com&to=ops@example.com":
// channels by the names budgets use (a comma starts a new one only before `name=`, so an email
// channel's recipients can be a comma-separated list): a webhook, or email over SMTP for smtp:// or smtps://.
// `name=log` writes the notifications to the log. Unset, `email` and `slack` are log channels, so that
// the quick start's budget (whose alerts name them) is accepted as written.
const channels = Object.fromEntries((process.env.NOTIFY_CHANNELS ?? 'email=log,slack=log').split(/,(?=\s*[\w-]+=)/).filter((entry) => entry.trim() !== '').map((entry) => {
  const [name = '', url = ''] = entry.split(/=(.*)/s)
  const target = url.trim()
  if (target === 'log') return [name.trim(), { type: 'log' as const }]
  return [name.trim(), /^smtps?:\/\//.test(target) ? { type: 'email' as const, url: target } : { type: 'webhook' as const, url: target }]
}))
// OpenAPI from the routes' own TypeBox schemas: JSON at /docs/json, a browsable UI at /docs.
await app.register(swagger, {
  openapi: {
    openapi: '3.1.0',
    info: { title: 'RelayCore Budgets', version: '0.1.0', description: 'Budgets for the RelayCore AI gateway: the admin API and the gated model calls.' },
    components: { securitySchemes: { adminToken: { type: 'http', scheme: 'bearer' } } },
    security: [{ adminToken: [] }]
  }
})
await app.register(swaggerUi, { routePrefix: '/docs' })
/** A cost report collector from PROVIDER_ADMIN_KEY, with PROVIDER_COSTS_URL (a local server) and PROVIDER_COSTS_INTERVAL_MS when set. */
function costCollector (provider: 'OPENAI' | 'ANTHROPIC') {
  const adminKey = process.env[`${provider}_ADMIN_KEY`]
  if (adminKey === undefined || adminKey === '') return undefined
  const baseUrl = process.env[`${provider}_COSTS_URL`]
  const intervalMs = process.env[`${provider}_COSTS_INTERVAL_MS`]
  return { adminKey, ...(baseUrl === undefined ? {} : { baseUrl }), ...(intervalMs === undefined ? {} : { intervalMs: Number(intervalMs) }) }
}

await app.register(budgets, {
  database: databaseUrl,
  ...(adminKeys === null ? { adminToken } : { authorize: adminAuthorize(adminToken, adminKeys) }),
  gate: {
    // Each route's API (and so how the gate bounds it, reads its usage and refuses it) follows from its path.
    routes: MODEL_ROUTES.map((route) => route.url),
    // With GATEWAY_KEYS, the key's scopes only; otherwise the default, which believes the caller's
    // x-relay-user-id, x-relay-team-id, x-relay-project-id and x-relay-organization-id headers.
    // A key's maxCallCost is the operator's cap on one call for it; the caller's x-budget-max-cost may only lower it.
    ...(gatewayKeys === null ? {} : { resolveScopes: (request) => scopesFromKey(gatewayKeys, request), maxCallCost: (request) => maxCallCostOfKey(gatewayKeys, request) }),
    failureMode: process.env.GATE_FAILURE_MODE === 'open' ? 'open' : 'closed',
    ...(process.env.RESERVATION_TTL_MS === undefined ? {} : { reservationTtlMs: Number(process.env.RESERVATION_TTL_MS) }),
    ...(process.env.GATE_TIMEOUT_MS === undefined ? {} : { timeoutMs: Number(process.env.GATE_TIMEOUT_MS) }),
    ...(process.env.SWEEP_INTERVAL_MS === undefined ? {} : { sweepIntervalMs: Number(process.env.SWEEP_INTERVAL_MS) }),
    // Callers no budget covers: served and recorded ('allow', the default) or refused with 402 (docs/ledger.md).
    ...(process.env.GATE_UNBUDGETED === undefined ? {} : { unbudgeted: process.env.GATE_UNBUDGETED as 'allow' | 'refuse' })
  },
  notifications: {
    channels,
    ...(process.env.DASHBOARD_URL === undefined ? {} : { dashboardUrl: process.env.DASHBOARD_URL }),
    ...(process.env.NOTIFY_INTERVAL_MS === undefined ? {} : { intervalMs: Number(process.env.NOTIFY_INTERVAL_MS) })
  },
  // The providers' own cost reports (docs/provider-costs.md): collected when their admin keys are set.
  providerCosts: {
    ...(costCollector('OPENAI') === undefined ? {} : { openai: costCollector('OPENAI') }),
    ...(costCollector('ANTHROPIC') === undefined ? {} : { anthropic: costCollector('ANTHROPIC') })
  }
})
const openAIUpstream = { upstreamUrl: process.env.UPSTREAM_URL, upstreamApiKey: process.env.UPSTREAM_API_KEY }
const anthropicUpstream = { upstreamUrl: process.env.ANTHROPIC_UPSTREAM_URL, upstreamApiKey: process.env.ANTHROPIC_API_KEY }
const routeOptions = {
  mockTokenDelayMs: process.env.MOCK_TOKEN_DELAY_MS === undefined ? undefined : Number(process.env.MOCK_TOKEN_DELAY_MS),
  // A missing or unknown key is refused with 401 before the body is read or any budget is touched.
  ...(gatewayKeys === null ? {} : { authenticate: (request: FastifyRequest) => scopesFromKey(gatewayKeys, request) })
}
await app.register(chatCompletions, { ...openAIUpstream, ...routeOptions })
await app.register(responses, { ...openAIUpstream, ...routeOptions })
await app.register(embeddings, { ...openAIUpstream, authenticate: routeOptions.authenticate })
await app.register(messages, { ...anthropicUpstream, ...routeOptions })
app.get('/health', async () => ({ status: 'ok' }))

// Prometheus at /metrics: the process's own metrics merged with the budgets plugin's registry, behind
// the admin API's authorization (the budget gauges show money): scrape with the admin token as bearer.
const processMetrics = new Registry()
collectDefaultMetrics({ register: processMetrics })
const scraped = Registry.merge([processMetrics, app.budgetMetrics.registry])
app.get('/metrics', { onRequest: app.budgetAdminGuard }, async (_request, reply) => {
  return await reply.type(scraped.contentType).send(await scraped.metrics())
})

const address = await app.listen({ port, host })
process.stdout.write([
  '',
  `RelayCore example gateway listening on ${address}`,
  `  database:    ${embedded === null ? 'DATABASE_URL' : `embedded PostgreSQL in ${dataDir}`}`,
  `  admin API:   ${address}/api/v1/budgets   (documented at ${address}/docs)`,
  `  dashboard:   ${address}/api/v1/budgets/ui   (type the admin token)`,
  `  metrics:     ${address}/metrics   (Prometheus, behind the admin token)`,
  `  channels:    ${app.budgetNotifications.channels().map((channel) => `${channel.name} (${[channel.kind, channel.url ?? channel.smtpHost].filter(Boolean).join(' ')})`).join(', ') || 'none: budgets can name no notification channel (set NOTIFY_CHANNELS)'}`,
  '  model calls:',
  ...MODEL_ROUTES.map((route) => `    ${`${address}${route.url}`.padEnd(address.length + 22)} ${route.upstream === undefined ? 'mock provider' : `upstream ${route.upstream}`}`),
  gatewayKeys === null
    ? '  callers:     scopes from x-relay-* headers, trusted as sent (set GATEWAY_KEYS to require API keys)'
    : `  callers:     ${gatewayKeys.size} API key(s) from GATEWAY_KEYS; x-relay-* headers ignored`,
  ...(adminKeys === null ? [] : [`  admin keys:  ${adminKeys.size} from ADMIN_KEYS, each limited to its role and budgets (docs/access.md)`]),
  `  admin token: ${adminTokenNote}`,
  ''
].join('\n') + '\n')
