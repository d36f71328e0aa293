// A reproduction of docs/scaling.md's open item on settlements that fall behind (plain PostgreSQL): one gateway
// process (bench/gateway-server.ts), loaded with autocannon round by round on the hot line (a team far from its
// limit, admitted from the process's lease) and then on the held line (a team in shadow under the same
// organization, held call by call). After each held round it samples, every 0.5 s for 6 s, the holds still live
// (reservations not yet settled); when some are left at the end it prints what the database's sessions are doing.
//
//   npx tsx bench/settlement-stall.ts            (ROUNDS=4; HOT=0 leaves the hot rounds out)
import { once } from 'node:events'
import autocannon from 'autocannon'
import postgres from 'postgres'
import { createTestDatabase } from '../test/fixtures/database.js'
import { HOT_CALL, heldLine, hotLine, startBenchGateway } from './harness.js'

const ROUNDS = Number(process.env.ROUNDS ?? 4)
const HOT = process.env.HOT !== '0'
const cleanups: Array<() => unknown> = []
process.env.DATABASE_URL ??= 'postgres://postgres@127.0.0.1:5432/postgres'
const url = await createTestDatabase({ teardown: (fn) => { cleanups.push(fn) } })
const database = decodeURIComponent(new URL(url).pathname.slice(1))
const { url: gateway, child } = await startBenchGateway(url)
cleanups.push(async () => { if (child.exitCode === null) { child.kill('SIGTERM'); await once(child, 'exit') } })
const sql = postgres(url, { max: 2, onnotice: () => {} })
cleanups.push(async () => await sql.end())

const load = async (team: string) => {
  const result = await autocannon({ url: `${gateway}/v1/chat/completions`, connections: 16, duration: 8, ...HOT_CALL, headers: { ...HOT_CALL.headers, 'x-relay-team-id': team } })
  return Math.round(result['2xx'] / 8)
}
const liveHolds = async () => Number((await sql`select count(distinct id)::int as n from budget_reservations where not lease`)[0]!.n)

try {
  const { org } = await hotLine(gateway)
  await heldLine(gateway, org)
  for (let round = 0; round < ROUNDS; round++) {
    const hot = HOT ? `hot ${await load('hot')} calls/s, then ` : ''
    const held = await load('held')
    const trail: number[] = []
    for (let sample = 0; sample < 12; sample++) { trail.push(await liveHolds()); await new Promise((resolve) => setTimeout(resolve, 500)) }
    console.log(`round ${round}: ${hot}held ${held} calls/s; holds live every 0.5 s after: ${trail.join(' ')}`)
    if (trail.at(-1)! > 0) {
      console.log(await sql`select state, wait_event_type as "waitType", wait_event as "wait", xact_start is not null as "inTransaction", left(query, 80) as query
        from pg_stat_activity where datname = ${database} and pid <> pg_backend_pid()`)
      console.log(await sql`select deadlocks, xact_rollback as rollbacks from pg_stat_database where datname = ${database}`)
    }
  }
} finally {
  for (const cleanup of cleanups.reverse()) await cleanup()
}
