// A caller's line loaded in SQL (budget_line, sql/functions/lines.sql), what the gate runs once per caller,
// window and process: for CALLERS distinct callers, each a user under its own team under one organization
// (a line of three budgets, two trees' worth of lookups: the user's scope and the team's), first cold (no
// window row yet: each is made by a refresh) and then warm (every row there). Prints the median milliseconds
// a load of BENCH_ROUNDS rounds. Run it on two branches back to back to compare them: the figures are this
// machine's.
import postgres from 'postgres'
import { migrate } from '../lib/kernel/database/migrate.js'
import { benchDatabase, fmt, median, timed } from './harness.js'

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 200)

const database = await benchDatabase()
const sql = postgres(database.url, { max: 1, onnotice: () => {} })
await migrate(sql)

const [org] = await sql<Array<{ id: string }>>`
  insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date)
  values ('bench-org', 'organization', 'bench-org', 1000000, 'USD', 'monthly', '2024-01-01') returning id`
for (let i = 0; i < ROUNDS; i++) {
  const [team] = await sql<Array<{ id: string }>>`
    insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date, parent_id)
    values (${`team-${i}`}, 'team', ${`team-${i}`}, 1000, 'USD', 'monthly', '2024-01-01', ${org!.id}) returning id`
  await sql`insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date, parent_id)
    values (${`user-${i}`}, 'user', ${`user-${i}`}, 10, 'USD', 'monthly', '2024-01-01', ${team!.id})`
}

async function load (i: number): Promise<number> {
  return await timed(async () => {
    const rows = await sql`select budget_id from budget_line(array['user', 'team'], array[${`user-${i}`}, ${`team-${i}`}], 'USD', 'gpt-4o-mini', '{}'::jsonb)`
    if (rows.length !== 3) throw new Error(`a line of ${rows.length}`)
  })
}

const cold: number[] = []
for (let i = 0; i < ROUNDS; i++) cold.push(await load(i))
const warm: number[] = []
for (let i = 0; i < ROUNDS; i++) warm.push(await load(i))
console.log(`budget_line, ${ROUNDS} callers: cold ${fmt(median(cold))} ms, warm ${fmt(median(warm))} ms (median a load)`)
await sql.end()
await database.close()
