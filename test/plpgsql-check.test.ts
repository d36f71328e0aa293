// plpgsql_check (https://github.com/okbob/plpgsql_check) over every PL/pgSQL function that sql/functions/
// defines, in a database migrate() made: each statement of a body is planned against the schema (a column
// or table that is not there, a type that does not fit), with every class of warning on (performance,
// security, compatibility, extra). Trigger functions are checked against each relation they are a trigger
// on. SQL-language functions need no extension: migrate() puts every body through its validator.
// Needs the extension on the test server: Debian's postgresql-15-plpgsql-check (.ci/run installs it).
import { readFileSync } from 'node:fs'
import t from 'tap'
import { migrate, readRepeatables } from '../lib/kernel/database/migrate.js'
import { createTestSql } from './fixtures/database.js'

/** The functions sql/citus/delegate.sql registers by p_root: the names in its one array. */
function delegatedFunctions (): string[] {
  const text = readFileSync(new URL('../sql/citus/delegate.sql', import.meta.url), 'utf8')
  const list = /p\.proname = any \(array\[([^\]]+)\]\)/.exec(text)?.[1] ?? ''
  return [...list.matchAll(/'(\w+)'/g)].map((match) => match[1]!)
}

interface Finding { fn: string, relation: string | null, level: string, line: number | null, message: string, detail: string | null }

/** Findings kept on purpose, each with the reason. Add one only with a reason a reader can check. */
const KEPT: Array<{ fn: string, message: RegExp, reason: string }> = [
  { fn: 'budget_applicable_in_trees', message: /unused parameter "p_currency"/, reason: 'kept in the signature its callers use (budget_applicable passes it on): every budget applies whatever its currency (sql/functions/lines.sql)' },
  // p_root chooses the node on Citus; the body needs only the trees it is told. The functions are the ones
  // sql/citus/delegate.sql delegates by it, read from that file.
  ...delegatedFunctions()
    .map((fn) => ({ fn, message: /unused parameter "p_root"/, reason: 'the distribution argument Citus delegates the call by (sql/citus/delegate.sql); the body reads p_roots' }))
]

t.test('plpgsql_check finds nothing in the package\'s PL/pgSQL functions', async (t) => {
  const { sql } = await createTestSql(t, { max: 1 })
  await migrate(sql)
  const [available] = await sql`select count(*)::int as n from pg_available_extensions where name = 'plpgsql_check'`
  if (available!.n === 0) {
    t.fail('the test server has no plpgsql_check extension: install postgresql-<major>-plpgsql-check (Debian) on it, as .ci/run does')
    return
  }
  await sql`create extension plpgsql_check`

  const defined = (await readRepeatables()).flatMap((file) => file.functions)
  const targets = await sql<Array<{ fn: string, oid: number, relid: number, relation: string | null, oldtable: string | null, newtable: string | null, trigger: boolean }>>`
    select p.oid::regprocedure::text as fn, p.oid::int as oid, coalesce(tg.tgrelid, 0)::int as relid, tg.tgrelid::regclass::text as relation,
           tg.tgoldtable as oldtable, tg.tgnewtable as newtable, p.prorettype = 'trigger'::regtype as trigger
    from pg_proc p
    join pg_language l on l.oid = p.prolang and l.lanname = 'plpgsql'
    left join pg_trigger tg on tg.tgfoid = p.oid and not tg.tgisinternal
    where p.proname = any (${defined}) and pg_function_is_visible(p.oid)
    order by 1, 4`
  t.ok(targets.length >= 20, `${targets.length} functions (and triggers) to check`)
  t.same(targets.filter((target) => target.trigger && target.relation === null).map((target) => target.fn), [],
    'every trigger function is a trigger on some relation, so it is checked against it')

  const findings: Finding[] = []
  for (const target of targets) {
    const rows = await sql<Array<{ level: string, lineno: number | null, message: string, detail: string | null }>>`
      select c.level, c.lineno, c.message, c.detail
      from plpgsql_check_function_tb(${target.oid}::regprocedure, ${target.relid}::regclass, fatal_errors => false, all_warnings => true,
                                     oldtable => ${target.oldtable}, newtable => ${target.newtable}) c`
    findings.push(...rows.map((row) => ({ fn: target.fn, relation: target.relation, level: row.level, line: row.lineno, message: row.message, detail: row.detail })))
  }
  const unexplained = findings.filter((finding) => !KEPT.some((kept) => finding.fn.startsWith(`${kept.fn}(`) && kept.message.test(finding.message)))
  t.same(unexplained, [], 'no error and no warning, but those kept with a reason')
  t.same(KEPT.filter((kept) => !findings.some((finding) => finding.fn.startsWith(`${kept.fn}(`) && kept.message.test(finding.message))), [],
    'every kept finding is still found (else it goes from the list)')
})
