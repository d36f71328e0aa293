// Review: budget_burn_rate (now PL/pgSQL) answers as the SQL-language definition before it did, on random inputs.
import t from 'tap'
import fc from 'fast-check'
import { PREFIX, budgetRequest, buildApp } from './fixtures/app.js'

t.test('budget_burn_rate equals the previous definition', async (t) => {
  const { admin, sql } = await buildApp(t)
  const ids: string[] = []
  for (const startDate of ['2024-01-01', '2026-11-20T13:00:00Z', '2027-03-01']) {
    const response = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ name: startDate, scopeId: startDate, startDate }) })
    ids.push(response.json().id)
  }
  ids.push('00000000-0000-0000-0000-0000000000aa')
  await sql.begin(async (tx) => {
    // the definition at HEAD, under another name
    await tx.unsafe(`create function pg_temp.burn_rate_before(p_budget_id uuid, p_period_start timestamptz, p_period_end timestamptz, p_current numeric, p_at timestamptz)
      returns numeric language sql stable as $$
        select case when p_at < s.start_at then 0
                    else div(round(p_current * 10000000000) * 86400000000 * 2 + e.elapsed_us, e.elapsed_us * 2) * 0.0000000001 end
        from budget_definitions d
        cross join lateral (select greatest(p_period_start, d.start_date) as start_at) s
        cross join lateral (select budget_burn_elapsed_us(s.start_at, least(p_at, p_period_end)) as elapsed_us) e
        where d.id = p_budget_id
      $$`)
    const base = Date.parse('2026-12-01T00:00:00Z')
    const instant = fc.option(fc.integer({ min: -40 * 86400, max: 120 * 86400 }).map((s) => new Date(base + s * 1000).toISOString()), { nil: null, freq: 8 })
    let compared = 0
    await fc.assert(fc.asyncProperty(fc.constantFrom(...ids), instant, instant, instant,
      fc.option(fc.oneof(fc.integer({ min: 0, max: 10 ** 6 }).map(String), fc.constantFrom('0.0000000001', '999999999999999999.9999999999', '12.34567890125', '-5')), { nil: null, freq: 10 }),
      async (id, start, end, at, current) => {
        const [row] = await tx`select budget_burn_rate(${id}, ${start}, ${end}, ${current}::numeric, ${at})::text as now,
                                      pg_temp.burn_rate_before(${id}, ${start}, ${end}, ${current}::numeric, ${at})::text as before`
        compared++
        if (row!.now !== row!.before) { t.same(row!.now, row!.before, JSON.stringify({ id, start, end, at, current })); return false }
        return true
      }), { numRuns: 400, seed: 3 })
    t.equal(compared, 400)
    const [some] = await tx`select budget_burn_rate(${ids[0]!}, '2026-12-01', '2027-01-01', 31, '2026-12-11')::text as rate`
    t.equal(some!.rate, '3.1000000000', 'a real value')
  })
})
