// The budget tables on a Citus cluster: the distribution step (sql/citus/distribute.sql), the delegation of
// the gate's statements (sql/citus/delegate.sql), and how to tell that a database is a Citus cluster.
// migrate() runs both after the migrations when it finds one (docs/scaling.md).
import { readFile } from 'node:fs/promises'
import type { Sql } from 'postgres'
import { MigrationError } from '../errors.js'
import { lockMigrations, runStatements } from './schema-statements.js'

const SQL_DIR = new URL('../../../sql/', import.meta.url)

/** Whether the database has the citus extension. */
export async function hasCitus (sql: Sql): Promise<boolean> {
  const [row] = await sql<Array<{ citus: boolean }>>`select exists (select 1 from pg_extension where extname = 'citus') as citus`
  return row!.citus
}

/**
 * Whether the database is a Citus cluster the tables can be distributed on: the citus extension, and an active
 * primary node that takes shards (a coordinator alone, as Citus adds it, takes none: the tables stay local).
 */
export async function citusCluster (sql: Sql): Promise<boolean> {
  if (!await hasCitus(sql)) return false
  const [row] = await sql<Array<{ nodes: boolean }>>`
    select exists (select 1 from pg_dist_node where noderole = 'primary' and isactive and shouldhaveshards) as nodes`
  return row!.nodes
}

/**
 * Distributes a migrated database's budget tables by their tree's root (sql/citus/distribute.sql), in one
 * transaction, then delegates the gate's statements by their tree (sql/citus/delegate.sql), in another. Run
 * again, it leaves what is distributed and delegated as it is and does the rest, then checks that every table
 * with a root_id is distributed. Refused (MigrationError) on a database without Citus.
 */
export async function distributeOnCitus (sql: Sql, directory: URL = SQL_DIR): Promise<void> {
  if (!await hasCitus(sql)) throw new MigrationError('citus/distribute.sql', 'the database has no citus extension')
  for (const name of ['citus/distribute.sql', 'citus/delegate.sql']) {
    const text = await readFile(new URL(name, directory), 'utf8')
    try {
      // under migrate()'s lock: processes that start together distribute one after the other
      await sql.begin(async (tx) => { await lockMigrations(tx); await runStatements(tx, text) })
    } catch (error) {
      throw new MigrationError(name, (error as Error).message, { cause: error })
    }
  }
}
