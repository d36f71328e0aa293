// Alerts follow a budget's definition (issue 21, item 4): a change of its amount or alerts re-evaluates
// its thresholds at once (budget_alerts_follow_definition), so the gate's answer and the status's activeAlerts agree after every
// change, a crossing is queued for notification once, and a crossing that no longer holds stops being
// active while its row stays in the history.
import t, { type Test } from 'tap'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway, spendTo } from './fixtures/gateway.js'

const admin = { authorization: `Bearer ${ADMIN_TOKEN}` }
// A channel that is configured (the deliverer does not run: intervalMs 0), so queued notifications stay queued to be counted.
const notifications = { channels: { ops: { type: 'webhook' as const, url: 'http://127.0.0.1:9/hook' } } }
const halfAndBlock = [
  { threshold: 50, actions: ['notify'], notificationChannels: ['ops'] },
  { threshold: 100, actions: ['block-all'], notificationChannels: ['ops'] }
]

type Gateway = Awaited<ReturnType<typeof buildGateway>>

async function setup (t: Test) {
  const gateway = await buildGateway(t, { notifications })
  const { app, sql } = gateway
  const change = async (id: string, body: Record<string, unknown>) =>
    await app.inject({ method: 'PUT', url: `${PREFIX}/${id}`, headers: admin, body })
  /** Active crossings as the status lists them: "threshold basis actions", sorted. */
  const active = async (id: string): Promise<string[]> =>
    ((await gateway.status(id)).activeAlerts as Array<{ threshold: number, basis: string, actions: string[] }>)
      .map((alert) => `${alert.threshold} ${alert.basis} ${alert.actions.join(',')}`).sort()
  /** Every crossing ever recorded, resolved ones too, with how many notifications each queued. */
  const history = async (id: string): Promise<string[]> =>
    (await sql`
      select h.threshold::int as threshold, h.actions, h.resolved_at is not null as resolved,
             (select count(*)::int from budget_notification_outbox o where o.alert_id = h.id) as queued
      from budget_alert_history h where h.budget_id = ${id} order by h.crossed_at, h.threshold`)
      .map((row) => `${row.threshold as number} ${(row.actions as string[]).join(',')}${row.resolved as boolean ? ' resolved' : ''} queued=${row.queued as number}`)
  return { ...gateway, change, active, history }
}

/** The gate's answer to a fresh call and the status, checked to agree: 402 budget_blocked iff an active crossing has block-all. */
async function gateAgrees (t: Test, gateway: Gateway & { active: (id: string) => Promise<string[]> }, id: string, blocked: boolean, label: string): Promise<void> {
  await gateway.settled()
  const answer = await gateway.call({ team: 'platform' })
  const status = await gateway.status(id)
  const alerts = await gateway.active(id)
  t.equal(answer.statusCode, blocked ? 402 : 200, `${label}: the gate answers ${blocked ? 402 : 200}`)
  if (blocked) t.equal(answer.json().error.code, 'budget_blocked', `${label}: budget_blocked`)
  t.equal(alerts.some((alert) => alert.endsWith('block-all')), blocked, `${label}: activeAlerts ${blocked ? 'has' : 'has no'} block-all (${alerts.join('; ')})`)
  t.equal(status.status === 'blocked', blocked, `${label}: status ${String(status.status)}`)
}

t.test('lowering, raising and changing thresholds: the gate and activeAlerts agree after each change', async (t) => {
  const gateway = await setup(t)
  const { app, createBudget, change, active, history } = gateway
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '0.5', alerts: halfAndBlock })
  await spendTo(app, team.id, '0.3')
  t.same(await active(team.id), ['50 current notify'], '60%: the 50% crossing only')
  await gateAgrees(t, gateway, team.id, false, '60% of 0.5')

  // Lowering 0.5 -> 0.2 puts the spend at 150%: block-all crossed by the change itself.
  t.equal((await change(team.id, { amount: '0.2' })).statusCode, 200)
  t.same(await active(team.id), ['100 current block-all', '50 current notify'], 'lowered: 100% crossed, recorded by the change')
  await gateAgrees(t, gateway, team.id, true, 'lowered to 0.2')
  t.same(await history(team.id), ['50 notify queued=1', '100 block-all queued=1'], 'the new crossing queued for notification')

  // The same change again records nothing new.
  t.equal((await change(team.id, { amount: '0.2' })).statusCode, 200)
  t.same(await history(team.id), ['50 notify queued=1', '100 block-all queued=1'], 'an identical change: nothing new recorded or queued')

  // Raising to 1 puts the spend at 30%: both crossings stop being active, their rows stay.
  t.equal((await change(team.id, { amount: '1' })).statusCode, 200)
  t.same(await active(team.id), [], 'raised: no active crossing')
  await gateAgrees(t, gateway, team.id, false, 'raised to 1')
  t.same(await history(team.id), ['50 notify resolved queued=1', '100 block-all resolved queued=1'], 'kept in the history, marked resolved')

  // Lowering a threshold under the spend: block-all at 20% holds at once.
  const lowered = [{ threshold: 20, actions: ['block-all'], notificationChannels: ['ops'] }]
  t.equal((await change(team.id, { alerts: lowered })).statusCode, 200)
  t.same(await active(team.id), ['20 current block-all'], 'threshold 0.5 -> 0.2: crossed by the change')
  await gateAgrees(t, gateway, team.id, true, 'threshold at 20%')

  // The same threshold with other actions is another crossing: the block stops, the notify one is recorded.
  t.equal((await change(team.id, { alerts: [{ threshold: 20, actions: ['notify'], notificationChannels: ['ops'] }] })).statusCode, 200)
  t.same(await active(team.id), ['20 current notify'], 'actions changed: the block-all crossing resolved, the notify one active')
  await gateAgrees(t, gateway, team.id, false, 'threshold 20% notify only')

  // Back to the first definition at 0.5: 50% crossed again, a new crossing (the old one is history) notified again.
  t.equal((await change(team.id, { amount: '0.5', alerts: halfAndBlock })).statusCode, 200)
  t.same(await active(team.id), ['50 current notify'], 'back at 0.5: 50% active again')
  await gateAgrees(t, gateway, team.id, false, 'back at 0.5')
  t.same(await history(team.id), [
    '50 notify resolved queued=1', '100 block-all resolved queued=1', '20 block-all resolved queued=1',
    '20 notify resolved queued=1', '50 notify queued=1'
  ], 'each crossing recorded and queued once, each that no longer held resolved')
})

t.test('GET {prefix}/:id/alerts says when a crossing was resolved: set once a raise leaves it behind, null while active', async (t) => {
  const gateway = await setup(t)
  const { app, createBudget, change, active } = gateway
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '0.5', alerts: halfAndBlock })
  await spendTo(app, team.id, '0.6')
  type Listed = { threshold: number, actions: string[], crossedAt: string, resolvedAt: string | null }
  const listed = async (): Promise<Listed[]> => {
    const response = await app.inject({ url: `${PREFIX}/${team.id}/alerts`, headers: admin })
    t.equal(response.statusCode, 200)
    return (response.json().alerts as Listed[]).sort((a, b) => a.threshold - b.threshold)
  }
  const crossed = await listed()
  t.same(crossed.map((alert) => [alert.threshold, alert.resolvedAt]), [[50, null], [100, null]], 'both crossings listed, neither resolved')

  const before = Date.now()
  t.equal((await change(team.id, { amount: '1' })).statusCode, 200) // 60%: the 100% crossing no longer holds
  const after = await listed()
  t.equal(after[0]!.resolvedAt, null, '50% still holds at 60%: not resolved')
  const resolvedAt = after[1]!.resolvedAt
  t.type(resolvedAt, 'string', '100% no longer holds: resolvedAt set')
  t.ok(Date.parse(resolvedAt!) >= before - 1000 && Date.parse(resolvedAt!) >= Date.parse(after[1]!.crossedAt), `resolved at the change (${String(resolvedAt)}), after it was crossed`)
  t.same(await active(team.id), ['50 current notify'], 'and the resolved crossing is not in activeAlerts')

  // Lowered again: a new crossing of 100%, active; the resolved one stays in the history as it was.
  t.equal((await change(team.id, { amount: '0.5' })).statusCode, 200)
  const again = (await listed()).filter((alert) => alert.threshold === 100)
  t.same(again.map((alert) => alert.resolvedAt).sort(), [resolvedAt, null].sort(), 'the old crossing keeps its resolvedAt, the new one has none')
})

t.test('a projected block-all stops refusing once a change resolves it', async (t) => {
  const gateway = await setup(t)
  const { app, createBudget, change, active } = gateway
  const projected = [{ threshold: 100, basis: 'projected', actions: ['block-all'], notificationChannels: ['ops'] }]
  // Started now: the forecast extrapolates the spend over the rest of the month, far past the amount.
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1', startDate: new Date().toISOString(), alerts: projected })
  await spendTo(app, team.id, '0.5')
  t.same(await active(team.id), ['100 projected block-all'], 'projected past 100%: crossed')
  await gateAgrees(t, gateway, team.id, true, 'projected crossing')

  t.equal((await change(team.id, { amount: '1000000' })).statusCode, 200)
  t.same(await active(team.id), [], 'raised far past the forecast: resolved')
  await gateAgrees(t, gateway, team.id, false, 'projected crossing resolved')
})

t.test('under concurrent gated load, every change leaves the gate and activeAlerts agreeing', async (t) => {
  const gateway = await setup(t)
  const { app, createBudget, change, call, history } = gateway
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '0.5', alerts: halfAndBlock })
  await spendTo(app, team.id, '0.3')

  // Calls cost about 0.00001 each: the load moves the spend, never across a threshold of these amounts.
  const steps: Array<{ amount: string, blocked: boolean }> = [
    { amount: '0.2', blocked: true }, { amount: '1', blocked: false }, { amount: '0.25', blocked: true },
    { amount: '0.25', blocked: true }, { amount: '0.4', blocked: false }, { amount: '0.1', blocked: true }, { amount: '5', blocked: false }
  ]
  const answers = new Map<number, number>()
  for (const step of steps) {
    const load = Array.from({ length: 12 }, async () => await call({ team: 'platform' }))
    const [changed, ...calls] = await Promise.all([change(team.id, { amount: step.amount }), ...load])
    t.equal(changed!.statusCode, 200, `changed to ${step.amount}`)
    for (const answer of calls) {
      answers.set(answer.statusCode, (answers.get(answer.statusCode) ?? 0) + 1)
      if (answer.statusCode === 402) t.equal(answer.json().error.code, 'budget_blocked', 'a refusal under load is the block')
    }
    await gateAgrees(t, gateway, team.id, step.blocked, `amount ${step.amount} under load`)
  }
  t.same([...answers.keys()].filter((code) => code !== 200 && code !== 402), [], `the load got only 200 and 402 (${JSON.stringify([...answers])})`)

  // Each crossing was queued once: the 100% block crossed at 0.2, 0.25 and 0.1 (resolved in between), never twice in a row.
  const rows = await history(team.id)
  t.equal(rows.filter((row) => row.startsWith('100 ')).length, 3, `block-all crossed three times (${rows.join('; ')})`)
  t.ok(rows.every((row) => row.endsWith('queued=1')), 'every crossing queued one notification')
  const duplicates = await gateway.sql`
    select threshold from budget_alert_history where budget_id = ${team.id} and resolved_at is null
    group by period_start, threshold, basis having count(*) > 1`
  t.same([...duplicates], [], 'one active crossing per threshold')
})

t.test('hostile bodies are refused with 4xx and change neither the budget nor its alerts', async (t) => {
  const gateway = await setup(t)
  const { app, createBudget, change, history, sql } = gateway
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '0.5', alerts: halfAndBlock })
  await spendTo(app, team.id, '0.3')
  const before = { budget: (await app.inject({ url: `${PREFIX}/${team.id}`, headers: admin })).json(), history: await history(team.id) }
  const hostile: Array<Record<string, unknown>> = [
    { amount: '-1' }, { amount: '0' }, { amount: 'NaN' }, { amount: '1e400' }, { amount: '0.00000000001' },
    { alerts: 'none' }, { alerts: [{ threshold: -5, actions: ['block-all'] }] }, { alerts: [{ threshold: 20, actions: ['drop-tables'] }] },
    { alerts: [{ threshold: '20; delete from budget_alert_history', actions: ['block-all'] }] },
    { alerts: [{ threshold: 20, actions: [] }] }, { enforcement: 'none' }, { period: 'fortnightly' }, { amount: '0.2', unknownField: true }
  ]
  for (const body of hostile) {
    const response = await change(team.id, body)
    t.ok(response.statusCode >= 400 && response.statusCode < 500, `${JSON.stringify(body)}: ${response.statusCode}`)
  }
  t.same((await app.inject({ url: `${PREFIX}/${team.id}`, headers: admin })).json(), before.budget, 'the budget unchanged')
  t.same(await history(team.id), before.history, 'no crossing recorded or resolved')
  t.same([...await sql`select 1 from budget_alert_history where resolved_at is not null`], [], 'nothing resolved')
})

t.test('metrics export the blocked state', async (t) => {
  const gateway = await setup(t)
  const { app, createBudget, change } = gateway
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '0.5', metrics: true, alerts: halfAndBlock })
  await spendTo(app, team.id, '0.3')
  const gauge = async () => {
    const text = (await app.inject({ url: `${PREFIX}/metrics`, headers: admin })).body
    return /^relaycore_budget_blocked\{[^}]*\} (\d+)$/m.exec(text)?.[1]
  }
  t.equal(await gauge(), '0', 'not blocked')
  await change(team.id, { amount: '0.2' })
  t.equal(await gauge(), '1', 'blocked by the lowered amount')
  await change(team.id, { amount: '1' })
  t.equal(await gauge(), '0', 'unblocked by the raised amount')
})
