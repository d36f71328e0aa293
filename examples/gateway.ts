// The example RelayCore gateway behind `npm start`: the budgets plugin and its admin API on PORT (default 3000).
// With no DATABASE_URL it runs an embedded PostgreSQL whose data stays in .data/ across restarts.
import { randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import Fastify from 'fastify'
import budgets from '../lib/index.js'
import { startEmbeddedPostgres, type EmbeddedDatabase } from './embedded-postgres.js'

const port = Number(process.env.PORT ?? 3000)
const host = process.env.HOST ?? '127.0.0.1'
const dataDir = process.env.BUDGETS_DATA_DIR ?? fileURLToPath(new URL('../.data/postgres', import.meta.url))

let embedded: EmbeddedDatabase | null = null
let databaseUrl = process.env.DATABASE_URL
if (databaseUrl === undefined || databaseUrl === '') {
  embedded = await startEmbeddedPostgres({ dataDir, persistent: true })
  databaseUrl = embedded.url
}

const adminToken = process.env.ADMIN_TOKEN ?? randomBytes(24).toString('base64url')

const app = Fastify({ logger: { level: process.env.LOG_LEVEL ?? 'info' } })
await app.register(budgets, { database: databaseUrl, adminToken })
app.get('/health', async () => ({ status: 'ok' }))

async function shutdown (signal: string): Promise<void> {
  app.log.info({ signal }, 'shutting down')
  await app.close()
  await embedded?.stop()
  process.exit(0)
}
process.once('SIGINT', (signal) => { void shutdown(signal) })
process.once('SIGTERM', (signal) => { void shutdown(signal) })

const address = await app.listen({ port, host })
process.stdout.write([
  '',
  `RelayCore example gateway listening on ${address}`,
  `  database:    ${embedded === null ? 'DATABASE_URL' : `embedded PostgreSQL in ${dataDir}`}`,
  `  admin API:   ${address}/api/v1/budgets`,
  process.env.ADMIN_TOKEN === undefined ? `  admin token: ${adminToken}   (set ADMIN_TOKEN to choose your own)` : '  admin token: from ADMIN_TOKEN',
  ''
].join('\n') + '\n')
