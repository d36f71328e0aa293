// Applies the forward-only migrations in sql/ once, even when several gateway processes start together.
import { readdir, readFile } from 'node:fs/promises'
import type { Sql } from 'postgres'
import { MigrationError } from '../errors.js'

const MIGRATIONS_DIR = new URL('../../../sql/', import.meta.url)
const MIGRATION_FILE = /^(\d+)_[\w-]+\.sql$/

export interface Migration {
  version: number
  name: string
  text: string
}

export async function readMigrations (directory: URL = MIGRATIONS_DIR): Promise<Migration[]> {
  const names = (await readdir(directory)).filter((name) => MIGRATION_FILE.test(name))
  const migrations = await Promise.all(names.map(async (name) => ({
    version: Number(MIGRATION_FILE.exec(name)?.[1]),
    name,
    text: await readFile(new URL(name, directory), 'utf8')
  })))
  return migrations.sort((a, b) => a.version - b.version)
}

/**
 * Runs every migration not applied yet, in one transaction that holds an advisory lock: a second
 * process waits for the first, then finds everything applied. A failing migration rolls back whole.
 * Returns the versions this call applied.
 */
export async function migrate (sql: Sql, directory: URL = MIGRATIONS_DIR): Promise<number[]> {
  const migrations = await readMigrations(directory)
  return await sql.begin(async (tx) => {
    await tx`select pg_advisory_xact_lock(hashtextextended('relaycore-budgets:migrate', 0))`
    const [{ exists } = { exists: false }] = await tx<{ exists: boolean }[]>`select to_regclass('budget_schema_migrations') is not null as exists`
    if (!exists) {
      await tx`
        create table budget_schema_migrations (
          version    integer primary key,
          name       text not null,
          applied_at timestamptz not null default now()
        )`
    }
    const applied = new Set((await tx<{ version: number }[]>`select version from budget_schema_migrations`).map((row) => row.version))
    const appliedNow: number[] = []
    for (const migration of migrations) {
      if (applied.has(migration.version)) continue
      try {
        await tx.unsafe(migration.text)
      } catch (error) {
        throw new MigrationError(migration.name, (error as Error).message, { cause: error })
      }
      await tx`insert into budget_schema_migrations (version, name) values (${migration.version}, ${migration.name})`
      appliedNow.push(migration.version)
    }
    return appliedNow
  })
}
