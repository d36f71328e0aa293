// Brings a database to the schema of sql/, once, even when several gateway processes start together.
// Two kinds of file (docs/data-model.md says how to write each):
// - sql/migrations/NNN_name.sql, versioned: tables, columns, indexes, constraints and data. Each runs
//   once, in version order, recorded in budget_schema_migrations.
// - sql/functions/name.sql, repeatable: functions, trigger functions and triggers, written to run again
//   (create or replace). A file runs whenever its text changed (or is new), after the migrations,
//   recorded with its checksum in budget_schema_repeatables, as Flyway's repeatable migrations do: the
//   running definition of a function is always the one file that defines it.
// A database a newer version of the package migrated (it records a migration this sql/ does not have) is
// left as it is: this older code applies nothing, so it never puts its older functions over the newer ones.
import { createHash } from 'node:crypto'
import { readdir, readFile } from 'node:fs/promises'
import type { Sql, TransactionSql } from 'postgres'
import { MigrationError } from '../errors.js'
import { citusCluster, distributeOnCitus } from './citus.js'
import { lockMigrations, runStatements } from './schema-statements.js'

const SQL_DIR = new URL('../../../sql/', import.meta.url)
const MIGRATION_FILE = /^(\d+)_[\w-]+\.sql$/
const REPEATABLE_FILE = /^[\w-]+\.sql$/
const DEFINED_FUNCTION = /\bcreate\s+or\s+replace\s+function\s+([a-z_][a-z0-9_]*)/gi

/**
 * The 24 migrations the baseline (sql/migrations/001_baseline.sql) folds, as sql/ held them at commit
 * e31f161. A database they brought to the last one has the baseline's schema: the baseline is recorded
 * as applied, not run, and the repeatable files then replace its functions.
 */
const FOLDED_MIGRATIONS = [
  '001_budget_definitions.sql', '002_usage_and_status.sql', '003_gate_reservations.sql', '004_alerts.sql',
  '005_spend_integrity.sql', '006_hot_path.sql', '007_calendars_and_filters.sql', '008_rate_limits.sql',
  '009_settle_leased_race.sql', '010_metrics.sql', '011_audit_log.sql', '012_currencies.sql',
  '013_digests_and_forecast.sql', '014_usage_batch.sql', '015_near_limit.sql', '016_lease_integrity.sql',
  '018_usage_keys_and_batch_checks.sql', '019_forecasts_digests_rates.sql', '020_alerts_follow_definitions.sql',
  '021_channel_tests_audited.sql', '022_spend_ledger.sql', '024_report_indexes.sql', '025_decision_log.sql',
  '026_window_carry_locks.sql'
]

export interface Migration {
  version: number
  name: string
  text: string
}

export interface Repeatable {
  name: string
  text: string
  /** sha256 of the text, hex. */
  checksum: string
  /** The functions it defines (create or replace function), by name. */
  functions: string[]
}

/** What one migrate() applied: the versions of the migrations it ran, and the names of the repeatable files. */
export interface MigrationRun {
  versions: number[]
  repeatables: string[]
  /**
   * Present when a newer version of the package migrated the database (it records a migration past the last
   * of this sql/): nothing was applied, and the database's functions are the newer version's.
   */
  databaseAhead?: DatabaseAhead
  /** The database is a Citus cluster: its budget tables are distributed by their tree's root, and the gate's statements delegated (lib/kernel/database/citus.ts). */
  distributed?: boolean
}

export interface MigrateOptions {
  /** On a Citus cluster, apply the distribution step after the migrations (default true). */
  distribute?: boolean
}

/** The highest migration the database records, and the highest this sql/ has. */
export interface DatabaseAhead {
  databaseVersion: number
  codeVersion: number
}

/** The versioned migrations under `directory`/migrations/, in version order. */
export async function readMigrations (directory: URL = SQL_DIR): Promise<Migration[]> {
  const folder = new URL('migrations/', directory)
  const names = (await readdir(folder)).filter((name) => MIGRATION_FILE.test(name))
  const migrations = await Promise.all(names.map(async (name) => ({
    version: Number(MIGRATION_FILE.exec(name)?.[1]),
    name,
    text: await readFile(new URL(name, folder), 'utf8')
  })))
  return migrations.sort((a, b) => a.version - b.version)
}

/** The repeatable files under `directory`/functions/, in name order (the order they run in). */
export async function readRepeatables (directory: URL = SQL_DIR): Promise<Repeatable[]> {
  const folder = new URL('functions/', directory)
  const names = (await readdir(folder)).filter((name) => REPEATABLE_FILE.test(name)).sort()
  return await Promise.all(names.map(async (name) => {
    const text = await readFile(new URL(name, folder), 'utf8')
    return {
      name,
      text,
      checksum: createHash('sha256').update(text).digest('hex'),
      functions: [...text.matchAll(DEFINED_FUNCTION)].map((match) => match[1]!.toLowerCase())
    }
  }))
}

/**
 * Runs every migration not applied yet, then every repeatable file whose text changed, in one
 * transaction that holds an advisory lock: a second process waits for the first, then finds everything
 * applied. A failing file rolls back the whole run, and the error names it.
 *
 * On a database a newer version migrated, it runs nothing and says so (`databaseAhead`): its repeatable
 * files differ from the recorded ones because they are older, and running them would replace the newer
 * functions (or fail where a result type changed). The newer functions keep their argument lists and
 * their result columns (docs/data-model.md), so this code runs on them.
 */
export async function migrate (sql: Sql, directory: URL = SQL_DIR, { distribute = true }: MigrateOptions = {}): Promise<MigrationRun> {
  const [migrations, repeatables] = await Promise.all([readMigrations(directory), readRepeatables(directory)])
  const run = await migrateInTransaction(sql, migrations, repeatables)
  // On a Citus cluster (the extension, and a node that takes shards), the tables are distributed by their
  // tree's root and the gate's statements delegated: after the migrations, each step in a transaction of its
  // own, both written to run again. A database with the extension and no such node stays as plain PostgreSQL.
  if (!distribute || run.databaseAhead !== undefined || !await citusCluster(sql)) return run
  await distributeOnCitus(sql, directory)
  return { ...run, distributed: true }
}

async function migrateInTransaction (sql: Sql, migrations: Migration[], repeatables: Repeatable[]): Promise<MigrationRun> {
  return await sql.begin(async (tx) => {
    await lockMigrations(tx)
    await createMigrationsTable(tx)
    await recordFoldedAsBaseline(tx, migrations[0])
    const databaseAhead = await newerDatabase(tx, migrations)
    if (databaseAhead !== null) return { versions: [], repeatables: [], databaseAhead }
    await lockTablesForMigrations(tx, migrations)
    const versions = await applyMigrations(tx, migrations)
    const applied = await applyRepeatables(tx, repeatables)
    return { versions, repeatables: applied }
  })
}

async function tableExists (tx: TransactionSql, name: string): Promise<boolean> {
  const [row] = await tx<Array<{ exists: boolean }>>`select to_regclass(${name}) is not null as exists`
  return row!.exists
}

async function createMigrationsTable (tx: TransactionSql): Promise<void> {
  if (await tableExists(tx, 'budget_schema_migrations')) return
  await tx`
    create table budget_schema_migrations (
      version    integer primary key,
      name       text not null,
      applied_at timestamptz not null default now()
    )`
}

/** The versions, when the database records a migration past the last one `migrations` has; else null. */
async function newerDatabase (tx: TransactionSql, migrations: Migration[]): Promise<DatabaseAhead | null> {
  const [row] = await tx<Array<{ version: number | null }>>`select max(version) as version from budget_schema_migrations`
  const codeVersion = migrations.at(-1)?.version ?? 0
  const databaseVersion = row?.version ?? null
  return databaseVersion !== null && databaseVersion > codeVersion ? { databaseVersion, codeVersion } : null
}

/**
 * Before migrations that alter the tables, takes every budget table at once, or none: a migration that
 * locked them one by one, as its statements reach them, would hold one while a running instance's gate
 * statement holds the next and waits for the first (a deadlock, answered 503 to that instance's caller).
 * Each try waits at most LOCK_TRY_MS, then gives back what it took and tries again, so an instance's
 * statement never waits on a half-taken set longer than that; once all are held, it waits for the commit.
 */
const LOCK_TRY_MS = 50
async function lockTablesForMigrations (tx: TransactionSql, migrations: Migration[]): Promise<void> {
  const applied = new Set((await tx<Array<{ version: number }>>`select version from budget_schema_migrations`).map((row) => row.version))
  if (migrations.every((migration) => applied.has(migration.version))) return
  const tables = (await tx<Array<{ name: string }>>`
    select format('%I.%I', n.nspname, c.relname) as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.relkind in ('r', 'p') and c.relname like 'budget\_%' and n.nspname = current_schema()
      and c.relname not in ('budget_schema_migrations', 'budget_schema_repeatables')
    order by c.relname`).map((row) => row.name)
  if (tables.length === 0) return
  for (let attempt = 0; ; attempt++) {
    try {
      await tx.savepoint(async (sp) => {
        await sp.unsafe(`set local lock_timeout = '${LOCK_TRY_MS}ms'`)
        await sp.unsafe(`lock table ${tables.join(', ')} in access exclusive mode`)
      })
      break
    } catch (error) {
      // 55P03: lock_not_available (the try's timeout); 40P01: a deadlock it lost. Anything else is a fault.
      const code = (error as { code?: string }).code
      if ((code !== '55P03' && code !== '40P01') || attempt >= 600) throw error
      await new Promise((resolve) => setTimeout(resolve, 5 + Math.floor(Math.random() * 20)))
    }
  }
  await tx`set local lock_timeout to default`
}

async function applyMigrations (tx: TransactionSql, migrations: Migration[]): Promise<number[]> {
  const applied = new Set((await tx<Array<{ version: number }>>`select version from budget_schema_migrations`).map((row) => row.version))
  const appliedNow: number[] = []
  for (const migration of migrations) {
    if (applied.has(migration.version)) continue
    try {
      await runStatements(tx, migration.text)
    } catch (error) {
      throw new MigrationError(`migrations/${migration.name}`, (error as Error).message, { cause: error })
    }
    await tx`insert into budget_schema_migrations (version, name) values (${migration.version}, ${migration.name})`
    appliedNow.push(migration.version)
  }
  return appliedNow
}

/**
 * A database the folded migrations brought to their last one is recorded as at the baseline (its
 * schema is the baseline's, and its functions are replaced by the repeatable files next). One they
 * brought part of the way is refused: the baseline cannot take it the rest of the way.
 */
async function recordFoldedAsBaseline (tx: TransactionSql, baseline: Migration | undefined): Promise<void> {
  const recorded = (await tx<Array<{ name: string }>>`select name from budget_schema_migrations order by version`).map((row) => row.name)
  const folded = recorded.filter((name) => FOLDED_MIGRATIONS.includes(name))
  if (folded.length === 0 || baseline === undefined) return
  if (folded.length < FOLDED_MIGRATIONS.length || recorded.length > folded.length) {
    const missing = FOLDED_MIGRATIONS.filter((name) => !recorded.includes(name))
    throw new MigrationError(`migrations/${baseline.name}`,
      `the database was migrated by an earlier @relaycore/budgets, up to ${folded.at(-1)!}: ${folded.length} of the ${FOLDED_MIGRATIONS.length} ` +
      `migrations this baseline folds (missing ${missing.slice(0, 3).join(', ')}${missing.length > 3 ? ` and ${missing.length - 3} more` : ''}). ` +
      'Migrate it with the sql/ of that package at commit e31f161 first (it applies the rest), then with this one; or start from an empty database')
  }
  await tx`delete from budget_schema_migrations where name = any (${FOLDED_MIGRATIONS})`
  await tx`insert into budget_schema_migrations (version, name) values (${baseline.version}, ${baseline.name})`
}

/**
 * Runs each repeatable file that is new or whose text changed, in name order, with function bodies
 * unchecked (as pg_dump restores them: a function may call one a later file defines); then checks the
 * body of every function the files define, so a broken body fails the run here, not at its first call.
 */
async function applyRepeatables (tx: TransactionSql, repeatables: Repeatable[]): Promise<string[]> {
  if (!await tableExists(tx, 'budget_schema_repeatables')) {
    await tx`
      create table budget_schema_repeatables (
        name       text primary key,
        checksum   text not null,
        applied_at timestamptz not null default now()
      )`
  }
  const checksums = new Map((await tx<Array<{ name: string, checksum: string }>>`select name, checksum from budget_schema_repeatables`)
    .map((row) => [row.name, row.checksum]))
  const pending = repeatables.filter((file) => checksums.get(file.name) !== file.checksum)
  // A file gone from sql/functions/ goes from the records; what it defined stays until a file drops it.
  await tx`delete from budget_schema_repeatables where name <> all (${repeatables.map((file) => file.name)})`
  if (pending.length === 0) return []

  await tx`set local check_function_bodies = off`
  for (const file of pending) {
    try {
      await runStatements(tx, file.text)
    } catch (error) {
      throw new MigrationError(`functions/${file.name}`, (error as Error).message, { cause: error })
    }
    await tx`
      insert into budget_schema_repeatables (name, checksum) values (${file.name}, ${file.checksum})
      on conflict (name) do update set checksum = excluded.checksum, applied_at = now()`
  }
  await tx`set local check_function_bodies = on`
  await checkFunctionBodies(tx, repeatables)
  return pending.map((file) => file.name)
}

/** Runs each function's language validator (PL/pgSQL: its syntax; SQL: its statements against the schema). */
async function checkFunctionBodies (tx: TransactionSql, repeatables: Repeatable[]): Promise<void> {
  const fileOf = new Map(repeatables.flatMap((file) => file.functions.map((name) => [name, file.name] as const)))
  const functions = await tx<Array<{ name: string, signature: string, validator: string }>>`
    select p.proname as name, p.oid::regprocedure::text as signature, l.lanvalidator::regproc::text as validator
    from pg_proc p join pg_language l on l.oid = p.prolang
    where p.proname = any (${[...fileOf.keys()]}) and pg_function_is_visible(p.oid) and l.lanname in ('sql', 'plpgsql')
    order by p.proname`
  for (const fn of functions) {
    try {
      await tx.unsafe(`select ${fn.validator}($1::regprocedure)`, [fn.signature])
    } catch (error) {
      throw new MigrationError(`functions/${fileOf.get(fn.name)!}`, `${fn.signature}: ${(error as Error).message}`, { cause: error })
    }
  }
}
