// Review of 14647b9 (the sweeper settles only reservations whose every row it locked, SKIP LOCKED, tree by
// tree): a reservation one of whose trees another transaction holds (a renewal or a return of a lease half
// way through its tree-by-tree locks; a stuck transaction), and what p_limit and the return value mean then.
import t from 'tap'
import { findViolations } from './fixtures/invariants.js'
import { twoTreeLine } from './fixtures/two-trees.js'

const LEASE = '11111111-1111-4111-8111-111111111111'

t.test('a lease renewed while swept, its first tree locked by the renewal: not swept, not deadlocked, renewed', async (t) => {
  const { sql, expiredLease, roots } = await twoTreeLine(t, 3)
  t.equal((await expiredLease(LEASE)).length, 3, 'an expired lease on the three budgets')
  const [first] = await roots(LEASE) as [string, string]
  const outcome = await sql.begin(async (tx) => {
    // the renewal on Citus: the first tree's statement has locked its rows, the second's has not run yet
    await tx`select 1 from budget_reservations where id = ${LEASE} and root_id = ${first} order by id, budget_id for update`
    const started = Date.now()
    const swept = (await sql`select budget_sweep_expired(100) as n`)[0]!.n as number
    const waited = Date.now() - started
    // the renewal goes on: the rest of its locks, then the update
    await tx`set local lock_timeout = '3s'`
    const locked = (await tx`select budget_lock_reservations(array[${LEASE}]::uuid[]) as n`)[0]!.n as number
    await tx`update budget_reservations set expires_at = now() + interval '1 minute' where id = ${LEASE}`
    return { swept, waited, locked }
  })
  t.equal(outcome.swept, 0, 'the sweeper leaves the lease it could not lock whole')
  t.ok(outcome.waited < 1000, `and waits for nothing (${outcome.waited} ms)`)
  t.equal(outcome.locked, 3, 'the renewal then locks every row: the sweeper holds none of them any more')
  t.equal((await sql`select budget_sweep_expired(100) as n`)[0]!.n, 0, 'renewed: not expired')
  t.equal((await sql`select count(*)::int as n from budget_usage_records`)[0]!.n, 0, 'nothing counted')
  await sql`select budget_lease_return(${LEASE}, 0, true, 1)`
  t.same(await findViolations(sql), [], 'invariants')
})

t.test('a lease returned while swept, the sweeper first in its second tree: one of them ends it, once', async (t) => {
  const { sql, expiredLease, roots } = await twoTreeLine(t, 3)
  await expiredLease(LEASE)
  const [, second] = await roots(LEASE) as [string, string]
  // the sweeper holds the second tree's row (as a sweeper that met it there first); the return waits on it
  const returned = sql.begin(async (tx) => {
    await tx`select 1 from budget_reservations where id = ${LEASE} and root_id = ${second} for update`
    await new Promise((resolve) => setTimeout(resolve, 300))
    return (await tx`select budget_sweep_expired(100) as n`)[0]!.n as number
  })
  await new Promise((resolve) => setTimeout(resolve, 100))
  const ret = sql`select budget_lease_return(${LEASE}, 0, true, 1)`.then(() => null, (error: { code: string }) => error.code)
  const [swept, returnError] = await Promise.all([returned, ret])
  t.equal(returnError, null, 'the return does not fail (no deadlock, no lock timeout)')
  const records = (await sql`select count(*)::int as n from budget_usage_records`)[0]!.n as number
  t.equal(records, swept, `swept ${swept}: counted as spent exactly when swept`)
  t.same(await findViolations(sql), [], 'invariants')
})
