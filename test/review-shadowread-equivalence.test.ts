// Review of d4156a1 (a shadow budget's as-if ledger read in its tree, budget_shadow_status_in_tree): on plain
// PostgreSQL every shadow budget's status (GET /:id/status, POST /:id/refresh-cache, the library) answers what
// the function before it answered (its body, as it was, run inline), and the wrapper the versions before call
// answers the same; at every depth of a tree, after moves within it, after switches to and from shadow, with
// 28-digit amounts, and for windows with no ledger row.
import t from 'tap'
import fc from 'fast-check'
import { buildApp, budgetRequest, postBudget, PREFIX } from './fixtures/app.js'

interface Shadow { asIfCurrentAmount: string, excludedAmount: string, counts: Array<{ code: string, outcome: string, calls: number }> }

/** The function before d4156a1, its body as it was: read by budget and window alone. */
const OLD_BODY = `
  select coalesce((select s.excluded_amount from budget_shadow_windows s where s.budget_id = $1 and s.period_start = $2), 0)::text as excluded,
         coalesce((select jsonb_agg(jsonb_build_object('code', c.code, 'outcome', c.outcome, 'calls', c.calls) order by c.code, c.outcome)
                   from budget_shadow_counts c where c.budget_id = $1 and c.period_start = $2), '[]'::jsonb) as counts`

t.test('every shadow budget of random trees: the status answers as the function before did, and the wrapper too', async (t) => {
  const { app, sql, admin } = await buildApp(t)
  let run = 0
  await fc.assert(fc.asyncProperty(
    fc.array(fc.record({
      parent: fc.nat(),
      shadow: fc.boolean(),
      byLibrary: fc.boolean(),
      moveTo: fc.option(fc.nat(), { nil: undefined }),
      flip: fc.constantFrom('none', 'to-hard', 'to-shadow', 'round-trip'),
      ledger: fc.option(fc.record({
        // numeric(28, 10): up to 18 digits before the point, 10 after
        units: fc.bigInt({ min: 0n, max: 10n ** 28n - 1n }),
        counts: fc.array(fc.record({ code: fc.constantFrom('BUDGET_EXCEEDED', 'MAX_CALL_COST', 'MODEL_RESTRICTED', 'APPROVAL_REQUIRED'), outcome: fc.constantFrom('refused', 'clamped', 'downgraded'), calls: fc.integer({ min: 1, max: 2 ** 40 }) }), { maxLength: 4 }),
        otherWindow: fc.boolean()
      }), { nil: undefined })
    }), { minLength: 1, maxLength: 6 }),
    async (specs) => {
      run++
      const scope = `team-sr-${run}`
      const ids: string[] = []
      for (const [i, spec] of specs.entries()) {
        // the first a root; each other under an earlier one (depth up to the tree's maximum, else a root)
        const parentId = i === 0 ? null : (spec.parent % (i + 1) === i ? null : ids[spec.parent % i]!)
        const request = budgetRequest({ name: `b${i}`, scopeId: `${scope}-${i}`, amount: parentId === null ? '999999999999999999' : '100', enforcement: spec.shadow ? 'shadow' : 'hard', ...(parentId === null ? {} : { parentId }) })
        let id: string
        if (spec.byLibrary) {
          try { id = (await app.budgetRegistry.createBudget(request as never)).id } catch { id = (await postBudget(admin, { ...request, parentId: null, amount: '999999999999999999' })).id }
        } else {
          const answer = await admin({ method: 'POST', url: PREFIX, body: request })
          id = answer.statusCode === 201 ? answer.json().id : (await postBudget(admin, { ...request, parentId: undefined, amount: '999999999999999999' })).id
        }
        ids.push(id)
      }
      // moves within a tree (refused ones too: across trees, cycles, too deep)
      for (const [i, spec] of specs.entries()) {
        if (spec.moveTo === undefined || i === 0) continue
        await admin({ method: 'PUT', url: `${PREFIX}/${ids[i]!}`, body: { parentId: ids[spec.moveTo % ids.length]! } })
      }
      for (const [i, spec] of specs.entries()) {
        const put = async (enforcement: string) => await admin({ method: 'PUT', url: `${PREFIX}/${ids[i]!}`, body: { enforcement } })
        if (spec.flip === 'to-hard') await put('hard')
        if (spec.flip === 'to-shadow') await put('shadow')
        if (spec.flip === 'round-trip') { await put(spec.shadow ? 'hard' : 'shadow'); await put(spec.shadow ? 'shadow' : 'hard') }
      }
      // the ledger rows, in the window each status speaks of (and one before it)
      for (const [i, spec] of specs.entries()) {
        if (spec.ledger === undefined) continue
        const id = ids[i]!
        const status = (await admin({ method: 'GET', url: `${PREFIX}/${id}/status` })).json()
        const amount = (spec.ledger.units / 10n ** 10n).toString() + '.' + (spec.ledger.units % 10n ** 10n).toString().padStart(10, '0')
        const starts = [status.periodStart as string, ...(spec.ledger.otherWindow ? ['2023-12-01T00:00:00.000Z'] : [])]
        for (const start of starts) {
          // root_id left to the trigger for one window, named for the other
          if (start === status.periodStart) await sql`insert into budget_shadow_windows (budget_id, period_start, excluded_amount) values (${id}, ${start}, ${amount}::numeric)`
          else await sql`insert into budget_shadow_windows (budget_id, root_id, period_start, excluded_amount) select id, root_id, ${start}, 1 from budget_definitions where id = ${id}`
          for (const count of spec.ledger.counts) {
            await sql`insert into budget_shadow_counts as c (budget_id, period_start, code, outcome, calls, root_id)
              select ${id}, ${start}, ${count.code}, ${count.outcome}, ${count.calls}, root_id from budget_definitions where id = ${id}
              on conflict (budget_id, period_start, code, outcome, root_id) do update set calls = c.calls + excluded.calls`
          }
        }
      }
      for (const id of ids) {
        const [stored] = await sql`select enforcement, root_id::text as root from budget_definitions where id = ${id}`
        const answers = [
          (await admin({ method: 'GET', url: `${PREFIX}/${id}/status` })).json(),
          (await admin({ method: 'POST', url: `${PREFIX}/${id}/refresh-cache` })).json(),
          JSON.parse(JSON.stringify(await app.budgetTracker.getBudgetStatus(id)))
        ]
        const byApi = (await admin({ method: 'GET', url: `${PREFIX}/${id}` })).json()
        t.equal(byApi.rootId, stored!.root, 'the API\'s rootId is the stored root')
        for (const answer of answers) {
          if (stored!.enforcement !== 'shadow') {
            t.equal(answer.shadow, undefined, 'no as-if ledger on a budget not shadow')
            continue
          }
          const [old] = await sql.unsafe<Array<{ excluded: string, counts: Shadow['counts'] }>>(OLD_BODY, [id, new Date(answer.periodStart as string)])
          const [wrapper] = await sql`select excluded_amount::text as excluded, counts from budget_shadow_status(${id}, ${answer.periodStart as string})`
          const shadow = answer.shadow as Shadow
          const norm = (s: string) => s.replace(/(\.\d*?)0+$/, '$1').replace(/\.$/, '')
          t.equal(norm(shadow.excludedAmount), norm(old!.excluded), `excluded as before (${id})`)
          t.same(shadow.counts, old!.counts, 'counts as before')
          t.equal(norm(wrapper!.excluded as string), norm(old!.excluded), 'the wrapper: excluded as before')
          t.same(wrapper!.counts, old!.counts, 'the wrapper: counts as before')
          const units = (s: string) => { const [w, f = ''] = s.split('.'); const neg = w!.startsWith('-'); const v = BigInt(w!.replace('-', '')) * 10n ** 10n + BigInt((f + '0000000000').slice(0, 10)); return neg ? -v : v }
          t.equal(units(shadow.asIfCurrentAmount), units(answer.currentAmount as string) - units(old!.excluded), 'as-if: spend less excluded')
        }
      }
    }), { numRuns: 25, seed: 606888 })
})

t.test('the wrapper and the new function on hostile ids and windows: what the function before answered', async (t) => {
  const { sql, admin } = await buildApp(t)
  const root = await postBudget(admin, budgetRequest({ enforcement: 'shadow' }))
  const child = await postBudget(admin, budgetRequest({ scopeId: 'team-c', amount: '10', enforcement: 'shadow', parentId: root.id }))
  const start = (await admin({ method: 'GET', url: `${PREFIX}/${child.id}/status` })).json().periodStart as string
  await sql`insert into budget_shadow_windows (budget_id, period_start, excluded_amount) values (${child.id}, ${start}, '12345678901234567.8901234567')`
  // the child's ledger read in the wrong tree: nothing (a root given that is not the budget's)
  const [wrong] = await sql`select excluded_amount::text as e, counts from budget_shadow_status_in_tree(${child.id}, ${child.id}, ${start})`
  t.same(wrong, { e: '0', counts: [] }, 'another tree holds none of its ledger')
  const [right] = await sql`select excluded_amount::text as e from budget_shadow_status_in_tree(${root.id}, ${child.id}, ${start})`
  t.equal(right!.e, '12345678901234567.8901234567', 'every digit')
  const [wrapped] = await sql`select excluded_amount::text as e from budget_shadow_status(${child.id}, ${start})`
  t.equal(wrapped!.e, '12345678901234567.8901234567', 'the wrapper: every digit')
  for (const id of ['00000000-0000-0000-0000-000000000000', 'ffffffff-ffff-ffff-ffff-ffffffffffff']) {
    const [none] = await sql`select excluded_amount::text as e, counts from budget_shadow_status(${id}, ${start})`
    t.same(none, { e: '0', counts: [] }, `a budget that is not: zero and no counts (${id})`)
  }
  // an archived budget: the wrapper still reads its ledger as the function before did
  t.equal((await admin({ method: 'DELETE', url: `${PREFIX}/${child.id}` })).statusCode < 300, true, 'archived')
  const [archived] = await sql`select excluded_amount::text as e from budget_shadow_status(${child.id}, ${start})`
  t.equal(archived!.e, '12345678901234567.8901234567', 'the wrapper reads an archived budget\'s ledger as before')
  for (const id of [child.id, 'not-a-uuid', "'; drop table budget_definitions; --", '00000000-0000-0000-0000-000000000000']) {
    t.equal((await admin({ method: 'GET', url: `${PREFIX}/${encodeURIComponent(id)}/status` })).statusCode, 404, `404 for ${id.slice(0, 20)}`)
  }
})
