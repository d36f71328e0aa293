// Adversarial review 3 of the gate's changes since 8326282 (group-commit, the part lifecycle, terms and
// numbers, deferred version bumps). Each subtest reproduces one defect it found, now fixed.
import Fastify from 'fastify'
import postgres from 'postgres'
import t from 'tap'
import budgets from '../lib/index.js'
import { ADMIN_TOKEN } from './fixtures/app.js'
import { createTestDatabase } from './fixtures/database.js'
import { buildGateway } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'
import { stillClock } from './fixtures/still-clock.js'

type Settled<T> = { ok: true, value: T } | { ok: false, error: { code?: string, statusCode?: number, message?: string } }
const settle = async <T>(promise: Promise<T>): Promise<Settled<T>> =>
  await promise.then((value) => ({ ok: true as const, value }), (error) => ({ ok: false as const, error }))

// A library caller's request id that PostgreSQL cannot store (a NUL: 22021). The registry refuses such ids with
// a 400 since 26594f2; the gate's reserveCall takes it as given.
const UNSTORABLE_REQUEST_ID = 'request\u0000id'

t.test('a request id PostgreSQL cannot store fails only its own hold, never the calls batched with it', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  await gateway.createBudget({ name: 'team', scopeId: 'platform', amount: '100' })
  const integration = gateway.app.budgetIntegration
  // Each caller's first call: a line that was never called is not hot, so every call is held (no lease), and the
  // calls that reach the hold queue while its first batch is in PostgreSQL go in one batch together.
  const caller = (i: number) => ({ team: 'platform', user: `user-${i}` })
  const good = Array.from({ length: 16 }, (_, i) => settle(integration.reserveCall(caller(i), '0.01')))
  const bad = settle(integration.reserveCall(caller(99), '0.01', { requestId: UNSTORABLE_REQUEST_ID }))
  const results = await Promise.all(good)
  const badResult = await bad
  const failed = results.flatMap((result) => result.ok ? [] : [result.error.code ?? result.error.message])
  t.same(failed, [], 'every well-formed call is answered, whoever shared its batch')
  t.equal(badResult.ok ? 'admitted' : badResult.error.statusCode, 400, 'the bad request id is refused as bad input (a 4xx), not a database error')
  for (const result of results) if (result.ok && result.value.reservationId !== null) await integration.settleCall(result.value.reservationId, '0.01')
  await gateway.settled()
  await checkInvariants(t, gateway.sql)
})

t.test('a call admitted from a lease under a request id PostgreSQL cannot store: refused up front, not left unsettled', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const team = await gateway.createBudget({ name: 'team', scopeId: 'platform', amount: '100' })
  const integration = gateway.app.budgetIntegration
  const caller = { team: 'platform' }
  // Two calls make the line hot: the next is admitted from its lease (the clock stands still for their work).
  const still = stillClock(t)
  for (let i = 0; i < 2; i++) {
    const warm = await still(async () => await integration.reserveCall(caller, '0.01'))
    await still(async () => await integration.settleCall(warm.reservationId!, '0.01'))
  }
  const reserved = await settle(integration.reserveCall(caller, '0.01', { requestId: UNSTORABLE_REQUEST_ID }))
  if (reserved.ok && reserved.value.reservationId !== null) {
    const ended = await settle(integration.settleCall(reserved.value.reservationId, '0.01'))
    t.ok(ended.ok, `the admitted call's settlement records its cost (${ended.ok ? 'ok' : ended.error.code ?? ''})`)
  } else {
    t.equal(reserved.ok ? 'not admitted' : reserved.error.statusCode, 400, 'refused as bad input (a 4xx)')
  }
  await gateway.app.close() // gives the lease back: whatever stays is swept at its TTL and counted as spend
  const served = reserved.ok && reserved.value.reservationId !== null ? 3 : 2
  t.equal((await gateway.sql`select count(*)::int as n from budget_usage_records where budget_id = ${team.id}`)[0]!.n, served, `the ${served} served calls are recorded`)
  await checkInvariants(t, gateway.sql)
})

t.test('an unbudgeted call\'s record under a request id PostgreSQL cannot store is refused as bad input, not lost', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const integration = gateway.app.budgetIntegration
  // Queued behind a first record, the bad one shares a batch with a good one: the batch fails, each goes alone.
  const first = settle(integration.recordUnbudgetedCall('0.1', { requestId: 'first' }))
  const bad = settle(integration.recordUnbudgetedCall('0.1', { requestId: UNSTORABLE_REQUEST_ID }))
  const good = settle(integration.recordUnbudgetedCall('0.1', { requestId: 'good' }))
  t.ok((await first).ok && (await good).ok, 'the well-formed records are stored')
  const badResult = await bad
  t.equal(badResult.ok ? 'stored' : badResult.error.statusCode, 400, 'refused with a 4xx before it is queued (it ends as PostgreSQL\'s 22021, logged as spend not in the ledger)')
  await checkInvariants(t, gateway.sql)
})

t.test('a plugin whose registration fails after its database opened closes the client it opened', async (t) => {
  const url = await createTestDatabase(t)
  const observer = postgres(url, { max: 1 })
  t.teardown(async () => await observer.end())
  const connections = async (name: string) => Number((await observer`select count(*) from pg_stat_activity where application_name = ${name}`)[0]!.count)
  const first = `budgets-first-${process.pid}`
  const second = `budgets-second-${process.pid}`
  const app = Fastify()
  // The second registration opens (and migrates through) its own client, then fails at its decorations.
  app.register(budgets, { database: `${url}?application_name=${first}`, adminToken: ADMIN_TOKEN })
  app.register(budgets, { database: `${url}?application_name=${second}`, adminToken: ADMIN_TOKEN })
  await t.rejects(async () => await app.ready(), { code: 'FST_ERR_DEC_ALREADY_PRESENT' }, 'the premise: the second registration fails')
  await app.close()
  t.equal(await connections(first), 0, 'the first instance\'s client is closed')
  t.equal(await connections(second), 0, 'the failed instance\'s client is closed too (its database part was never stopped)')
})

