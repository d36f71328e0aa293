// The budget tables on a Citus cluster: the distribution step (sql/citus/distribute.sql) and how to tell
// that a database has Citus. migrate() does not call it yet: on Citus, a write to a budget still bumps the
// definitions' version from the shard that holds the budget, which Citus refuses (docs/scaling.md says what
// runs there today and what is left), so a plugin on a Citus database keeps its tables local until the gate
// runs on the distributed ones. `npm run test:citus` distributes its databases with it.
import { readFile } from 'node:fs/promises'
import type { Sql } from 'postgres'
import { MigrationError } from '../errors.js'

const DISTRIBUTE = new URL('../../../sql/citus/distribute.sql', import.meta.url)
const DELEGATE = new URL('../../../sql/citus/delegate.sql', import.meta.url)

/** Whether the database has the citus extension. */
export async function hasCitus (sql: Sql): Promise<boolean> {
  const [row] = await sql<Array<{ citus: boolean }>>`select exists (select 1 from pg_extension where extname = 'citus') as citus`
  return row!.citus
}

/**
 * Distributes a migrated database's budget tables by their tree's root (sql/citus/distribute.sql), in one
 * transaction, then delegates the gate's statements by their tree (sql/citus/delegate.sql), in another. Run
 * again, it leaves what is distributed and delegated as it is and does the rest, then checks that every table
 * with a root_id is distributed. Refused (MigrationError) on a database without Citus.
 */
export async function distributeOnCitus (sql: Sql): Promise<void> {
  if (!await hasCitus(sql)) throw new MigrationError('citus/distribute.sql', 'the database has no citus extension')
  for (const [name, file] of [['citus/distribute.sql', DISTRIBUTE], ['citus/delegate.sql', DELEGATE]] as const) {
    const text = await readFile(file, 'utf8')
    try {
      await sql.begin(async (tx) => await tx.unsafe(text))
    } catch (error) {
      throw new MigrationError(name, (error as Error).message, { cause: error })
    }
  }
}
