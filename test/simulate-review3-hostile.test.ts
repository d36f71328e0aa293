// Review 3: hostile metadata in usage records, and verdict rules the replay reads differently from decide().
import t from 'tap'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }

const range = () => ({ from: new Date(Date.now() - 60_000).toISOString(), to: new Date(Date.now() + 1000).toISOString() })

t.test('usage recorded through the admin API with a numeric metadata.estimatedCost counts toward its own budget', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const budget = await gateway.createBudget({ name: 'team a', amount: '1000' })
  // recorded on the budget by id, with no scopes in its metadata: it counts toward the budget (allocation)
  const recorded = await gateway.app.inject({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, headers: AUTH, body: { amount: '5', currency: 'USD', metadata: { estimatedCost: 5 } } })
  t.ok(recorded.statusCode < 300, recorded.body)
  const [sum] = await gateway.sql<Array<{ total: string }>>`select sum(amount)::text as total from budget_usage_allocations where budget_id = ${budget.id}`
  const response = await gateway.app.inject({ method: 'POST', url: `${PREFIX}/simulate`, headers: AUTH, body: range() })
  t.equal(response.statusCode, 200, response.body)
  const replayed = (response.json().budgets as Array<{ budgetId: string, periods: Array<{ spent: string }> }>).find((entry) => entry.budgetId === budget.id)
  t.equal(replayed?.periods[0]?.spent, String(Number(sum!.total)), `the replay counts the recorded ${sum!.total} toward the budget it was recorded on`)
})

t.test('a hostile priceMultiplier on a downgradable call: no price past money, the call keeps its recorded cost', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  await gateway.createBudget({ name: 'team a', amount: '1', enforcement: 'soft', alerts: [{ threshold: 10, actions: ['auto-downgrade'] }] })
  const at = new Date(Date.now() - 30_000)
  // gate-shaped records on gpt-4o: the first crosses 10%, the second is downgraded by the replay and repriced
  await gateway.sql`
    insert into budget_usage_records (amount, currency, source, metadata, occurred_at, allocated_by_settlement)
    values (0.5, 'USD', 'gateway', jsonb_build_object('modelId', 'gpt-4o', 'estimatedCost', '0.5', 'teamId', 'team-a', 'inputTokens', 10, 'outputTokens', 10), ${at}, true),
           (0.5, 'USD', 'gateway', jsonb_build_object('modelId', 'gpt-4o', 'estimatedCost', '0.5', 'teamId', 'team-a',
                 'inputTokens', 9007199254740991, 'outputTokens', 0, 'priceMultiplier', '999999999999999/1'), ${new Date(at.getTime() + 1)}, true)`
  const response = await gateway.app.inject({ method: 'POST', url: `${PREFIX}/simulate`, headers: AUTH, body: range() })
  t.equal(response.statusCode, 200, `a record's reported usage does not stop the replay: ${response.statusCode} ${response.body.slice(0, 300)}`)
})

t.test('a shadow budget\'s auto-downgrade downgrades nothing, at the gate or in the replay', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const budget = await gateway.createBudget({ name: 'shadow team', amount: '0.001', enforcement: 'shadow', alerts: [{ threshold: 10, actions: ['auto-downgrade'] }] })
  const from = new Date(Date.now() - 1000)
  const downgraded: Array<string | undefined> = []
  for (let call = 0; call < 5; call++) {
    const response = await gateway.call({ team: 'team-a' }, { model: 'gpt-4o', max_tokens: 20 })
    t.equal(response.statusCode, 200)
    downgraded.push(response.headers['x-budget-downgraded-from'] as string | undefined)
    await gateway.settled()
  }
  await gateway.app.budgetDecisions.flush()
  const to = new Date(Date.now() + 1000)
  t.same(downgraded, [undefined, undefined, undefined, undefined, undefined], 'the gate downgraded nothing (a shadow budget never decides)')
  const [spent] = await gateway.sql<Array<{ total: string }>>`select sum(amount)::text as total from budget_usage_allocations where budget_id = ${budget.id}`
  const response = await gateway.app.inject({ method: 'POST', url: `${PREFIX}/simulate`, headers: AUTH, body: { from: from.toISOString(), to: to.toISOString() } })
  t.equal(response.statusCode, 200, response.body)
  const [replayed] = response.json().budgets
  t.comment(JSON.stringify({ downgraded: replayed.downgraded, spent: replayed.periods[0].spent, real: spent!.total }))
  t.equal(replayed.periods[0].spent, String(Number(spent!.total)), 'the replay of reality spends what was spent')
})
