// The sweeper takes expired reservations tree by tree (sql/functions/locks.sql): one whose line spans two
// trees is met in each, and must still be settled once, at its estimate, whatever limit cuts the rows.
import t from 'tap'
import { findViolations } from './fixtures/invariants.js'
import { twoTreeLine } from './fixtures/two-trees.js'

t.test('a hold on two trees, expired: swept once, at its estimate, on every budget', async (t) => {
  const { sql, budgets, expiredHold } = await twoTreeLine(t)
  const id = '11111111-1111-4111-8111-111111111111'
  t.ok((await expiredHold(id, '2.5'))[0]!.fits, 'held on the three budgets')
  t.equal((await sql`select count(distinct root_id)::int as n from budget_reservations where id = ${id}`)[0]!.n, 2, 'its rows are in two trees')
  t.equal((await sql`select budget_sweep_expired(100) as n`)[0]!.n, 1, 'one reservation swept')
  const records = await sql`select amount::text as amount, source from budget_usage_records`
  t.same(records.map((r) => [r.amount, r.source]), [['2.5000000000', 'expired-reservation']], 'one usage record, at the estimate')
  const spent = await sql`select budget_id, current_amount::text as current, reserved_amount::text as reserved from budget_status_cache`
  t.same(new Set(spent.map((r) => `${r.current as string}/${r.reserved as string}`)), new Set(['2.5000000000/0.0000000000']), 'each of the three windows spent it once, nothing held')
  t.equal(spent.length, budgets.length)
  t.same(await findViolations(sql), [], 'invariants')
})

t.test('a limit that takes only part of its rows: still one settlement of the whole reservation', async (t) => {
  const { sql, expiredHold } = await twoTreeLine(t)
  const ids = ['11111111-1111-4111-8111-111111111111', '22222222-2222-4222-8222-222222222222']
  for (const id of ids) t.ok((await expiredHold(id, '1'))[0]!.fits)
  // six rows in all (three a reservation); a limit of 1 meets one row of one reservation
  t.equal((await sql`select budget_sweep_expired(1) as n`)[0]!.n, 1, 'one reservation swept')
  t.equal((await sql`select count(*)::int as n from budget_reservations`)[0]!.n, 3, 'all of its rows gone, the other reservation\'s three left')
  t.equal((await sql`select budget_sweep_expired(100) as n`)[0]!.n, 1, 'the other swept next')
  t.equal((await sql`select count(*)::int as n from budget_usage_records`)[0]!.n, 2, 'one record each')
  t.same(await findViolations(sql), [], 'invariants')
})

t.test('a reservation another transaction holds is skipped, not waited for, in either tree', async (t) => {
  const { sql, expiredHold } = await twoTreeLine(t)
  const id = '11111111-1111-4111-8111-111111111111'
  await expiredHold(id, '1')
  await sql.begin(async (tx) => {
    await tx`select budget_lock_reservations(array[${id}]::uuid[])`
    // the other connection of the pool sweeps meanwhile
    t.equal((await sql`select budget_sweep_expired(100) as n`)[0]!.n, 0, 'nothing swept while its rows are locked')
  })
  t.equal((await sql`select budget_sweep_expired(100) as n`)[0]!.n, 1, 'swept once they are free')
  t.same(await findViolations(sql), [], 'invariants')
})
