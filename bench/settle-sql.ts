// Holds and settlements alone, in direct SQL: what one batch costs PostgreSQL, without a gateway in front. A hot
// line of three budgets (user under team under organization, each with a notify alert it never reaches) whose
// window rows exist, as a gated call's always do. Each round holds a batch of calls (budget_hold_batch) and then
// settles it (budget_settle_batch), and takes a lease (budget_lease_take) and settles a batch of calls from it
// (budget_settle_leased); the holds and the settlements are timed. Beside them, the floor under both: the same calls'
// rows stored alone (a usage record a call, an allocation a call and budget). Prints the median milliseconds
// per batch of BENCH_ROUNDS rounds (after a few unmeasured ones) for batches of 1, 16 and 64. Run it on two
// branches back to back to compare them: the figures are this machine's.
import { randomUUID } from 'node:crypto'
import postgres from 'postgres'
import { migrate } from '../lib/kernel/database/migrate.js'
import { benchDatabase, fmt, median, timed } from './harness.js'

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 40)
const WARMUP = 5
const SIZES = [1, 16, 64]

const database = await benchDatabase()
const sql = postgres(database.url, { max: 1, onnotice: () => {} })
await migrate(sql)

// The line: organization > team > user, in USD, with windows of now made by a refresh (as the gate's line load does).
const alerts = JSON.stringify([{ threshold: 80, actions: ['notify'], notificationChannels: [] }])
const line: Array<{ id: string, start: Date, end: Date, rank: number }> = []
let parent: string | null = null
for (const [rank, scope] of (['user', 'team', 'organization'] as const).map((s, i) => [i, s] as const).reverse()) {
  const [budget]: Array<{ id: string }> = await sql<Array<{ id: string }>>`
    insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date, enforcement, alerts, parent_id)
    values (${`bench-${scope}`}, ${scope}, ${`bench-${scope}`}, 1000000000, 'USD', 'monthly', '2024-01-01', 'soft', ${alerts}::text::jsonb, ${parent})
    returning id`
  const [window] = await sql<Array<{ start: Date, end: Date }>>`
    select w.period_start as start, w.period_end as end from budget_definitions d cross join lateral budget_window(d, now()) w where d.id = ${budget!.id}`
  await sql`select refresh_budget_status_cache(${budget!.id}, ${window!.start}, ${window!.end})`
  line.unshift({ id: budget!.id, start: window!.start, end: window!.end, rank })
  parent = budget!.id
}

const texts = (values: unknown[]) => values.map(String)
// The line's one tree, which every statement names as the gate's do (its root: the organization, made first).
const root = line[line.length - 1]!.id

async function holdAndSettle (size: number): Promise<{ hold: number, settle: number }> {
  const ids = Array.from({ length: size }, () => randomUUID())
  const rows = ids.flatMap((_, call) => line.map((budget) => ({ call: call + 1, budget })))
  const hold = await timed(async () => await sql`select count(*) from budget_hold_batch(${ids}::text[]::uuid[], ${texts(ids.map(() => '0.01'))}::text[]::numeric[],
    ${ids.map((id) => `req-${id}`)}::text[], 'USD', '60 seconds'::interval,
    ${texts(rows.map((r) => r.call))}::text[]::integer[], ${rows.map((r) => r.budget.id)}::text[]::uuid[],
    ${rows.map((r) => r.budget.start.toISOString())}::text[]::timestamptz[], ${rows.map((r) => r.budget.end.toISOString())}::text[]::timestamptz[],
    ${texts(rows.map((r) => r.budget.rank === 0))}::text[]::boolean[], ${texts(rows.map((r) => r.budget.rank))}::text[]::integer[], false, false,
    ${[root]}::text[]::uuid[], ${root}::uuid)`)
  const settle = await timed(async () => await sql`select count(*) from budget_settle_batch(${ids}::text[]::uuid[],
    ${texts(ids.map(() => '0.0083'))}::text[]::numeric[], ${ids.map(() => 'bench')}::text[], ${ids.map(() => null)}::text[],
    ${ids.map(() => '{"modelId":"gpt-4o-mini"}')}::text[]::jsonb[], null::uuid[], ${[root]}::text[]::uuid[], ${root}::uuid)`)
  return { hold, settle }
}

async function leaseAndSettle (size: number): Promise<number> {
  const lease = randomUUID()
  const [taken] = await sql`select count(*)::int as n from budget_lease_take(${lease}, 'USD', '60 seconds'::interval, 10, 0.0001,
    ${line.map((b) => b.id)}::text[]::uuid[], ${line.map((b) => b.start.toISOString())}::text[]::timestamptz[],
    ${line.map((b) => b.end.toISOString())}::text[]::timestamptz[], ${texts(line.map((b) => b.rank === 0))}::text[]::boolean[],
    ${texts(line.map((b) => b.rank))}::text[]::integer[], ${[root]}::text[]::uuid[], ${root}::uuid)`
  if (taken!.n !== line.length) throw new Error('no lease taken')
  const requests = Array.from({ length: size }, () => randomUUID())
  const now = new Date().toISOString()
  const ms = await timed(async () => await sql`select count(*) from budget_settle_leased(${requests.map(() => lease)}::text[]::uuid[],
    ${requests}::text[], ${texts(requests.map(() => '0.0083'))}::text[]::numeric[], ${requests.map(() => 'bench')}::text[],
    ${requests.map(() => null)}::text[], ${requests.map(() => '{"modelId":"gpt-4o-mini"}')}::text[]::jsonb[],
    ${requests.map(() => now)}::text[]::timestamptz[], '60 seconds'::interval, null::uuid[], ${[root]}::text[]::uuid[], ${root}::uuid)`)
  await sql`select budget_lease_return(${lease}, 0, true, 1, ${[root]}::text[]::uuid[], ${root}::uuid)`
  return ms
}

/**
 * The rows alone: what any settlement of `size` calls on this line must store, a usage record a call and an
 * allocation a call and budget (each naming the line's one root, as the settlements do), inserted with one
 * statement each and nothing else (no lock, no window row, no lease): the floor under both settlements' time.
 */
async function rowsAlone (size: number): Promise<number> {
  const ids = Array.from({ length: size }, () => randomUUID())
  const [team, ...above] = line
  return await timed(async () => {
    await sql`insert into budget_usage_records (id, budget_id, root_id, amount, currency, source, metadata, idempotency_key, also_counts_toward, occurred_at, allocated_by_settlement)
      select i.id, ${team!.id}, (select d.root_id from budget_definitions d where d.id = ${team!.id}), 0.0083, 'USD', 'bench', '{"modelId":"gpt-4o-mini"}'::jsonb || jsonb_build_object('requestId', i.id::text), i.id::text,
             ${above.map((b) => b.id)}::text[]::uuid[], now(), true
      from unnest(${ids}::text[]::uuid[]) as i(id)`
    await sql`insert into budget_usage_allocations (budget_id, root_id, usage_id, amount, occurred_at, exchange_rate)
      select b.id, (select d.root_id from budget_definitions d where d.id = ${team!.id}), i.id, 0.0083, now(), 1 from unnest(${ids}::text[]::uuid[]) as i(id) cross join unnest(${line.map((b) => b.id)}::text[]::uuid[]) as b(id)`
  })
}

const out: string[] = ['', `holds and settlements in direct SQL, median ms per batch of ${ROUNDS} rounds (line of ${line.length} budgets, windows existing)`, '',
  '| batch | budget_hold_batch ms | budget_settle_batch ms | budget_settle_leased ms | the rows alone ms |', '|---|---|---|---|---|']
for (const size of SIZES) {
  const holds: number[] = []
  const held: number[] = []
  const leased: number[] = []
  const rows: number[] = []
  for (let round = 0; round < WARMUP + ROUNDS; round++) {
    const h = await holdAndSettle(size)
    const l = await leaseAndSettle(size)
    const r = await rowsAlone(size)
    if (round >= WARMUP) { holds.push(h.hold); held.push(h.settle); leased.push(l); rows.push(r) }
  }
  out.push(`| ${size} | ${fmt(median(holds), 3)} | ${fmt(median(held), 3)} | ${fmt(median(leased), 3)} | ${fmt(median(rows), 3)} |`)
}

// exactness: every call settled at 0.0083 on each budget
const [check] = await sql`select count(distinct c.current_amount)::int as distinct_amounts, min(c.current_amount)::text as spent, min(c.reserved_amount)::text as reserved
                          from budget_status_cache c where c.budget_id = any (${line.map((b) => b.id)}::uuid[])`
out.push('', `window rows: ${check!.distinct_amounts} distinct spend (${check!.spent}), reserved ${check!.reserved}`, '')
process.stdout.write(out.join('\n'))
await sql.end()
await database.close()
