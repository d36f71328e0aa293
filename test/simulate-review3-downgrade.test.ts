// Review 3: the replay of a period recorded through the real gate with auto-downgrade in force.
import t from 'tap'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }
type Gateway = Awaited<ReturnType<typeof buildGateway>>

async function simulate (gateway: Gateway, body: Record<string, unknown>) {
  const response = await gateway.app.inject({ method: 'POST', url: `${PREFIX}/simulate`, headers: AUTH, body })
  if (response.statusCode !== 200) throw new Error(`${response.statusCode} ${response.body}`)
  return response.json() as { events: number, budgets: Array<Record<string, any>>, unknowns: string[] }
}

t.test('hard budget, auto-downgrade in force: a call the gate downgraded and then refused stays refused in the replay', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const budget = await gateway.createBudget({ name: 'team a', amount: '0.004', alerts: [{ threshold: 20, actions: ['auto-downgrade'] }] })
  const from = new Date(Date.now() - 1000)
  const answers: Array<[number, string | undefined]> = []
  for (let call = 0; call < 40; call++) {
    const response = await gateway.call({ team: 'team-a' }, { model: 'gpt-4o', max_tokens: call % 3 === 2 ? 16000 : 60 })
    answers.push([response.statusCode, response.headers['x-budget-downgraded-from'] as string | undefined])
    await gateway.settled()
  }
  await gateway.app.budgetDecisions.flush()
  const to = new Date(Date.now() + 1000)
  t.comment(JSON.stringify(answers))
  const decisions = await gateway.sql<Array<{ outcome: string, code: string, count: number }>>`
    select outcome, code, count(*)::int as count from budget_decision_log group by outcome, code order by outcome, code`
  t.comment('decision log: ' + JSON.stringify(decisions))
  const [spent] = await gateway.sql<Array<{ total: string, calls: number }>>`
    select coalesce(sum(amount), 0)::text as total, count(*)::int as calls from budget_usage_allocations where budget_id = ${budget.id}`
  const refusedInReality = answers.filter(([status]) => status === 402).length
  t.ok(refusedInReality > 0, `refused in reality: ${refusedInReality}`)

  const result = await simulate(gateway, { from: from.toISOString(), to: to.toISOString() })
  const [replayed] = result.budgets
  t.comment('replayed refused: ' + JSON.stringify(replayed!.refused) + ' downgraded: ' + JSON.stringify(replayed!.downgraded))
  t.comment('replayed spent: ' + replayed!.periods[0].spent + ' real: ' + spent!.total)
  const replayedRefused = replayed!.refused.reduce((sum: number, outcome: any) => sum + outcome.count, 0)
  t.equal(replayedRefused, refusedInReality, 'the same number of refusals as in reality')
  t.equal(replayed!.periods[0].calls, spent!.calls, 'the same calls counted')
  t.equal(replayed!.periods[0].spent, String(Number(spent!.total)), 'the same spend')
  t.ok(Number(replayed!.periods[0].spent) <= 0.004, `a hard budget never spends past its amount in the replay (${replayed!.periods[0].spent as string})`)
})

t.test('default downgrades chain (gpt-4.1 -> gpt-4.1-mini -> gpt-4.1-nano): a call the gate downgraded costs what it cost', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const budget = await gateway.createBudget({ name: 'team a', amount: '100', enforcement: 'soft', alerts: [{ threshold: 0.0001, actions: ['auto-downgrade'] }] })
  const from = new Date(Date.now() - 1000)
  const downgradedFrom: Array<string | undefined> = []
  for (let call = 0; call < 6; call++) {
    const response = await gateway.call({ team: 'team-a' }, { model: 'gpt-4.1', max_tokens: 20 })
    t.equal(response.statusCode, 200, response.body)
    downgradedFrom.push(response.headers['x-budget-downgraded-from'] as string | undefined)
    await gateway.settled()
  }
  const to = new Date(Date.now() + 1000)
  t.ok(downgradedFrom.filter((model) => model === 'gpt-4.1').length >= 4, `the gate downgraded gpt-4.1 calls in reality: ${JSON.stringify(downgradedFrom)}`)
  const records = await gateway.sql`select model_id, metadata ->> 'requestedModel' as requested, amount::text from budget_usage_records order by occurred_at`
  t.comment(JSON.stringify(records))
  const [spent] = await gateway.sql<Array<{ total: string }>>`select coalesce(sum(amount), 0)::text as total from budget_usage_allocations where budget_id = ${budget.id}`
  const result = await simulate(gateway, { from: from.toISOString(), to: to.toISOString() })
  const [replayed] = result.budgets
  t.comment(JSON.stringify(replayed!.downgraded))
  t.equal(replayed!.periods[0].spent, String(Number(spent!.total)), 'the replay of reality spends what was spent (a call downgraded again costs what it cost)')
})
