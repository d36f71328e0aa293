// Review of fb798f9: the two rare reads, each now filtered by its line's trees (root_id = any (trees)), answer
// as the reads by id across every tree did (the version before, written out here as the reference), on a line
// that spans two trees (test/fixtures/two-trees.ts: a user budget that is its own root; a team under an
// organization) beside a third tree the line does not name. For the settlement's record: fast-check (a fixed
// seed) draws what else is stored under the call's request id (a usage API record, a sweeper's, another
// reservation's settlement, an unbudgeted record; on the line's budgets, on the third tree's, or on none),
// whether the call's own record committed, and which line (one tree or two, in either order) the settlement
// names. For the lease: every state a lease's rows are in (held, partly drawn, given back, swept, never taken),
// on lines of one tree and of two.
import { randomUUID } from 'node:crypto'
import fc from 'fast-check'
import t from 'tap'
import { createLeaseRepository } from '../lib/gate/lease-repository.js'
import { createSettlementRepository, type RecordOrigin } from '../lib/gate/settlement-repository.js'
import { twoTreeCalls } from './fixtures/two-tree-calls.js'

type Sql = Awaited<ReturnType<typeof twoTreeCalls>>['sql']

/** findSettledRecord as it was before fb798f9: by id, or by request id on the line's budgets, in every tree. */
async function findSettledBefore (sql: Sql, origin: RecordOrigin | undefined, usageId: string) {
  const { requestId, budgetIds } = origin ?? { requestId: null, budgetIds: [] }
  const [row] = await sql<Array<{ usageId: string, own: boolean, swept: boolean }>>`
    select id as "usageId", id = ${usageId}::uuid as own, source = 'expired-reservation' as swept from budget_usage_records
    where id = ${usageId}::uuid or (idempotency_key = ${requestId} and budget_id = any (${budgetIds}::text[]::uuid[]))
    order by id = ${usageId}::uuid desc, recorded_at, id limit 1`
  return row ?? null
}

/** leaseHeld as it was before fb798f9. */
async function leaseHeldBefore (sql: Sql, leaseId: string) {
  const [row] = await sql<Array<{ held: boolean }>>`select exists (select 1 from budget_reservations where id = ${leaseId} and lease) as held`
  return row?.held === true
}

/** The line's trees as treesOf makes them from budget_line's roots: distinct, sorted. */
async function treesOf (sql: Sql, budgets: string[]) {
  return (await sql<Array<{ root: string }>>`select distinct root_id::text as root from budget_definitions where id = any (${budgets}::text[]::uuid[]) order by 1`).map((r) => r.root)
}

async function world (t: Parameters<typeof twoTreeCalls>[0]) {
  const calls = await twoTreeCalls(t)
  const { sql } = calls
  const [other] = await sql<Array<{ id: string }>>`insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date, enforcement)
    values ('other', 'organization', 'globex', 100, 'USD', 'monthly', '2024-01-01', 'hard') returning id`
  return { ...calls, other: other!.id }
}

t.test('findSettledRecord with the line\'s trees answers as the read across every tree did', async (t) => {
  const w = await world(t)
  const { sql, user, team, org, other } = w
  const repository = createSettlementRepository(sql)
  const lines: Record<string, string[]> = { both: [user, team, org], organization: [team, org], user: [user] }
  const budgetOf = { user, team, org, other, none: null } as const
  const extra = fc.record({
    on: fc.constantFrom('user', 'team', 'org', 'other', 'none') as fc.Arbitrary<keyof typeof budgetOf>,
    source: fc.constantFrom('api', 'expired-reservation', 'gateway'),
    fingerprint: fc.boolean()
  })
  const seen = { own: 0, swept: 0, other: 0, none: 0, offLine: 0 }
  await fc.assert(fc.asyncProperty(
    fc.constantFrom('both', 'organization', 'user'),
    fc.constantFrom('none', 'most-specific', 'another-of-the-line'),
    fc.array(extra, { maxLength: 4 }),
    fc.boolean(),
    async (lineName, own, extras, withOrigin) => {
      const line = lines[lineName]!
      const requestId = `req-${randomUUID()}`
      const usageId = randomUUID()
      // what others stored under the request id first (a unique key that refuses one: it was not stored)
      for (const x of extras) {
        const budgetId = budgetOf[x.on]
        if (budgetId === null && x.source !== 'api') continue // only an unbudgeted call's record has no budget
        if (budgetId !== null && !line.includes(budgetId)) seen.offLine++
        await sql`insert into budget_usage_records (budget_id, amount, currency, source, metadata, idempotency_key, request_fingerprint, occurred_at)
          values (${budgetId}, 1, 'USD', ${x.source}, '{}', ${requestId}, ${x.fingerprint && x.source === 'api' ? 'fp' : null}, now())
          on conflict do nothing`
      }
      // the call's own record, as its settlement writes it: on the line's most specific budget (or another of its own)
      if (own !== 'none') {
        const on = own === 'most-specific' ? line[0]! : line[line.length - 1]!
        await sql`insert into budget_usage_records (id, budget_id, amount, currency, source, metadata, idempotency_key, occurred_at, allocated_by_settlement)
          values (${usageId}, ${on}, 1, 'USD', 'gateway', '{}', ${`own-${requestId}`}, now(), true)`
      }
      const origin = withOrigin ? { requestId, budgetIds: line } : undefined
      const trees = withOrigin ? await treesOf(sql, line) : undefined
      const before = await findSettledBefore(sql, origin, usageId)
      const now = await repository.findSettledRecord(origin, usageId, trees)
      if (JSON.stringify(now) !== JSON.stringify(before)) {
        throw new Error(`line ${lineName}, own ${own}, extras ${JSON.stringify(extras)}: ${JSON.stringify(now)} where the read across every tree found ${JSON.stringify(before)}`)
      }
      if (before === null) seen.none++
      else if (before.own) seen.own++
      else if (before.swept) seen.swept++
      else seen.other++
    }), { numRuns: 120, seed: 606 })
  t.comment(JSON.stringify(seen))
  t.ok(seen.own > 0 && seen.swept > 0 && seen.other > 0 && seen.none > 0 && seen.offLine > 0, `every answer met, and records off the line: ${JSON.stringify(seen)}`)
})

t.test('findSettledRecord of real settlements and sweeps on the two-tree line, the record in each tree', async (t) => {
  const w = await world(t)
  const { sql, user, team, org, U, O } = w
  const repository = createSettlementRepository(sql)
  const trees = await treesOf(sql, [user, team, org])
  const cases: Array<{ on: string[], root: string }> = [
    { on: [user, team, org], root: U }, // recorded on the user's budget, its own tree
    { on: [team, org], root: O } // recorded on the team's, in the organization's tree
  ]
  for (const { on, root } of cases) {
    // settled by the gate's statement, under the usage id the queue makes
    const settled = randomUUID()
    const usageId = randomUUID()
    t.ok((await w.hold(settled, '1', on))[0]!.fits)
    await sql`select * from budget_settle_batch(array[${settled}]::uuid[], array['0.5']::numeric[], array['gateway'], array['call'], array['{}'::jsonb],
                                               array[${usageId}]::uuid[], ${trees}::text[]::uuid[])`
    const found = await repository.findSettledRecord({ requestId: `req-${settled}`, budgetIds: [user, team, org] }, usageId, trees)
    t.same(found, { usageId, own: true, swept: false }, 'its own record')
    t.equal((await sql`select root_id::text as r from budget_usage_records where id = ${usageId}`)[0]!.r, root, 'in the tree expected')
    t.same(found, await findSettledBefore(sql, { requestId: `req-${settled}`, budgetIds: [user, team, org] }, usageId))
    // swept by another process: the settlement's own id is not there, the sweeper's record is
    const swept = randomUUID()
    t.ok((await w.hold(swept, '1', on, null, '-1 second'))[0]!.fits)
    t.equal(await w.sweepAll(), 1)
    const origin = { requestId: `req-${swept}`, budgetIds: [user, team, org] }
    const lost = randomUUID()
    const after = await repository.findSettledRecord(origin, lost, trees)
    t.match(after, { own: false, swept: true }, 'the sweeper\'s record')
    t.same(after, await findSettledBefore(sql, origin, lost))
  }
  t.same(await w.broken(), [], 'the windows agree with the records')
})

t.test('leaseHeld with the line\'s trees answers as the read across every tree did, in every state of the lease', async (t) => {
  const w = await world(t)
  const { sql, user, team, org } = w
  const leases = createLeaseRepository(sql)
  const settlements = createSettlementRepository(sql)
  const answers: string[] = []
  const check = async (lease: string, line: string[], state: string) => {
    const trees = await treesOf(sql, line)
    const now = await leases.leaseHeld(lease, trees)
    const before = await leaseHeldBefore(sql, lease)
    t.equal(now, before, `${state} (line of ${trees.length} tree${trees.length === 1 ? '' : 's'}): ${String(before)}`)
    answers.push(`${state}:${String(now)}`)
  }
  for (const line of [[user, team, org], [team, org], [user]]) {
    const trees = await treesOf(sql, line)
    const lease = randomUUID()
    await check(lease, line, 'never taken')
    t.ok(await w.takeLease(lease, '1', trees, line) !== null, 'taken')
    await check(lease, line, 'held')
    // a call drawn from it, past what it holds: its rows are drawn to 0 and stay
    await settlements.settleLeased([{ leaseId: lease, budgetIds: line, trees, requestId: randomUUID(), actualCost: '5', occurredAt: new Date(), source: 'gateway', description: null, metadata: {} }], 60_000)
    t.equal((await sql`select count(*)::int as n from budget_reservations where id = ${lease} and amount = 0`)[0]!.n, line.length, 'drawn to 0 on every row')
    await check(lease, line, 'drawn to nothing')
    await leases.returnLease(lease, trees, '0', true, 1)
    await check(lease, line, 'given back')
    const swept = randomUUID()
    t.ok(await w.takeLease(swept, '1', trees, line) !== null)
    t.equal(await w.sweepAll(), 1, 'swept')
    await check(swept, line, 'swept')
    // a hold (no lease) under the id: not a lease
    const hold = randomUUID()
    await w.hold(hold, '1', line)
    await check(hold, line, 'a hold, not a lease')
    await w.settle(hold, '0', null)
  }
  t.ok(answers.includes('held:true') && answers.includes('swept:false'), 'both answers met')
  t.same(await w.broken(), [], 'the windows agree with the records')
})
