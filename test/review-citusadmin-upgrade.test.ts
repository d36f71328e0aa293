// Adversarial review of 9a012ab on plain PostgreSQL: a database migrated by the commit before (2b62b3c, whose
// budget_line, budget_applicable, refresh_budget_status_cache and budget_sweep_expired had default arguments)
// upgraded by this version's migrate(): the old argument lists must answer as before, not be ambiguous.
import t from 'tap'
import { migrate } from '../lib/kernel/database/migrate.js'
import { createTestSql } from './fixtures/database.js'
import { sqlOfVersion } from './fixtures/version-before.js'
import { createLineRepository } from '../lib/gate/line-repository.js'
import { createSweeperRepository } from '../lib/gate/sweeper-repository.js'

for (const commit of ['2b62b3c', 'df4fb76']) {
  t.test(`a database at ${commit} upgraded: the old argument lists answer, not ambiguous`, async (t) => {
    const { sql } = await createTestSql(t, { max: 1 })
    await migrate(sql, await sqlOfVersion(commit))
    await migrate(sql)
    const [b] = await sql`insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date)
      values ('org', 'organization', 'acme', 100, 'USD', 'monthly', '2024-01-01') returning id`
    const errors: string[] = []
    const attempt = async (what: string, run: () => Promise<unknown>) => {
      try { await run() } catch (error) { errors.push(`${what}: ${(error as Error).message}`) }
    }
    await attempt('budget_sweep_expired(integer)', async () => await sql`select budget_sweep_expired(10)`)
    await attempt('refresh_budget_status_cache(uuid, timestamptz, timestamptz)', async () =>
      await sql`select * from refresh_budget_status_cache(${b!.id}::uuid, date_trunc('month', now()), date_trunc('month', now()) + interval '1 month')`)
    await attempt('budget_line (5 arguments)', async () =>
      await sql`select * from budget_line(array['organization'], array['acme'], 'USD', null, '{}'::jsonb)`)
    await attempt('budget_applicable (6 arguments)', async () =>
      await sql`select * from budget_applicable(array['organization'], array['acme'], 'USD', now(), null, '{}'::jsonb)`)
    // this version's own callers on plain PostgreSQL: the gate's line load and the sweeper
    await attempt('line load (line-repository, plain PostgreSQL)', async () =>
      await createLineRepository(sql).loadLine({ scopes: [{ type: 'organization', id: 'acme' }], model: null }, 'USD'))
    await attempt('sweeper (sweeper-repository, plain PostgreSQL)', async () => await createSweeperRepository(sql).sweepExpired(10))
    const left = await sql`select p.oid::regprocedure::text as fn from pg_proc p
      where p.proname in ('budget_sweep_expired', 'refresh_budget_status_cache', 'budget_line', 'budget_applicable') order by 1`
    t.same(errors, [], `every old argument list answers (functions left: ${left.map((r) => r.fn).join('; ')})`)
  })
}
