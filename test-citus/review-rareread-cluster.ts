// Review of fb798f9 on the Citus cluster (`npm run test:citus`): the two rare reads, each filtered by its line's
// trees, answer as the reads by id across every shard did, on test/fixtures/two-tree-cluster.ts's line (a user
// budget that is its own root; a team under an organization): the call's own record in the first tree the
// settlement names and in the second, a sweeper's record, and a lease held, drawn, given back and swept.
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { createLeaseRepository } from '../lib/gate/lease-repository.js'
import { createSettlementRepository, type RecordOrigin } from '../lib/gate/settlement-repository.js'
import { BOTH, LINE, ORG, TEAM, USER, twoTreeStatements } from '../test/fixtures/two-tree-cluster.js'

type Sql = Awaited<ReturnType<typeof twoTreeStatements>>['sql']

async function findSettledBefore (sql: Sql, origin: RecordOrigin, usageId: string) {
  const [row] = await sql<Array<{ usageId: string, own: boolean, swept: boolean }>>`
    select id as "usageId", id = ${usageId}::uuid as own, source = 'expired-reservation' as swept from budget_usage_records
    where id = ${usageId}::uuid or (idempotency_key = ${origin.requestId} and budget_id = any (${origin.budgetIds}::text[]::uuid[]))
    order by id = ${usageId}::uuid desc, recorded_at, id limit 1`
  return row ?? null
}

t.test('on the cluster, the reads with the line\'s trees answer as the reads across every shard did', async (t) => {
  const w = await twoTreeStatements(t)
  const { sql } = w
  const settlements = createSettlementRepository(sql)
  const leases = createLeaseRepository(sql)
  t.same(BOTH, [ORG, USER], 'the organization\'s tree first')
  for (const { on, root } of [{ on: LINE, root: USER }, { on: [TEAM, ORG], root: ORG }]) {
    const reservationId = randomUUID()
    const usageId = randomUUID()
    t.ok(await w.hold(reservationId, '1', on))
    await sql`select * from budget_settle_batch(array[${reservationId}]::uuid[], array['0.5']::numeric[], array['gateway'], array['call'], array['{}'::jsonb],
                                               array[${usageId}]::uuid[], ${BOTH}::uuid[], ${BOTH[0]!}::uuid)`
    t.equal((await sql`select root_id::text as r from budget_usage_records where id = ${usageId}`)[0]?.r, root, `recorded in ${root === USER ? 'the second' : 'the first'} tree`)
    const origin = { requestId: `req-${reservationId}`, budgetIds: LINE }
    const found = await settlements.findSettledRecord(origin, usageId, BOTH)
    t.same(found, { usageId, own: true, swept: false }, 'its own record')
    t.same(found, await findSettledBefore(sql, origin, usageId), 'as the read across every shard')
    // the retry of another call of the request: the first's record, another's
    const other = await settlements.findSettledRecord(origin, randomUUID(), BOTH)
    t.match(other, { usageId, own: false, swept: false })
  }
  // a hold expired and swept tree by tree (the sweeper's byTree path): the sweeper's record
  const swept = randomUUID()
  t.ok(await w.hold(swept, '1', LINE))
  await sql`update budget_reservations set expires_at = now() - interval '1 second' where id = ${swept}`
  for (const tree of BOTH) await sql`select budget_sweep_trees(100, ${[tree]}::uuid[], ${tree}::uuid)`
  const origin = { requestId: `req-${swept}`, budgetIds: LINE }
  const lost = randomUUID()
  const found = await settlements.findSettledRecord(origin, lost, BOTH)
  t.match(found, { own: false, swept: true }, 'the sweeper\'s record')
  t.same(found, await findSettledBefore(sql, origin, lost))

  const lease = randomUUID()
  t.ok(await w.takeLease(lease, '1', BOTH) !== null)
  t.equal(await leases.leaseHeld(lease, BOTH), true, 'held')
  await w.settleLeased(lease, randomUUID(), '5', BOTH)
  t.equal(await leases.leaseHeld(lease, BOTH), true, 'drawn to nothing: still held')
  await w.returnLease(lease, '0', true, 1, BOTH)
  t.equal(await leases.leaseHeld(lease, BOTH), false, 'given back')
  const expired = randomUUID()
  t.ok(await w.takeLease(expired, '1', BOTH) !== null)
  await sql`update budget_reservations set expires_at = now() - interval '1 second' where id = ${expired}`
  for (const tree of BOTH) await sql`select budget_sweep_trees(100, ${[tree]}::uuid[], ${tree}::uuid)`
  t.equal(await leases.leaseHeld(expired, BOTH), false, 'swept')
  t.same(await w.broken(), [], 'the windows agree with the records')
})
