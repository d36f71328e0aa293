// Review 3: the admission memo and the next-threshold shortcut against the same function without them
// (budget_simulate_slice rewritten in this test's own database: every call evaluates the rules, every alert walked).
import t from 'tap'
import { buildGateway } from './fixtures/gateway.js'

for (const initialSeed of [12345, 777, 4242, 99, 31337, 2026, 5, 6, 7, 8]) t.test(`randomized (seed ${initialSeed}): the replay with its shortcuts gives the state the rules give without them`, async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const { sql } = gateway
  const [found] = await sql<Array<{ def: string }>>`select pg_get_functiondef('budget_simulate_slice(jsonb,timestamptz,timestamptz,timestamptz,text[],jsonb,uuid[],numeric[])'::regprocedure) as def`
  let plain = found!.def.replace('FUNCTION public.budget_simulate_slice(', 'FUNCTION public.budget_simulate_slice_plain(')
  const memo = 'admitted := a_version[e.caller] = actions_version and a_estimate[e.caller] = e.estimate;'
  const next = 'continue when w_next[w] is null or not budget_alert_reached(w_spent[w], w_next[w], w_amount[w]);'
  const refusalMemo = 'if m_version[e.caller] = spent_version and m_estimate[e.caller] = e.estimate then'
  t.ok(plain.includes(memo) && plain.includes(next) && plain.includes(refusalMemo))
  plain = plain.replace(memo, 'admitted := false;').replace(next, '').replace(refusalMemo, 'if false then')
  await sql.unsafe(plain)

  let seed = initialSeed
  const rnd = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648 }
  const pick = <T>(list: T[]) => list[Math.floor(rnd() * list.length)]!
  const enforcements = ['hard', 'soft', 'shadow']
  const actions = initialSeed % 2 === 0 ? [['notify'], ['notify'], ['restrict-models'], ['notify'], ['block-all']] : [['notify'], ['notify'], ['notify'], ['restrict-models']]
  const budgetIds: string[] = []
  const org = await gateway.createBudget({ name: 'org', scopeType: 'organization', scopeId: 'org-1', amount: '6', enforcement: 'hard', alerts: [{ threshold: 70, actions: ['notify'] }, { threshold: 95, actions: ['block-all'] }] })
  budgetIds.push(org.id)
  for (const team of ['team-a', 'team-b']) {
    const b = await gateway.createBudget({ name: team, scopeId: team, parentId: org.id, amount: String(2 + Math.floor(rnd() * 3)), enforcement: pick(enforcements), maxCallCost: rnd() < 0.3 ? '0.2' : undefined,
      alerts: [{ threshold: 30 + Math.floor(rnd() * 30), actions: pick(actions) }, { threshold: 60 + Math.floor(rnd() * 40), actions: pick(actions) }] })
    budgetIds.push(b.id)
    for (const user of ['u1', 'u2', 'u3']) {
      const u = await gateway.createBudget({ name: `${team}-${user}`, scopeType: 'user', scopeId: `${team}-${user}`, amount: (0.5 + rnd() * 2).toFixed(4), currency: rnd() < 0.3 ? 'EUR' : 'USD', enforcement: pick(enforcements), period: pick(['monthly', 'daily']),
        alerts: [{ threshold: 40 + Math.floor(rnd() * 50), actions: pick(actions) }] })
      budgetIds.push(u.id)
    }
  }
  const start = Date.now() - 3_600_000
  // USD -> EUR rates, some taking effect during the range (one before it)
  for (let k = 0; k < 6; k++) {
    await sql`insert into budget_exchange_rates (from_currency, to_currency, effective_from, rate) values ('USD', 'EUR', ${new Date(start - 86_400_000 + k * 600_000 + (k > 0 ? 86_400_000 : 0))}, ${(0.8 + rnd() * 0.4).toFixed(6)})`
  }
  const rows: Array<{ amount: string, est: string, team: string, user: string, model: string, at: Date }> = []
  for (let i = 0; i < 1200; i++) {
    const team = pick(['team-a', 'team-b'])
    const est = pick(['0.01', '0.0100000001', '0.02', '0.005', '0.0099999999', (rnd() * 0.02).toFixed(10)])
    rows.push({ amount: (Number(est) * (0.6 + rnd() * 0.4)).toFixed(10), est, team, user: `${team}-${pick(['u1', 'u2', 'u3'])}`, model: pick(['gpt-4o', 'gpt-4o-mini']), at: new Date(start + i * 2500 + Math.floor(rnd() * 3)) })
  }
  await sql`
    insert into budget_usage_records (amount, currency, source, metadata, occurred_at, allocated_by_settlement)
    select r.amount::numeric, 'USD', 'gateway', jsonb_build_object('modelId', r.model, 'estimatedCost', r.est, 'teamId', r.team, 'userId', r.user, 'organizationId', 'org-1'), r.at, true
    from jsonb_to_recordset(${sql.json(rows as any)}) as r(amount text, est text, team text, "user" text, model text, at timestamptz)`
  // API usage (kind 2), some of it negative corrections, on random budgets
  for (let i = 0; i < 40; i++) {
    const budgetId = pick(budgetIds)
    const negative = rnd() < 0.4
    await sql`insert into budget_usage_records (budget_id, amount, currency, source, metadata, occurred_at, correction)
      values (${budgetId}, ${negative ? -0.05 : 0.07}, 'USD', 'api', '{}'::jsonb, ${new Date(start + Math.floor(rnd() * 3_000_000))}, ${negative})`
  }
  const from = new Date(start - 1000)
  const to = new Date(start + 3_100_000)
  const run = async (fn: string) => {
    let state: unknown = {}
    const span = to.getTime() - from.getTime()
    for (let slice = 1; slice <= 20; slice++) {
      const sf = new Date(from.getTime() + Math.floor(span * (slice - 1) / 20))
      const st = slice === 20 ? to : new Date(from.getTime() + Math.floor(span * slice / 20))
      const [row] = await sql.unsafe(`select ${fn}($1::text::jsonb, $2, $3, $4, $5::text[], $6::text::jsonb, '{}'::uuid[], '{}'::numeric[])::text as s`,
        [JSON.stringify(state), sf, st, from, ['gpt-4o-mini'] as any, JSON.stringify({ 'gpt-4o': 'gpt-4o-mini' })])
      state = JSON.parse(row!.s)
    }
    return state as Record<string, any>
  }
  const fast = await run('budget_simulate_slice')
  const slow = await run('budget_simulate_slice_plain')
  t.comment(JSON.stringify(slow.refusals.map((r: any) => [r.code, r.count])))
  t.same(fast.windows, slow.windows, 'the same windows and spend')
  t.same(fast.crossings, slow.crossings, 'the same crossings')
  t.same(fast.refusals, slow.refusals, 'the same refusals')
})
