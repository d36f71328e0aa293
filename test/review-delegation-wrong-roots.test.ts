// Review of 2d6ae2f (the gate's statements name their trees, p_roots): what each SQL function does when the
// trees it is told are not the trees of the rows it touches (a tree left out, a tree that is not the line's,
// an empty array, a null, duplicates), called directly. The money invariants must hold whatever a caller
// names: no hard budget over its limit, every window's reserved_amount its live reservations, the call's cost
// on every budget of its line (an over-count left to the sweeper is acceptable; an under-count is not).
// The line is test/fixtures/two-trees.ts: a user budget that is its own root, and a team under an organization.
// On plain PostgreSQL a settlement, a lease's return and its renewal read the trees from the reservation's rows,
// whatever they are told (budget_reservation_trees, sql/functions/locks.sql); test-citus/review-delegation-wrong-roots.ts
// covers the cluster, where the trees told are checked against the rows' own list.
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { twoTreeCalls } from './fixtures/two-tree-calls.js'

const setUp = twoTreeCalls


t.test('budget_lease_take told only the user\'s tree: no lease past the team\'s and organization\'s room', async (t) => {
  const s = await setUp(t)
  // another call holds 96 on the team and organization (hard, 100): 4 is left there
  t.ok((await s.hold(randomUUID(), '96', [s.team, s.org]))[0]!.fits, 'the 96 is held')
  const lease = randomUUID()
  const granted = await s.takeLease(lease, '8', [s.U])
  const n = await s.numbers()
  t.comment(`granted ${String(granted)}; numbers ${JSON.stringify(n)}`)
  t.same(await s.broken(), [], 'every window\'s reserved_amount is its live reservations after the take')
  // the leased call spends its slice; then the 96 settles at 96
  if (granted !== null) await s.settleLeased(lease, 'r1', granted, [s.U, s.O])
  await s.returnLease(lease, '0', true, 1, [s.U, s.O])
  await s.settle((await s.sql`select id from budget_reservations where not lease limit 1`)[0]!.id, '96', [s.O])
  t.same(await s.broken(), [], 'no hard budget over its limit once the calls settle')
})

t.test('budget_lease_take told a tree that is not the line\'s: no lease past any limit', async (t) => {
  const s = await setUp(t)
  const lease = randomUUID()
  const granted = await s.takeLease(lease, '1000', [randomUUID()])
  t.comment(`granted ${String(granted)}; numbers ${JSON.stringify(await s.numbers())}`)
  t.equal(granted, null, 'no lease past a hard budget of 100')
  if (granted !== null) {
    await s.settleLeased(lease, 'r1', granted, [s.U, s.O])
    await s.returnLease(lease, '0', true, 1, [s.U, s.O])
  }
  t.same(await s.broken(), [], 'no hard budget over its limit')
})

t.test('budget_settle_leased told only the user\'s tree, then the lease returned whole: the call counts on every budget of its lease', async (t) => {
  const s = await setUp(t)
  const lease = randomUUID()
  t.equal(await s.takeLease(lease, '8', [s.U, s.O]), '8', 'a slice of 8 on the three')
  const [settled] = await s.settleLeased(lease, 'r1', '5', [s.U])
  t.ok(settled!.lease_found && settled!.usage_id !== null, 'the call is answered as recorded')
  await s.returnLease(lease, '0', true, 1, [s.U, s.O])
  const n = await s.numbers()
  t.same(await s.broken(), [], 'invariants')
  t.same({ user: n.user!.current, team: n.team!.current, org: n.org!.current }, { user: '5', team: '5', org: '5' },
    'the call\'s 5 counts on every budget of its lease')
})

t.test('budget_settle_leased told none of the lease\'s trees: the lease is found, and each call counted', async (t) => {
  const s = await setUp(t)
  for (const roots of [[], [randomUUID()]]) {
    const lease = randomUUID()
    t.equal(await s.takeLease(lease, '8', [s.U, s.O]), '8', 'a slice of 8')
    const [settled] = await s.settleLeased(lease, `r-${lease}`, '5', roots)
    t.comment(`${JSON.stringify(roots)}: ${JSON.stringify(settled)}`)
    // lease_found false is documented as "the lease expired and was swept, counting the call at its estimate"
    const rows = Number((await s.sql`select count(*) from budget_reservations where id = ${lease}`)[0]!.count)
    t.ok(settled!.lease_found || rows === 0, `${JSON.stringify(roots)}: a lease answered as not found is gone (swept), not live`)
    // a process told its call's lease was swept keeps nothing of it, and ends the lease with its final return (leases.ts end())
    await s.returnLease(lease, '0', true, 1, [s.U, s.O])
  }
  const n = await s.numbers()
  t.same(await s.broken(), [], 'invariants')
  t.same({ user: n.user!.current, team: n.team!.current, org: n.org!.current }, { user: '10', team: '10', org: '10' },
    'the two calls of 5 count on every budget (at their cost, or their lease\'s slice when swept)')
})

t.test('budget_settle_batch told only the user\'s tree: the trees are read from the rows, and the call is recorded once at its cost on every budget', async (t) => {
  const s = await setUp(t)
  const id = randomUUID()
  t.ok((await s.hold(id, '1'))[0]!.fits, 'held 1 on the three')
  const [row] = await s.settle(id, '5', [s.U])
  t.ok(row?.usage_id, 'answered as recorded')
  t.same(await s.roots(id), [], 'no row of the reservation is left, in either tree')
  t.equal(await s.sweepAll(), 0, 'nothing to sweep')
  const n = await s.numbers()
  const records = await s.sql`select budget_id, amount::text, source from budget_usage_records where idempotency_key = ${`req-${id}`} order by source`
  t.comment(JSON.stringify({ n, records }))
  t.same(await s.broken(), [], 'invariants')
  t.equal(records.length, 1, 'the call recorded once')
  t.same({ team: n.team!.current, org: n.org!.current }, { team: '5', org: '5' }, 'its actual cost on the team and organization')
})

t.test('budget_settle_batch with an empty, null, wrong or duplicated p_roots: each call settled once, in both trees', async (t) => {
  const s = await setUp(t)
  for (const roots of [[], [null], [randomUUID()]] as Array<Array<string | null>>) {
    const id = randomUUID()
    await s.hold(id, '1')
    const rows = await s.settle(id, '1', roots as string[])
    t.equal(rows.length === 1 && rows[0]!.usage_id !== null, true, `${JSON.stringify(roots)}: found and recorded`)
    t.equal((await s.roots(id)).length, 0, `${JSON.stringify(roots)}: no row of the hold is left`)
  }
  const id = randomUUID()
  await s.hold(id, '1')
  const rows = await s.settle(id, '2', [s.O, s.U, s.O, s.U])
  t.equal(rows.length, 1, 'duplicates: settled once')
  t.equal(await s.sweepAll(), 0, 'nothing left to sweep')
  t.same(await s.broken(), [], 'invariants')
  const n = await s.numbers()
  t.same({ user: n.user!.current, team: n.team!.current, org: n.org!.current }, { user: '5', team: '5', org: '5' }, 'three settled at 1, one at 2')
})

t.test('budget_lease_return told one tree, then sent again with both under the same number: applied once on every row', async (t) => {
  const s = await setUp(t)
  const lease = randomUUID()
  t.equal(await s.takeLease(lease, '8', [s.U, s.O]), '8', 'a slice of 8')
  await s.returnLease(lease, '3', false, 1, [s.U])
  await s.returnLease(lease, '3', false, 1, [s.U, s.O]) // the same return, sent again
  const amounts = await s.sql`select d.name, trim_scale(r.amount)::text as amount from budget_reservations r join budget_definitions d on d.id = r.budget_id order by d.name`
  t.same(Object.fromEntries(amounts.map((r) => [r.name, r.amount])), { org: '5', team: '5', user: '5' }, 'return number 1 applied once on every row')
  // the process believes it holds 5, and so do the rows: no other call gets that room
  t.notOk((await s.hold(randomUUID(), '98', [s.user]))[0]!.fits, 'a call of 98 on the user does not fit beside the lease\'s 5')
  await s.settleLeased(lease, 'r1', '5', [s.U, s.O])
  await s.returnLease(lease, '0', true, 2, [s.U, s.O])
  t.same(await s.broken(), [], 'no hard budget over its limit')
  t.equal(await s.sweepAll(), 0, 'nothing left to sweep')
})

t.test('budget_lease_renew told one tree: every row of the lease is renewed', async (t) => {
  const s = await setUp(t)
  const lease = randomUUID()
  t.equal(await s.takeLease(lease, '8', [s.U, s.O]), '8', 'a slice of 8')
  await s.sql`update budget_reservations set expires_at = now() - interval '1 second' where id = ${lease}`
  const [renewed] = await s.sql`select budget_lease_renew(${lease}, '1 hour'::interval, ${[s.U]}::uuid[]) as alive`
  t.ok(renewed!.alive, 'renewed (on the user\'s tree)')
  const left = await s.sql`select d.name from budget_reservations r join budget_definitions d on d.id = r.budget_id where r.expires_at < now() order by 1`
  t.same(left.map((r) => r.name), [], 'the organization tree\'s rows were renewed too')
  t.comment(`swept: ${String((await s.sql`select budget_sweep_expired(100) as n`)[0]!.n)}`)
  // the lease's call, then its final return: every budget counts at least the call
  await s.settleLeased(lease, 'r1', '5', [s.U, s.O])
  await s.returnLease(lease, '0', true, 1, [s.U, s.O])
  await s.sweepAll()
  const n = await s.numbers()
  t.same(await s.broken(), [], 'invariants')
  const [under] = await s.sql`select count(*)::int as n from budget_status_cache where current_amount < 5`
  t.equal(under!.n, 0, `no budget under the call's 5: ${JSON.stringify(n)}`)
})

t.test('rate take and give-back with wrong, partial, null or short p_roots', async (t) => {
  const s = await setUp(t)
  await s.sql`update budget_definitions set rate_requests_per_minute = 10`
  const take = async (roots: Array<string | null> | null) => await s.sql<Array<{ budget_id: string, granted_requests: string }>>`
    select budget_id, granted_requests::text from budget_rate_take(${s.budgets}::uuid[], array[1, 1, 1]::numeric[], array[0, 0, 0]::numeric[],
      array[1, 1, 1]::numeric[], array[0, 0, 0]::numeric[], ${roots}::uuid[]) order by budget_id`
  t.equal((await take([s.U, null, s.O])).length, 3, 'a null root is read from the budget')
  t.equal((await take([s.U])).length, 1, 'a short p_roots: the budgets without a root are skipped (granted nothing, not taken)')
  t.equal((await take([randomUUID(), randomUUID(), randomUUID()])).length, 0, 'wrong roots: nothing taken')
  const buckets = await s.sql`select budget_id, requests::text from budget_rate_buckets order by budget_id`
  t.comment(JSON.stringify(buckets))
  // a give-back under wrong roots gives nothing: never past a minute's worth
  await s.sql`select budget_rate_give_back(${s.budgets}::uuid[], array[100, 100, 100]::numeric[], array[0, 0, 0]::numeric[], ${[randomUUID(), s.O, s.O]}::uuid[])`
  const after = await s.sql`select requests::numeric <= 10 as ok from budget_rate_buckets`
  t.ok(after.every((r) => r.ok), 'no bucket past a minute\'s worth')
})

t.test('budget_hold_batch told one tree, none, a null or a tree not the line\'s: nothing held (held)', async (t) => {
  const s = await setUp(t)
  for (const roots of [[s.U], [s.O], [], [null], [randomUUID()]] as Array<Array<string | null>>) {
    const id = randomUUID()
    t.notOk((await s.hold(id, '1', s.budgets, roots as string[]))[0]!.fits, `${JSON.stringify(roots)}: not reserved`)
    t.same(await s.roots(id), [], `${JSON.stringify(roots)}: no row`)
  }
  t.ok((await s.hold(randomUUID(), '1', s.budgets, [s.O, s.U, s.U]))[0]!.fits, 'duplicated roots: held')
  t.same(await s.broken(), [], 'invariants')
})

