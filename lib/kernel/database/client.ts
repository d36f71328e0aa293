// The plugin's database client: the host's, or one the plugin opens (and then ends), with the schema
// brought up to date before anything else runs.
import postgres, { type Sql } from 'postgres'
import type { Logger } from '../logger.js'
import type { Part } from '../part.js'
import { migrate } from './migrate.js'

/** How often a backend checks that its client is still there while a statement runs (client_connection_check_interval). */
const CLIENT_CHECK_INTERVAL = '500ms'

/** A client of the plugin's own: sessions in UTC, and (`checks`) checking for a client gone while a statement runs. */
function ownClient (url: string, checks: boolean): Sql {
  return postgres(url, { onnotice: () => {}, connection: { TimeZone: 'UTC', ...(checks ? { client_connection_check_interval: CLIENT_CHECK_INTERVAL } : {}) } })
}

/** A server's refusals of client_connection_check_interval: unknown before PostgreSQL 14, unsupported where it cannot check. */
const CHECK_REFUSED = new Set(['42704', '22023'])

/** The client, and stop(): it ends the client if the plugin opened it; a host's own client is the host's to end. */
export async function openDatabase (database: Sql | string, options: { migrate: boolean, log: Logger }): Promise<Part<Sql>> {
  // Our own client's sessions run in UTC; the SQL never depends on the session's TimeZone anyway (sql/functions/periods.sql).
  // A backend whose client has gone (a cut connection) checks for it every CLIENT_CHECK_INTERVAL while a
  // statement runs, and stops: a hold batch still waiting for a window's lock then never commits holds for
  // callers that were refused. The setting is PostgreSQL 14's (per session): an older server refuses it at
  // connection (42704), as does a server on a platform that cannot tell a closed client (22023: not
  // Linux), and the client is opened again without it. A host's own client is the host's to
  // configure; the gate gives such holds back by id in any case (lib/gate/gate.ts).
  let sql: Sql = typeof database === 'string' ? ownClient(database, true) : database
  const close = async (timeout: number) => { if (typeof database === 'string') await sql.end({ timeout }) }
  try {
    if (typeof database === 'string') {
      // postgres.js reads the array types on every new connection, and when that connection is cut (a
      // terminated backend, a restart) the read's failure is an unhandled rejection (postgres.js #1192,
      // #1205, #1223), which ends a process run with Node's defaults. The types are read once, here, into
      // the client's shared serializers (arrays cannot be sent without them); later connections skip it.
      try {
        await sql`select 1`
      } catch (error) {
        if (!CHECK_REFUSED.has((error as { code?: string }).code ?? '')) throw error
        await sql.end({ timeout: 1 })
        sql = ownClient(database, false)
        await sql`select 1`
      }
      sql.options.fetch_types = false
    }
    if (options.migrate) {
      const { databaseAhead } = await migrate(sql)
      // An older instance during a rollout (or a rollback): it runs on the newer functions, and says so once.
      if (databaseAhead !== undefined) {
        options.log.warn(databaseAhead, `the database was migrated by a newer version of @relaycore/budgets (its migration ${databaseAhead.databaseVersion}; ` +
          `this version's last is ${databaseAhead.codeVersion}): nothing was migrated, and this instance runs on the newer version's functions`)
      }
    }
  } catch (error) {
    await close(1)
    throw error
  }
  return { api: sql, stop: async () => { await close(5) } }
}
