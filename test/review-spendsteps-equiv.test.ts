// Adversarial review of budget_record_spend naming each row's tree: the new function against the
// previous one (26edf09's spend.sql, installed as old_record_spend), from the same starting state, in the same
// transaction (one now(): the forecasts and updated_at agree), each call under a savepoint rolled back after
// its tables are read. fast-check over windows with and without rows, several trees, projected and current
// alerts, overflow with and without clamp, releases, p_trees null / right / wrong / partial, named windows.
import t from 'tap'
import fc from 'fast-check'
import { execFileSync } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import type { Sql, TransactionSql } from 'postgres'
import { PREFIX, budgetRequest, buildApp, postBudget } from './fixtures/app.js'

const oldText = execFileSync('git', ['show', '26edf09:sql/functions/spend.sql'], { encoding: 'utf8' })
  .replaceAll('budget_record_spend', 'old_record_spend')

interface B { id: string, root: string, currency: string }

class Done extends Error { constructor (readonly value: unknown) { super('done') } }

async function state (tx: TransactionSql | Sql) {
  const rows = async (q: string) => (await tx.unsafe<Array<{ j: string }>>(q)).map((r) => r.j).sort()
  return {
    allocations: await rows(`select json_build_array(budget_id, root_id, usage_id, amount::text, occurred_at, exchange_rate::text)::text as j from budget_usage_allocations`),
    cache: await rows(`select json_build_array(budget_id, root_id, period_start, period_end, current_amount::text, usage_count, last_usage_at, reserved_amount::text, updated_at)::text as j from budget_status_cache`),
    history: await rows(`select json_build_array(budget_id, root_id, period_start, threshold::text, basis, spent::text, limit_amount::text, resolved_at)::text as j from budget_alert_history`),
    outbox: await rows(`select json_build_array(a.budget_id, a.threshold::text, a.basis, o.channel)::text as j from budget_notification_outbox o join budget_alert_history a on a.id = o.alert_id`),
    profiles: await rows(`select json_build_array(budget_id, root_id, local_day)::text as j from budget_forecast_profiles`),
    records: await rows(`select json_build_array(id)::text as j from budget_usage_records`)
  }
}

t.test('the new budget_record_spend leaves what the old one left (fast-check)', async (t) => {
  const { admin, sql } = await buildApp(t)
  await sql.unsafe(oldText)
  for (const [to, rate] of [['EUR', '0.9'], ['JPY', '151.1234567891']]) {
    t.equal((await admin({ method: 'PUT', url: `${PREFIX}/exchange-rates/USD/${to}`, body: { rate, effectiveFrom: '2024-01-01T00:00:00Z' } })).statusCode, 201)
  }
  const { month } = (await sql<Array<{ month: Date }>>`select date_trunc('month', now()) as month`)[0]!
  const channels = ['email']
  const mk = async (o: Record<string, unknown>): Promise<B> => {
    const b = await postBudget(admin, budgetRequest({ enforcement: 'soft', ...o }))
    return { id: b.id, root: b.rootId, currency: (o.currency as string | undefined) ?? 'USD' }
  }
  const r1 = await mk({ name: 'r1', scopeType: 'organization', scopeId: 'o1', amount: '100', alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: channels }, { threshold: 80, actions: ['notify'] }, { threshold: 90, basis: 'projected', actions: ['notify'], notificationChannels: channels }] })
  const c1 = await mk({ name: 'c1', scopeType: 'team', scopeId: 't1', parentId: r1.id, amount: '60', alerts: [{ threshold: 30, actions: ['notify'] }, { threshold: 70, basis: 'projected', actions: ['notify'] }] })
  const c2 = await mk({ name: 'c2', scopeType: 'user', scopeId: 'u1', parentId: r1.id, amount: '20', period: 'daily', alerts: [{ threshold: 25, actions: ['notify'] }, { threshold: 75, actions: ['notify'] }] })
  const eur = await mk({ name: 'eur', scopeType: 'organization', scopeId: 'o6', amount: '50', currency: 'EUR', alerts: [{ threshold: 30, actions: ['notify'] }, { threshold: 60, basis: 'projected', actions: ['notify'] }] })
  const r2 = await mk({ name: 'r2', scopeType: 'organization', scopeId: 'o2', amount: '40', alerts: [{ threshold: 25, actions: ['notify'] }, { threshold: 50, actions: ['notify'] }, { threshold: 100, actions: ['notify'] }] })
  const r3 = await mk({ name: 'r3', scopeType: 'organization', scopeId: 'o3', amount: '3000', currency: 'JPY', alerts: [{ threshold: 40, basis: 'projected', actions: ['notify'] }, { threshold: 60, actions: ['notify'] }] })
  const big = await mk({ name: 'big', scopeType: 'organization', scopeId: 'o4', amount: '900000000000000000', currency: 'JPY', alerts: [{ threshold: 50, actions: ['notify'] }, { threshold: 99, basis: 'projected', actions: ['notify'] }] })
  const gone = await mk({ name: 'gone', scopeType: 'organization', scopeId: 'o5', amount: '50', alerts: [{ threshold: 10, actions: ['notify'] }, { threshold: 20, basis: 'projected', actions: ['notify'] }] })
  t.equal((await admin({ method: 'DELETE', url: `${PREFIX}/${gone.id}` })).statusCode, 204, 'soft-deleted')
  const budgets = [r1, c1, c2, r2, r3, big, gone, eur]
  const rateOf = (b: B) => b.currency === 'USD' ? '1' : b.currency === 'EUR' ? '0.9' : '151.1234567891'

  const hour = 3_600_000
  const instants = [
    () => new Date(Date.now() - 60_000), () => new Date(Date.now() - 5 * hour), () => new Date(month.getTime()),
    () => new Date(month.getTime() - 1), () => new Date(Date.now() - 40 * 24 * hour), () => new Date(Date.now() + 60 * 24 * hour),
    () => new Date(Date.now() - 2 * hour)
  ]
  const amount = fc.oneof(
    fc.integer({ min: 1, max: 30 }).map(String),
    fc.integer({ min: 1, max: 999 }).map((n) => `0.${String(n).padStart(10, '0')}`),
    fc.constantFrom('5000000000000000', '6000000000000000', '900000000000000000', '0.0000000001')
  )
  const rec = fc.record({
    targets: fc.uniqueArray(fc.integer({ min: 0, max: budgets.length - 1 }), { minLength: 1, maxLength: 3 }),
    amount, at: fc.integer({ min: 0, max: instants.length - 1 }), ord: fc.integer({ min: 1, max: 6 })
  })
  const scenario = fc.record({
    prior: fc.array(fc.record({ target: fc.integer({ min: 0, max: budgets.length - 1 }), amount: fc.integer({ min: 1, max: 40 }).map(String), at: fc.integer({ min: 0, max: instants.length - 1 }) }), { maxLength: 5 }),
    dropRows: fc.uniqueArray(fc.integer({ min: 0, max: budgets.length - 1 }), { maxLength: 3 }),
    resolveHistory: fc.boolean(),
    records: fc.array(rec, { minLength: 1, maxLength: 6 }),
    clamp: fc.boolean(),
    trees: fc.constantFrom('null', 'right', 'wrong', 'partial', 'extra'),
    named: fc.boolean(),
    release: fc.uniqueArray(fc.integer({ min: 0, max: budgets.length - 1 }), { maxLength: 3 })
  })

  let runs = 0; let ok = 0; let projected = 0; let refused = 0; const errors = new Map<string, number>()
  await fc.assert(fc.asyncProperty(scenario, async (s) => {
    runs++
    const outcome = await sql.begin(async (tx) => {
      // the starting state: prior usage through the trigger, then some window rows taken away
      for (const p of s.prior) {
        const b = budgets[p.target]!
        await tx`insert into budget_usage_records (budget_id, amount, currency, occurred_at) values (${b.id}, ${p.amount}, 'USD', ${instants[p.at]!()})`
      }
      for (const i of s.dropRows) await tx`delete from budget_status_cache where budget_id = ${budgets[i]!.id}`
      if (s.resolveHistory) await tx`update budget_alert_history set resolved_at = now() where threshold >= 50`
      // the releases: a reserved amount on an existing row of each budget named
      const rel: Array<{ budget: string, start: Date, amount: string }> = []
      for (const i of s.release) {
        const rows = await tx<Array<{ start: Date }>>`update budget_status_cache set reserved_amount = reserved_amount + 7 where budget_id = ${budgets[i]!.id} returning period_start as start`
        for (const r of rows) rel.push({ budget: budgets[i]!.id, start: r.start, amount: '5' })
      }
      // the records, stored without the trigger
      const ords: number[] = []; const usage: string[] = []; const bids: string[] = []; const amounts: string[] = []; const rates: string[] = []; const ats: Date[] = []
      for (const r of s.records) {
        const id = randomUUID()
        const at = instants[r.at]!()
        await tx`insert into budget_usage_records (id, budget_id, amount, currency, occurred_at, allocated_by_settlement) values (${id}, ${budgets[r.targets[0]!]!.id}, ${r.amount}, 'USD', ${at}, true)`
        for (const ti of r.targets) {
          const b = budgets[ti]!
          ords.push(r.ord); usage.push(id); bids.push(b.id); amounts.push(r.amount); rates.push(rateOf(b)); ats.push(at)
        }
      }
      let starts: Date[] = []; let ends: Date[] = []
      if (s.named) {
        for (let k = 0; k < bids.length; k++) {
          const [w] = await tx<Array<{ start: Date, end: Date }>>`select w.period_start as start, w.period_end as end from budget_definitions b cross join lateral budget_window(b, ${ats[k]!}) w where b.id = ${bids[k]!}`
          starts.push(w!.start); ends.push(w!.end)
        }
      }
      const allRoots = [...new Set(budgets.map((b) => b.root))]
      const trees = s.trees === 'null' ? null
        : s.trees === 'right' ? [...new Set([...bids, ...rel.map((r) => r.budget)].map((id) => budgets.find((b) => b.id === id)!.root))]
          : s.trees === 'wrong' ? [randomUUID()]
            : s.trees === 'partial' ? [budgets.find((b) => b.id === bids[0])!.root]
              : [...allRoots, randomUUID()]
      const call = async (fn: string) => {
        try {
          await tx.savepoint(async (sp) => {
            const returned = (await sp.unsafe<Array<{ j: string }>>(
              `select json_build_array(usage_id, budget_id, cost::text, charged::text)::text as j from ${fn}($1::bigint[], $2::uuid[], $3::uuid[], $4::numeric[], $5::numeric[], $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::boolean, $10::uuid[], $11::timestamptz[], $12::numeric[], $13::uuid[])`,
              [ords, usage, bids, amounts, rates, ats.map((d) => d.toISOString()), starts.map((d) => d.toISOString()), ends.map((d) => d.toISOString()), s.clamp,
                rel.length ? rel.map((r) => r.budget) : null, rel.length ? rel.map((r) => r.start.toISOString()) : null, rel.length ? rel.map((r) => r.amount) : null, trees] as never[]
            )).map((r) => r.j).sort() // the order of the rows is no contract (the callers aggregate)
            throw new Done({ returned, ...(await state(sp)) })
          })
        } catch (e) {
          if (e instanceof Done) return e.value
          return { error: (e as Error).message }
        }
        return null
      }
      const before = await state(tx)
      const old = await call('old_record_spend')
      const now = await call('budget_record_spend')
      throw new Done({ old, now, before })
    }).catch((e: unknown) => { if (e instanceof Done) return e.value as { old: unknown, now: unknown }; throw e })
    const o = outcome.old as { error?: string, history?: string[], returned?: string[] }
    if (o.error !== undefined) errors.set(o.error, (errors.get(o.error) ?? 0) + 1)
    else { ok++; if ((o.history ?? []).some((h) => h.includes('projected'))) projected++; if ((o.returned ?? []).some((r) => r.endsWith(', null]'))) refused++ }
    if (JSON.stringify(outcome.old) !== JSON.stringify(outcome.now)) {
      t.same(outcome.now, outcome.old, `run ${runs}: ${JSON.stringify(s)}`)
      return false
    }
    return true
  }), { numRuns: Number(process.env.RUNS ?? 150), seed: Number(process.env.SEED ?? 4242) })
  t.comment(`runs ${runs}, ok ${ok}, with projected history ${projected}, with refusals ${refused}, errors ${JSON.stringify([...errors])}`)
  t.ok(ok > runs / 2, 'most calls run')
})
