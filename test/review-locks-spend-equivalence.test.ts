// Review of ebaffca: budget_record_spend's common case went from one statement to several over arrays. The
// same usage batches and settlements, recorded on two databases (one with spend.sql as it was before the
// change, from git history), leave the same windows, allocations, crossings and answers: thresholds crossed
// inside a batch, windows without a cache row, money near 10^18, projected alerts (their forecast measure depends on
// the clock, so only whether they crossed is compared), release-only settlements.
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { migrate } from '../lib/kernel/database/migrate.js'
import { createTestSql } from './fixtures/database.js'

type Sql = Awaited<ReturnType<typeof createTestSql>>['sql']
const OLD_SPEND = execFileSync('git', ['show', 'ebaffca^:sql/functions/spend.sql'], { encoding: 'utf8' })

const A = 'a0000000-0000-4000-8000-000000000000' // hard, alerts on spend at 50 and 80 %
const B = 'b0000000-0000-4000-8000-000000000000' // team under A
const C = 'c0000000-0000-4000-8000-000000000000' // soft, near 10^18
const P = '0f000000-0000-4000-8000-000000000000' // own root, a projected alert

async function setUp (sql: Sql, old: boolean) {
  await migrate(sql)
  if (old) {
    // the old budget_record_spend in place of the new, and a form that takes the trees, as the settlements now
    // call it, handing the rest to the old (it has no default, so a call without the trees is the old one's alone)
    await sql.unsafe(`drop function budget_record_spend(bigint[], uuid[], uuid[], numeric[], numeric[], timestamptz[], timestamptz[], timestamptz[], boolean,
                                                       uuid[], timestamptz[], numeric[], uuid[])`)
    await sql.unsafe(OLD_SPEND)
    await sql.unsafe(`create function budget_record_spend(p_ords bigint[], p_usage_ids uuid[], p_budget_ids uuid[], p_amounts numeric[], p_rates numeric[],
        p_occurred_at timestamptz[], p_period_starts timestamptz[], p_period_ends timestamptz[], p_clamp boolean,
        p_release_budgets uuid[], p_release_starts timestamptz[], p_released numeric[], p_trees uuid[])
      returns table (usage_id uuid, budget_id uuid, cost numeric, charged numeric) language sql as $f$
        select * from budget_record_spend(p_ords, p_usage_ids, p_budget_ids, p_amounts, p_rates, p_occurred_at, p_period_starts, p_period_ends, p_clamp,
                                          p_release_budgets, p_release_starts, p_released)
      $f$`)
  }
  await sql`insert into budget_definitions (id, name, scope_type, scope_id, amount, currency, period, start_date, enforcement, alerts) values
    (${A}, 'a', 'organization', 'acme', 100, 'USD', 'monthly', '2024-01-01', 'soft', '[{"threshold": 50, "actions": ["notify"]}, {"threshold": 80, "actions": ["notify"]}]'::jsonb),
    (${C}, 'c', 'user', 'big', 999999999999999999, 'USD', 'monthly', '2024-01-01', 'soft', '[{"threshold": 40, "actions": ["notify"]}]'::jsonb),
    (${P}, 'p', 'user', 'proj', 1000, 'USD', 'monthly', '2024-01-01', 'soft', '[{"threshold": 10, "basis": "projected", "actions": ["notify"]}]'::jsonb)`
  await sql`insert into budget_definitions (id, name, scope_type, scope_id, amount, currency, period, start_date, enforcement, parent_id, alerts) values
    (${B}, 'b', 'team', 'plat', 40, 'USD', 'monthly', '2024-01-01', 'soft', ${A}, '[{"threshold": 25, "actions": ["notify"]}]'::jsonb)`
  // A's and C's windows have a cache row; B's and P's are made by the first record
  for (const id of [A, C]) await sql`select refresh_budget_status_cache(d.id, w.period_start, w.period_end) from budget_definitions d cross join lateral budget_window(d, now()) w where d.id = ${id}`
}

async function state (sql: Sql) {
  return {
    windows: await sql`select d.name, c.current_amount::text, c.reserved_amount::text, c.usage_count::int from budget_status_cache c
                       join budget_definitions d on d.id = c.budget_id order by d.name, c.period_start`,
    allocations: await sql`select d.name, count(*)::int as n, sum(a.amount)::text as total from budget_usage_allocations a
                           join budget_definitions d on d.id = a.budget_id group by d.name order by d.name`,
    crossings: await sql`select d.name, h.threshold::text, h.basis, case when h.basis = 'current' then h.spent::text end as spent from budget_alert_history h
                         join budget_definitions d on d.id = h.budget_id order by d.name, h.threshold, h.basis`,
    records: await sql`select amount::text, source, metadata - 'requestId' as metadata from budget_usage_records order by amount, source, idempotency_key`
  }
}

t.test('the same records and settlements on the old and new budget_record_spend leave the same ledger', async (t) => {
  const dbs = [(await createTestSql(t, { max: 1 })).sql, (await createTestSql(t, { max: 1 })).sql]
  await setUp(dbs[0]!, true)
  await setUp(dbs[1]!, false)
  let seed = 7
  const rand = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648 }
  const amounts = ['0.5', '3', '7.25', '12', '0.0000000001', '300000000000000000', '499999999999999999']
  const budgets = [A, B, C, P]
  const answers: unknown[][] = [[], []]
  for (let round = 0; round < 25; round++) {
    const size = 1 + Math.floor(rand() * 5)
    const records = Array.from({ length: size }, (_, i) => {
      const budget = budgets[Math.floor(rand() * budgets.length)]!
      return { ord: i + 1, budget_id: budget, amount: budget === C ? amounts[Math.floor(rand() * amounts.length)] : amounts[Math.floor(rand() * 4)],
        currency: 'USD', source: 'batch', description: 'x', metadata: {}, idempotency_key: `k-${round}-${i}`, request_fingerprint: null,
        occurred_at: new Date(Date.now() - Math.floor(rand() * 3) * 3_600_000).toISOString(), also_counts_toward: budget === P ? [C] : [] }
    })
    // a settlement too, every other round: a hold on A/B (and C) settled at an actual, some at 0 (release only)
    const hold = `00000000-0000-4000-8000-${String(round).padStart(12, '0')}`
    const actual = ['0', '2', '45'][round % 3]!
    for (const [i, sql] of dbs.entries()) {
      answers[i]!.push(await sql`select ord, usage_id is not null as stored, fault from budget_record_usage_batch(${JSON.stringify(records)}::text::jsonb) order by ord`)
      if (round % 2 === 0) {
        const line = [B, A, C]
        const w = await sql`select d.id, w.period_start, w.period_end from budget_definitions d cross join lateral budget_window(d, now()) w where d.id = any (${line}::uuid[])`
        const win = (id: string) => w.find((x) => x.id === id)!
        await sql`select * from budget_hold_batch(array[${hold}]::uuid[], array[3]::numeric[], array[${`req-${round}`}], 'USD', '1 hour'::interval,
          array[1, 1, 1], ${line}::uuid[], ${line.map((b) => win(b).period_start.toISOString())}::timestamptz[], ${line.map((b) => win(b).period_end.toISOString())}::timestamptz[],
          array[true, true, true], array[0, 1, 2], false, false)`
        answers[i]!.push(await sql`select usage_id is not null as recorded from budget_settle_batch(array[${hold}]::uuid[], array[${actual}]::numeric[],
          array['gate'], array['call'], array['{}'::jsonb])`)
      }
    }
  }
  t.same(answers[1], answers[0], 'the same answers')
  const [before, after] = [await state(dbs[0]!), await state(dbs[1]!)]
  t.ok(new Set(before.crossings.map((c) => c.name)).size === 4 && before.windows.length === 4, 'the rounds crossed thresholds and made windows')
  t.same(after.windows, before.windows, 'the same windows')
  t.same(after.allocations, before.allocations, 'the same allocations')
  t.same(after.crossings, before.crossings, 'the same crossings')
  t.same(after.records, before.records, 'the same usage records')
})
