// The plugin's database client: the host's, or one the plugin opens (and then ends), with the schema
// brought up to date before anything else runs.
import postgres, { type Sql } from 'postgres'
import type { Part } from '../part.js'
import { migrate } from './migrate.js'

/** The client, and stop(): it ends the client if the plugin opened it; a host's own client is the host's to end. */
export async function openDatabase (database: Sql | string, options: { migrate: boolean }): Promise<Part<Sql>> {
  const ownsClient = typeof database === 'string'
  // Our own client's sessions run in UTC; the SQL never depends on the session's TimeZone anyway (sql/functions/periods.sql).
  const sql: Sql = ownsClient ? postgres(database, { onnotice: () => {}, connection: { TimeZone: 'UTC' } }) : database
  const close = async (timeout: number) => { if (ownsClient) await sql.end({ timeout }) }
  try {
    if (ownsClient) {
      // postgres.js reads the array types on every new connection, and when that connection is cut (a
      // terminated backend, a restart) the read's failure is an unhandled rejection (postgres.js #1192,
      // #1205, #1223), which ends a process run with Node's defaults. The types are read once, here, into
      // the client's shared serializers (arrays cannot be sent without them); later connections skip it.
      await sql`select 1`
      sql.options.fetch_types = false
    }
    if (options.migrate) await migrate(sql)
  } catch (error) {
    await close(1)
    throw error
  }
  return { api: sql, stop: async () => { await close(5) } }
}
