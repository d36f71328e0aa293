// Leases and settlements under the ways they broke (issue 19): statements locking a lease's rows in
// opposite orders, a false expiry warning on every leased call, calls that cost more than their lease
// held, and a budget's window changed under calls in flight.
import postgres from 'postgres'
import t from 'tap'
import { compareMoney } from '../lib/kernel/money.js'
import { ADMIN_TOKEN, PREFIX, buildApp } from './fixtures/app.js'
import { createTestDatabase, onCitus } from './fixtures/database.js'
import { startGatewayProcess, type GatewayProcess } from './fixtures/gateway-process.js'
import { buildGateway } from './fixtures/gateway.js'
import { findViolations, waitForSettled } from './fixtures/invariants.js'
import { pause, waitingForLock } from './fixtures/sessions.js'
import { modeFromPrompt, modeMarker, startUpstream, type UpstreamMode } from './fixtures/upstream.js'



t.test('a lease\'s give-back and a settlement of its calls, meeting on its rows, never deadlock: every statement locks in one order', async (t) => {
  // Deterministic. A lease on three budgets; its rows lie in the heap in the reverse of their key order
  // (budget_lease_take inserts them in the line's order). A statement whose plan reads them by a
  // sequential scan meets them in the heap's order, one that reads the primary key in key order: the
  // planner settings below pick each plan, as table statistics and row versions do in production. A
  // third session holds the middle row, so each statement takes its first row and waits for the second;
  // then it lets go. Locked without an order (as the lease functions once were), one statement holds the first row in
  // key order and wants the middle one, the other holds the middle one and wants the first: 40P01.
  const { app, sql, admin } = await buildApp(t)
  const ids: string[] = []
  for (const scopeId of ['a', 'b', 'c']) {
    const created = await admin({ method: 'POST', url: '/api/v1/budgets', body: { name: scopeId, scopeType: 'team', scopeId, amount: '100', currency: 'USD', period: 'monthly', startDate: '2024-01-01' } })
    ids.push(created.json().id)
  }
  const line = await sql<Array<{ budgetId: string, start: Date, end: Date }>>`
    select budget_id as "budgetId", period_start as start, period_end as "end"
    from budget_line(array['team', 'team', 'team'], array['a', 'b', 'c'], 'USD', null, '{}'::jsonb) order by budget_id desc`
  const lease = '00000000-0000-4000-8000-00000000beef'
  await sql`select * from budget_lease_take(${lease}, 'USD', interval '1 minute', 0.01, 0.001, ${line.map((b) => b.budgetId)}::text[]::uuid[],
    ${line.map((b) => b.start.toISOString())}::text[]::timestamptz[], ${line.map((b) => b.end.toISOString())}::text[]::timestamptz[], array[true, true, true], array[1, 2, 3])`
  if (await onCitus(sql)) {
    // three trees, three shards: each tree's row is locked by a statement of its own, in the order of the roots
    const trees = await sql<Array<{ rootId: string }>>`select distinct root_id as "rootId" from budget_reservations`
    t.equal(trees.length, 3, 'the rows lie in three trees')
  } else {
    const heapOrder = await sql<Array<{ budgetId: string }>>`select budget_id as "budgetId" from budget_reservations order by ctid`
    t.same(heapOrder.map((row) => row.budgetId), line.map((b) => b.budgetId), 'the rows lie in the heap in descending key order')
  }
  const middle = line[1]!.budgetId

  const session = async () => {
    const connection = await sql.reserve()
    t.teardown(() => { connection.release() })
    const [row] = await connection<Array<{ pid: number }>>`select pg_backend_pid() as pid`
    return { connection, pid: row!.pid }
  }
  const blocker = await session()
  const returning = await session()
  const settling = await session()
  await returning.connection`select set_config('enable_indexscan', 'off', false), set_config('enable_bitmapscan', 'off', false)`
  await settling.connection`select set_config('enable_seqscan', 'off', false), set_config('enable_bitmapscan', 'off', false)`

  await blocker.connection`begin`
  // each budget is a root: the row's tree is its own (named, so that Citus locks one shard's row)
  await blocker.connection`select 1 from budget_reservations where root_id = ${middle} and id = ${lease} and budget_id = ${middle} for update`
  const giveBack = returning.connection`select budget_lease_return(${lease}, 0.001, false, 1)`.execute().then(() => null, (error: { code?: string }) => error)
  await waitingForLock(sql, returning.pid)
  const settle = settling.connection`
    select * from budget_settle_leased(array[${lease}]::uuid[], array['call-1'], array[0.002]::numeric[], array['gateway'], array[null]::text[],
                                       array['{}'::jsonb], array[now()], interval '1 minute')`.execute().then(() => null, (error: { code?: string }) => error)
  await waitingForLock(sql, settling.pid)
  await blocker.connection`commit`

  const failures = (await Promise.all([giveBack, settle])).filter((error) => error !== null)
  t.same(failures.map((error) => error!.code), [], 'neither statement was killed as a deadlock')
  const [held] = await sql<Array<{ amount: string }>>`select min(amount)::text as amount from budget_reservations where id = ${lease}`
  t.equal(Number(held!.amount), 0.007, 'the lease gave back 0.001 and paid 0.002 on each budget')
  await app.close()
})

t.test('every gate function carries its lock timeout, so a queue on a hot row cannot hold a pooled connection for long', async (t) => {
  const { sql } = await buildApp(t)
  // Set in each function's own definition (sql/functions/): a create or replace that left it out would drop it.
  const gateFunctions: Record<string, string> = {
    budget_hold_batch: '2s', budget_lease_take: '2s', budget_rate_take: '2s', budget_rate_give_back: '2s',
    budget_lease_return: '5s', budget_settle_batch: '5s', budget_settle_leased: '5s', budget_sweep_trees: '5s'
  }
  const rows = await sql<Array<{ name: string, config: string[] | null }>>`
    select proname as name, proconfig as config from pg_proc where proname = any (${Object.keys(gateFunctions)}::text[]) order by proname`
  t.same(rows.map((row) => row.name), Object.keys(gateFunctions).sort(), 'each is there, once')
  for (const row of rows) t.same(row.config, [`lock_timeout=${gateFunctions[row.name]!}`], row.name)
})

t.test('a call admitted from a lease logs no expiry; a reservation that really expired before its settlement still says so', async (t) => {
  const leased = await buildGateway(t, { captureLogs: true })
  await leased.createBudget({ scopeId: 'team-a', amount: '100' })
  const statuses = await Promise.all(Array.from({ length: 30 }, async (_, i) => (await leased.call({ team: 'team-a' }, { messages: [{ role: 'user', content: `call ${i}` }] })).statusCode))
  t.same([...new Set(statuses)], [200], 'every call served')
  const [leases] = await leased.sql<Array<{ n: number }>>`select count(distinct id)::int as n from budget_reservations where lease`
  t.ok(leases!.n > 0, 'the hot line took a lease')
  await leased.app.close()
  const [records] = await leased.sql<Array<{ n: number }>>`select count(*)::int as n from budget_usage_records`
  t.equal(records!.n, 30, 'every call recorded')
  t.same(leased.logs.filter((line) => /expired/.test(line.msg ?? '')).map((line) => line.msg), [], 'no expiry warning')

  // One slow stream whose hold expires (TTL 300 ms) and is swept before the call ends.
  const expiring = await buildGateway(t, { captureLogs: true, mockTokenDelayMs: 100, gate: { reservationTtlMs: 300, sweepIntervalMs: 50 } })
  await expiring.createBudget({ scopeId: 'team-a', amount: '100' })
  const response = await expiring.call({ team: 'team-a' }, { stream: true })
  t.equal(response.statusCode, 200)
  await expiring.app.close()
  const [swept] = await expiring.sql<Array<{ source: string }>>`select source from budget_usage_records`
  t.equal(swept?.source, 'expired-reservation', 'the sweeper counted it at its estimate')
  t.equal(expiring.logs.filter((line) => line.msg === 'the reservation had expired and was counted at its estimate before this settlement').length, 1, 'and the gate said so')
})

t.test('over-billing upstreams through leases on two gateway processes: every served call is recorded exactly once, streamed and JSON', async (t) => {
  const upstream = await startUpstream(t, { mode: modeFromPrompt('json'), chunkDelayMs: 1 })
  const url = await createTestDatabase(t)
  const sql = postgres(url, { onnotice: () => {} })
  t.teardown(async () => await sql.end())
  const processes: GatewayProcess[] = []
  for (let i = 0; i < 2; i++) {
    // 40 calls at once on two processes: on a loaded machine (CI runs this file on the Citus coordinator too),
    // the gate may wait past its 3 s for PostgreSQL and fail closed with a 503. The test is about the records.
    const gateway = await startGatewayProcess({ DATABASE_URL: url, ADMIN_TOKEN, UPSTREAM_URL: upstream.url, GATE_TIMEOUT_MS: '20000' })
    processes.push(gateway)
    t.teardown(async () => await gateway.stop())
  }
  const create = async (body: Record<string, unknown>) => (await (await fetch(`${processes[0]!.url}${PREFIX}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ currency: 'USD', period: 'monthly', startDate: '2024-01-01', ...body })
  })).json() as { id: string }).id
  const org = await create({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '100' })
  await create({ name: 'team', scopeType: 'team', scopeId: 'platform', amount: '50', parentId: org })

  let leaseRowsSeen = 0
  let loading = true
  const watching = (async () => {
    while (loading) {
      const [row] = await sql<Array<{ n: number }>>`select count(*)::int as n from budget_reservations where lease`
      leaseRowsSeen = Math.max(leaseRowsSeen, row!.n)
      await pause(20)
    }
  })()
  const modes: UpstreamMode[] = ['json-over-limit', 'sse-over-limit', 'json-pricier', 'sse-pricier']
  const outcomes: Array<{ mode: UpstreamMode, served: boolean, status: number }> = []
  for (let wave = 0; wave < 4; wave++) {
    outcomes.push(...await Promise.all(Array.from({ length: 40 }, async (_, i) => {
      const mode = modes[i % modes.length]!
      const stream = mode.startsWith('sse')
      const response = await fetch(`${processes[i % 2]!.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-relay-team-id': 'platform', 'x-relay-organization-id': 'acme' },
        body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: `${modeMarker(mode)} call ${wave}-${i}` }], max_tokens: 40, stream })
      })
      const text = await response.text()
      const served = response.status === 200 && (stream ? text.includes('data: [DONE]') : (JSON.parse(text) as { usage?: unknown }).usage !== undefined)
      return { mode, served, status: response.status }
    })))
  }
  loading = false
  await watching
  t.ok(leaseRowsSeen > 0, `calls were admitted from leases (${leaseRowsSeen} lease rows seen at most)`)
  t.same(outcomes.filter((outcome) => !outcome.served), [], 'every call was served')
  // Leases idle for 2 s are given back whole, their rows ended once their calls have settled.
  const unsettled = await waitForSettled(sql, 30_000).then(() => null, (error: Error) => error.message)
  t.equal(unsettled, null, 'every hold and lease ended')

  const records = await sql<Array<{ requestId: string, model: string, output: number }>>`
    select metadata ->> 'requestId' as "requestId", metadata ->> 'modelId' as model, (metadata ->> 'outputTokens')::int as output
    from budget_usage_records where source = 'gateway'`
  t.equal(records.length, outcomes.filter((outcome) => outcome.served).length, 'usage records: exactly one per served call')
  t.equal(new Set(records.map((record) => record.requestId)).size, records.length, 'no call recorded twice')
  t.equal(records.filter((record) => record.output > 40).length, outcomes.filter((outcome) => outcome.mode.endsWith('over-limit')).length,
    'each call billed past max_tokens was charged for all of it')
  t.equal(records.filter((record) => record.model === 'gpt-4o').length, outcomes.filter((outcome) => outcome.mode.endsWith('pricier')).length,
    'each call answered by gpt-4o was charged at gpt-4o')
  const [others] = await sql<Array<{ n: number }>>`select count(*)::int as n from budget_usage_records where source <> 'gateway'`
  t.equal(others!.n, 0, 'nothing was left to the sweeper')
  t.same(await findViolations(sql), [], 'no hold left, every window equals its allocations, no hard budget over')
})

t.test('a hard monthly budget changed to daily with holds and a lease in flight: they carry over to the daily window, which stays within its limit', async (t) => {
  const { app, sql, createBudget } = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const budget = await createBudget({ scopeId: 'team-a', amount: '0.003', period: 'monthly' })
  const caller = { team: 'team-a' }
  const integration = app.budgetIntegration
  // Before the change: one call holding its own reservation, then small calls until five are admitted from
  // a lease (the line is hot). Whether a call comes close enough to the last to be leased depends on the
  // machine's load, so the calls that held their own reservation are counted from the rows, not assumed.
  const held = (await integration.reserveCall(caller, '0.0005')).reservationId!
  const leased: string[] = []
  let fromLease = 0
  while (fromLease < 5 && leased.length < 15) {
    const id = (await integration.reserveCall(caller, '0.00001')).reservationId
    t.not(id, null, 'a small call admitted')
    leased.push(id!)
    const [own] = await sql<Array<{ n: number }>>`select count(*)::int as n from budget_reservations where id = ${id}`
    if (own!.n === 0) fromLease++
  }
  t.ok(fromLease > 0, `${fromLease} of ${leased.length} small calls admitted from a lease`)
  const [before] = await sql<Array<{ leases: number, holds: number }>>`
    select count(distinct id) filter (where lease)::int as leases, count(distinct id) filter (where not lease)::int as holds from budget_reservations`
  t.same(before, { leases: 1, holds: 1 + leased.length - fromLease }, 'one lease, and the holds of the calls that held their own')

  const changed = await app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: { period: 'daily' } })
  t.equal(changed.statusCode, 200)
  await pause(150) // the line is no longer hot: the next calls hold one by one
  // After it: calls take the daily window's room, as long as there is any.
  const after: string[] = []
  for (let i = 0; i < 10; i++) {
    const reserved = await integration.reserveCall(caller, '0.0005')
    if (reserved.reservationId !== null) after.push(reserved.reservationId)
  }
  // Then everything settles at its estimate.
  await integration.settleCall(held, '0.0005')
  for (const id of leased) await integration.settleCall(id, '0.00001')
  for (const id of after) await integration.settleCall(id, '0.0005')
  await app.close()

  t.same(await findViolations(sql), [], 'no hold left, every window equals its allocations, no hard budget over')
  const windows = await sql<Array<{ start: Date, end: Date, spent: string }>>`
    select period_start as start, period_end as "end", current_amount::text as spent from budget_status_cache where budget_id = ${budget.id}`
  t.equal(windows.length, 1, 'one window row: the monthly one is gone')
  t.equal(windows[0]!.end.getTime() - windows[0]!.start.getTime(), 86_400_000, 'a daily window')
  t.ok(compareMoney(windows[0]!.spent, '0.003') <= 0, `spent ${windows[0]!.spent} of 0.003`)
  // Carried over: 0.0005, the lease (at most a slice of 0.0003125, an eighth of the room) and at most 15 small
  // calls of 0.00001 leave at least 0.0020375, and at most 0.00235: four calls of 0.0005, never five.
  t.equal(after.length, 4, 'the calls after the change had the room the carried holds left: four of 0.0005')
})

t.test('a hold that still meets deadlocks after its retries is answered 503 unavailable, never 500', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  await gateway.createBudget({ scopeId: 'team-a', amount: '100' })
  // Every new reservation row meets a deadlock: PostgreSQL raising 40P01, as it does to the statement it kills.
  await gateway.sql.unsafe(`
    create function meet_deadlock() returns trigger language plpgsql as $$
    begin
      raise exception 'deadlock detected (test)' using errcode = '40P01';
    end $$`)
  await gateway.sql.begin(async (tx) => {
    // on Citus a trigger on a distributed table runs on its shards: allowed once asked for (the distribution step
    // sets it for the database's later sessions, which the gateway's open connections are not)
    if (await onCitus(tx)) await tx`set local citus.enable_unsafe_triggers = on`
    await tx`create trigger meet_deadlock before insert on budget_reservations for each row execute function meet_deadlock()`
  })
  const answers = await Promise.all(Array.from({ length: 4 }, async () => {
    const response = await gateway.call({ team: 'team-a' })
    return `${response.statusCode} ${(response.json() as { error?: { code?: string } }).error?.code}`
  }))
  t.same([...new Set(answers)], ['503 budget_unavailable'], 'each call: 503 budget_unavailable')
  await gateway.sql.begin(async (tx) => {
    // as above: a pooled connection opened before the distribution step does not have the setting
    if (await onCitus(tx)) await tx`set local citus.enable_unsafe_triggers = on`
    await tx`drop trigger meet_deadlock on budget_reservations`
  })
  t.equal((await gateway.call({ team: 'team-a' })).statusCode, 200, 'and served once the deadlocks stop')
})

t.test('any change of a budget\'s window carries its live holds and leases: a time zone, then a start date and alignment, then a custom period', async (t) => {
  const { app, sql, createBudget } = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const budget = await createBudget({ scopeId: 'team-a', amount: '1', period: 'daily' })
  const caller = { team: 'team-a' }
  const integration = app.budgetIntegration
  const changes = [
    { timezone: 'Pacific/Kiritimati' },
    { startDate: '2024-03-15T07:30:00Z', periodAlignment: 'calendar', period: 'weekly' },
    { period: 'custom', startDate: '2024-01-01T00:00:00Z', endDate: '2024-01-04T05:00:00Z' }
  ]
  for (const change of changes) {
    const inFlight: string[] = []
    inFlight.push((await integration.reserveCall(caller, '0.001')).reservationId!) // a hold of its own
    for (let i = 0; i < 3; i++) inFlight.push((await integration.reserveCall(caller, '0.0001')).reservationId!) // a lease (the line is hot)
    const response = await app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: change })
    t.equal(response.statusCode, 200, JSON.stringify(change))
    const late = (await integration.reserveCall(caller, '0.001')).reservationId // on the new window
    for (const id of [...inFlight, late]) if (id !== null) await integration.settleCall(id, '0.0001')
    const [held] = await sql<Array<{ rows: number }>>`select count(*)::int as rows from budget_reservations where not lease`
    t.equal(held!.rows, 0, 'every call settled')
    t.same((await findViolations(sql)).filter((violation) => !violation.startsWith('reservation ')), [], 'every window row equals its reservations and allocations')
    await pause(150)
  }
  await app.close()
  t.same(await findViolations(sql), [], 'and nothing is left once the leases are given back')
})
