// Budget lines across processes: a change committed through one app instance comes into force in another
// within the bound (VERSION_FRESH_MS), even while that one admits a hot line's calls from a lease in memory.
import Fastify from 'fastify'
import t from 'tap'
import type { Sql } from 'postgres'
import budgets from '../lib/index.js'
import { VERSION_FRESH_MS } from '../lib/gate/budget-lines.js'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { createTestSql } from './fixtures/database.js'
import { findViolations } from './fixtures/invariants.js'

async function instance (database: Sql | string) {
  const app = Fastify()
  await app.register(budgets, { database, adminToken: ADMIN_TOKEN, gate: { routes: [], sweepIntervalMs: 0 }, notifications: { intervalMs: 0 } })
  await app.ready()
  return app
}

t.test('a hard amount lowered through instance A stops instance B admitting from its lease once the bound has passed', async (t) => {
  const { url, sql } = await createTestSql(t)
  const a = await instance(sql)
  t.teardown(async () => await a.close())
  const b = await instance(url) // a client of its own: another process's pool
  let bClosed = false
  t.teardown(async () => { if (!bClosed) await b.close() })

  const created = await a.inject({ method: 'POST', url: PREFIX, headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    body: { name: 'team', scopeType: 'team', scopeId: 'team-a', amount: '100', currency: 'USD', period: 'monthly', startDate: '2024-01-01' } })
  const budget = created.json<{ id: string }>()
  const caller = { team: 'team-a' }

  // Calls close together make B's line hot: B takes a lease and admits the next calls from it in memory.
  const admitted: string[] = []
  for (let i = 0; i < 20; i++) {
    const reserved = await b.budgetIntegration.reserveCall(caller, '0.01')
    t.ok(reserved.check.canProceed, 'admitted before the change')
    admitted.push(reserved.reservationId!)
    const [leases] = await sql<Array<{ n: number }>>`select count(*)::int as n from budget_reservations where lease`
    if (leases!.n > 0) break
  }
  const [leases] = await sql<Array<{ n: number }>>`select count(*)::int as n from budget_reservations where lease`
  t.equal(leases!.n, 1, 'B holds a lease on the hot line')

  // A lowers the hard amount below one call's estimate; its answer comes once the change has committed.
  const changed = await a.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: { amount: '0.001' } })
  t.equal(changed.statusCode, 200)
  await new Promise((resolve) => setTimeout(resolve, VERSION_FRESH_MS + 20))

  // B ran no statement since: only a read of the version on its own can tell it.
  const after = await b.budgetIntegration.reserveCall(caller, '0.01')
  t.equal(after.check.canProceed, false, 'B refuses the next call: the new amount is in force there')
  t.equal(after.reservationId, null, 'and nothing is admitted from the old lease')
  if (after.reservationId !== null) admitted.push(after.reservationId)

  // Nothing was served (so no spend over the new amount): what the calls held goes back.
  for (const id of admitted) await b.budgetIntegration.releaseCall(id)
  await b.close()
  bClosed = true
  t.same(await findViolations(sql), [], 'the lease was given back; no reservation left, every window consistent')
})
