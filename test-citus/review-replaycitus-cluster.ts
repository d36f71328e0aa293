// Review (replay on Citus), on the cluster (`npm run test:citus -- test-citus/review-replaycitus-cluster.ts`): the same
// worlds give the same replay on the cluster as on plain PostgreSQL. Each world is recorded once on a plain database
// (the machine's PostgreSQL, no Citus: PLAIN_URL) and copied row for row, the same ids, into a database distributed on
// the cluster; then budget_simulate_slice slice by slice, and POST /simulate through the plugin (as the budgets are,
// and under a proposal that creates a budget in a new tree and changes one), must answer the same on both.
import fc from 'fast-check'
import Fastify from 'fastify'
import postgres, { type Sql } from 'postgres'
import t, { type Test } from 'tap'
import { randomUUID } from 'node:crypto'
import budgets from '../lib/index.js'
import { migrate } from '../lib/kernel/database/migrate.js'
import { ADMIN_TOKEN, PREFIX, TEST_CHANNELS } from '../test/fixtures/app.js'
import { createTestSql } from '../test/fixtures/database.js'
import { buildWorld, iso, R0, R1, DAY, replaySlices, worldArb } from '../test/fixtures/replay-worlds.js'

const PLAIN_URL = process.env.REVIEW_PLAIN_URL ?? 'postgres://postgres@127.0.0.1:5432/test'
/** A fresh migrated database on the plain server, dropped with the test. */
async function plainDatabase (t: Test): Promise<Sql> {
  const name = `review_replaycitus_${randomUUID().replace(/-/g, '')}`
  const admin = postgres(PLAIN_URL, { max: 1, onnotice: () => {} })
  await admin.unsafe(`create database ${name} template template0`)
  const url = new URL(PLAIN_URL); url.pathname = `/${name}`
  const sql = postgres(url.toString(), { max: 4, onnotice: () => {} })
  t.teardown(async () => {
    await sql.end({ timeout: 1 })
    await admin.unsafe(`drop database if exists ${name} with (force)`).catch(() => {})
    await admin.end({ timeout: 1 })
  })
  await migrate(sql)
  return sql
}

/** Every row the replay reads, from `from` into `to` (ids kept; the usage triggers kept off: the allocations are copied). */
async function copyWorld (from: Sql, to: Sql): Promise<void> {
  const columns = async (table: string) => (await from<Array<{ name: string }>>`
    select column_name as name from information_schema.columns where table_schema = current_schema() and table_name = ${table} and is_generated = 'NEVER' order by ordinal_position`).map((r) => r.name)
  const copy = async (table: string, rows: readonly unknown[], extra = '') => {
    if (rows.length === 0) return
    const list = (await columns(table)).map((c) => `"${c}"`).join(', ')
    await to.unsafe(`insert into ${table} (${list}) ${extra} select ${list} from json_populate_recordset(null::${table}, $1::text::json)`, [JSON.stringify(rows)] as never)
  }
  await to`delete from budget_exchange_rates`
  await copy('budget_exchange_rates', await from`select * from budget_exchange_rates`, 'overriding system value')
  // parents before children
  const definitions = await from<Array<Record<string, unknown>>>`
    with recursive d as (select b.*, 0 as depth from budget_definitions b where parent_id is null
                         union all select b.*, d.depth + 1 from budget_definitions b join d on b.parent_id = d.id)
    select * from d order by depth, id`
  for (const depth of [...new Set(definitions.map((d) => d.depth as number))]) {
    await copy('budget_definitions', definitions.filter((d) => d.depth === depth).map(({ depth: _, ...row }) => row))
  }
  await copy('budget_usage_records', (await from<Array<Record<string, unknown>>>`select * from budget_usage_records`).map((r) => ({ ...r, allocated_by_settlement: true })))
  await copy('budget_usage_allocations', await from`select * from budget_usage_allocations`)
  await copy('budget_decision_log', await from`select * from budget_decision_log`, 'overriding system value')
}

async function plugin (t: Test, sql: Sql) {
  const app = Fastify()
  await app.register(budgets, { database: sql, adminToken: ADMIN_TOKEN, notifications: { channels: TEST_CHANNELS, intervalMs: 0 } })
  await app.ready()
  t.teardown(async () => await app.close())
  return app
}

/** An answer with each budget the proposal created named by its name (its id is new on each database). */
function normal (answer: { budgets: Array<{ budgetId: string, name: string, proposed: boolean }> }) {
  return { ...answer, budgets: answer.budgets.map((b) => (b.name.startsWith('proposed') ? { ...b, budgetId: b.name } : b)) }
}

t.test('the same worlds replay the same on the cluster as on plain PostgreSQL: the function slice by slice, and POST /simulate', async (t) => {
  const worlds = fc.sample(worldArb, { numRuns: 4, seed: 606889 })
  let apiEvents = 0
  for (const [w, world] of worlds.entries()) {
    await t.test(`world ${w}`, async (t) => {
      const plain = await plainDatabase(t)
      const { sql: cluster } = await createTestSql(t, { max: 4 })
      await migrate(cluster)
      t.ok((await cluster`select budget_on_citus() as c`)[0]!.c, 'the second database is distributed on the cluster')
      let gated: string[] = []
      await plain.begin(async (tx) => { gated = (await buildWorld(tx, world)).gated })
      await copyWorld(plain, cluster)
      const [counts] = await plain`select (select count(*)::int from budget_usage_records) as records, (select count(*)::int from budget_usage_allocations) as allocations,
                                            (select count(distinct root_id)::int from budget_definitions) as trees,
                                            (select count(*)::int from budget_usage_records where correction and metadata ? 'adjusts') as adjustments,
                                            (select count(*)::int from budget_usage_records u where (select count(distinct a.root_id) from budget_usage_allocations a where a.usage_id = u.id) > 1) as "multiTree"`
      t.comment(`world ${w}: ${JSON.stringify(counts)}`)
      const onPlain = await replaySlices(plain, world, gated)
      const onCluster = await replaySlices(cluster, world, gated)
      t.same(onCluster.map((s) => JSON.parse(s)), onPlain.map((s) => JSON.parse(s)), 'budget_simulate_slice: every slice\'s state the same')
      t.equal(onCluster.at(-1), onPlain.at(-1), 'the last state, byte for byte')

      const appPlain = await plugin(t, plain)
      const appCluster = await plugin(t, cluster)
      const ids = (await plain<Array<{ id: string, currency: string, period: string, start: string, end: string | null, recurring: boolean, timezone: string, alignment: string, fiscal: number }>>`
        select id, currency, period, start_date as start, end_date as "end", recurring, timezone, period_alignment as alignment, fiscal_year_start_month as fiscal
        from budget_definitions where deleted_at is null order by id`)
      const bodies: Array<Record<string, unknown>> = [
        { from: iso(R0), to: iso(R1 + DAY) },
        { from: iso(R0), to: iso(R1 + DAY), proposal: {
          create: [{ name: 'proposed root', scopeType: 'team', scopeId: 'tea-a', amount: '2', currency: 'USD', period: 'daily', startDate: iso(R0 - 30 * DAY),
                     alerts: [{ threshold: 50, actions: ['block-all'] }] }],
          ...(ids.length === 0 ? {} : { create: [
            { name: 'proposed root', scopeType: 'team', scopeId: 'tea-a', amount: '2', currency: 'USD', period: 'daily', startDate: iso(R0 - 30 * DAY),
              alerts: [{ threshold: 50, actions: ['block-all'] }] },
            { name: 'proposed child', scopeType: 'user', scopeId: 'use-a', parentId: ids[0]!.id, amount: '0.5', currency: ids[0]!.currency,
              period: ids[0]!.period, startDate: new Date(ids[0]!.start).toISOString(), ...(ids[0]!.end === null ? {} : { endDate: new Date(ids[0]!.end).toISOString() }),
              recurring: ids[0]!.recurring, timezone: ids[0]!.timezone, periodAlignment: ids[0]!.alignment, fiscalYearStartMonth: ids[0]!.fiscal,
              alerts: [{ threshold: 80, actions: ['notify'] }] }] }) } }
      ]
      for (const body of bodies) {
        const answers = []
        for (const app of [appPlain, appCluster]) {
          const response = await app.inject({ method: 'POST', url: `${PREFIX}/simulate`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body })
          t.equal(response.statusCode, 200, response.statusCode === 200 ? 'POST /simulate: 200' : response.body.slice(0, 300))
          answers.push(normal(response.json()))
        }
        t.same(answers[1], answers[0], `${answers.map((a) => (a as { budgets: Array<{ proposed: boolean }> }).budgets.filter((b) => b.proposed).length).join('/')} proposed met; POST /simulate answers the same on the cluster${body.proposal === undefined ? '' : ', under a proposal with a new tree'}`)
        apiEvents += (answers[0] as unknown as { events: number }).events
      }
    })
  }
  t.ok(apiEvents > 0, `the replays met events (${apiEvents})`)
})
