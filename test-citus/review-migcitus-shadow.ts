// Review (10c3484): holds on lines with a shadow budget on the Citus cluster: the as-if figures read into
// variables. The twin sequence (a hard budget in one gateway, its shadow twin in another) and concurrent calls
// from two instances on a line with a hard and a shadow budget.
import type { Sql } from 'postgres'
import t from 'tap'
import { buildGateway } from '../test/fixtures/gateway.js'
import { findViolations } from '../test/fixtures/invariants.js'
import { startUpstream } from '../test/fixtures/upstream.js'
import { toUnits } from '../lib/kernel/money.js'

const SEQUENCE = Array.from({ length: 36 }, (_, i) => ({
  model: 'gpt-4o',
  messages: [{ role: 'user', content: `Request number ${i}: say something` }],
  max_tokens: [40, 300, 90, 600, 25, 180, 1200, 60][i % 8]!
}))
const twin = (enforcement: 'hard' | 'shadow') => ({
  amount: '0.002', enforcement, alerts: [{ threshold: 90, actions: ['notify', 'block-all'], notificationChannels: [] }]
})

async function shadowLedger (sql: Sql): Promise<unknown[]> {
  return [
    ...await sql`select 'excludes more than spent' as what, s.budget_id from budget_shadow_windows s join budget_status_cache c using (root_id, budget_id, period_start) where s.excluded_amount > c.current_amount`,
    ...await sql`select 'non-shadow hold marked' as what, r.id from budget_reservations r join budget_definitions d on d.id = r.budget_id and d.root_id = r.root_id where r.as_if_excluded and d.enforcement <> 'shadow'`,
    ...await sql`select 'non-shadow excludes' as what, s.budget_id from budget_shadow_windows s join budget_definitions d on d.id = s.budget_id and d.root_id = s.root_id where d.enforcement <> 'shadow' and s.excluded_amount > 0`
  ]
}

t.test('the twin sequence on the cluster: the shadow twin names each refusal of the hard one, and its as-if spend is the hard spend', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json' })
  const hard = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const shadow = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const hardBudget = await hard.createBudget(twin('hard'))
  const shadowBudget = await shadow.createBudget(twin('shadow'))
  let refused = 0
  for (const [index, body] of SEQUENCE.entries()) {
    const hardAnswer = await hard.call({ team: 'team-a' }, body)
    const shadowAnswer = await shadow.call({ team: 'team-a' }, body)
    t.equal(shadowAnswer.statusCode, 200, `call ${index}: the shadow budget refused nothing ${shadowAnswer.body.slice(0, 200)}`)
    const header = shadowAnswer.headers['x-budget-shadow']
    if (hardAnswer.statusCode === 200) t.equal(header, undefined, `call ${index}: hard admitted, shadow counted nothing`)
    else {
      refused++
      t.equal(hardAnswer.statusCode, 402, `call ${index}: ${hardAnswer.body.slice(0, 200)}`)
      t.equal(header, `${shadowBudget.id};code=${hardAnswer.json().error.code as string};outcome=refused`, `call ${index}: the twin names the refusal`)
    }
    await hard.settled()
    await shadow.settled()
  }
  t.ok(refused > 0 && refused < SEQUENCE.length, `some refused (${refused})`)
  const hardStatus = await hard.sql`select current_amount::text as current from budget_status_cache where budget_id = ${hardBudget.id}`
  const [window] = await shadow.sql`select c.current_amount::text as current, coalesce(s.excluded_amount, 0)::text as excluded
    from budget_status_cache c left join budget_shadow_windows s using (root_id, budget_id, period_start) where c.budget_id = ${shadowBudget.id}`
  t.equal(toUnits(window!.current) - toUnits(window!.excluded), toUnits(hardStatus[0]!.current), 'as-if spend = the hard twin\'s spend')
  t.same(await findViolations(hard.sql), [])
  t.same(await findViolations(shadow.sql), [])
  t.same(await shadowLedger(shadow.sql), [])
})

t.test('a hard and a shadow budget on one line, concurrent calls from two instances: the hard one never exceeded, the ledgers hold', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json' })
  const a = await buildGateway(t, { upstreamServer: upstream.url })
  const b = await buildGateway(t, { upstreamServer: upstream.url, gatewayDatabase: async () => a.url })
  const hard = await a.createBudget({ name: 'hard', scopeType: 'organization', scopeId: 'org-a', amount: '0.05', enforcement: 'hard' })
  const shadow = await a.createBudget({ name: 'shadow', scopeType: 'team', scopeId: 'team-a', amount: '0.01', enforcement: 'shadow' })
  const body = { model: 'gpt-4o', max_tokens: 300 }
  const statuses: number[] = []
  const errors: string[] = []
  await Promise.all(Array.from({ length: 60 }, async (_, i) => {
    const answer = await (i % 2 === 0 ? a : b).call({ team: 'team-a', organization: 'org-a' }, body)
    statuses.push(answer.statusCode)
    if (answer.statusCode !== 200 && answer.statusCode !== 402) errors.push(`${answer.statusCode} ${answer.body.slice(0, 200)}`)
  }))
  t.same(errors, [], 'only admitted or refused')
  await a.settled(20_000)
  const admitted = statuses.filter((s) => s === 200).length
  t.ok(admitted > 0 && admitted < 60, `some admitted (${admitted}), some refused`)
  const [h] = await a.sql`select current_amount::text as current from budget_status_cache where budget_id = ${hard.id}`
  t.ok(toUnits(h!.current) <= toUnits('0.05'), `the hard budget never exceeded (${h!.current as string})`)
  const [s] = await a.sql`select c.current_amount::text as current, coalesce(w.excluded_amount, 0)::text as excluded
    from budget_status_cache c left join budget_shadow_windows w using (root_id, budget_id, period_start) where c.budget_id = ${shadow.id}`
  t.equal(toUnits(s!.current), toUnits(h!.current), 'the shadow budget counted every admitted call\'s spend')
  const counts = await a.sql`select code, outcome, calls::int from budget_shadow_counts where budget_id = ${shadow.id}`
  const counted = counts.reduce((sum, row) => sum + (row.calls as number), 0)
  t.ok(counted >= 1 && counted <= 60, `shadow verdicts counted (${counted}): ${JSON.stringify(counts)}`)
  t.same(await findViolations(a.sql), [], 'invariants')
  t.same(await shadowLedger(a.sql), [], 'shadow ledger')
})

t.test('a shadow budget alone on a line, calls one at a time: each verdict counted (budget_shadow_counts), as on plain PostgreSQL', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, captureLogs: true, gate: { sweepIntervalMs: 0 } })
  const shadow = await gateway.createBudget({ amount: '0.0001', enforcement: 'shadow' })
  for (let i = 0; i < 3; i++) {
    const answer = await gateway.call({ team: 'team-a' }, { model: 'gpt-4o', max_tokens: 500 })
    t.equal(answer.statusCode, 200)
    t.equal(answer.headers['x-budget-shadow'], `${shadow.id};code=budget_exceeded;outcome=refused`, `call ${i}: the verdict named`)
  }
  await gateway.settled()
  const counts = await gateway.sql`select code, outcome, calls::int from budget_shadow_counts where budget_id = ${shadow.id}`
  t.same(counts.map((row) => [row.code, row.outcome, row.calls]), [['budget_exceeded', 'refused', 3]], 'each call counted by the shadow budget')
  t.same(gateway.logs.filter((line) => /shadow/.test(line.msg ?? '')).map((line) => `${line.msg ?? ''} ${JSON.stringify(line.err ?? line.cause ?? '').slice(0, 300)}`), [], 'no shadow note failed')
})
