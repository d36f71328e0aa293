// Review of scoped reads (11485a1): usage batches, the decision log and the gauges as a team lead sees them.
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { PREFIX, snapshotTables } from './fixtures/app.js'
import { accessApp, create } from './fixtures/access-app.js'

async function setup (t: Parameters<typeof accessApp>[0]) {
  const app = await accessApp(t)
  const { admin, as } = app
  const org = await create(admin, { name: 'acme', scopeType: 'organization', scopeId: 'acme', amount: '1000', metrics: true })
  const teamA = await create(admin, { name: 'team a', scopeType: 'team', scopeId: 'team-a', parentId: org.id, amount: '100' })
  const teamB = await create(admin, { name: 'team b', scopeType: 'team', scopeId: 'team-b', parentId: org.id, amount: '100', metrics: true })
  const alice = await create(admin, { name: 'alice', scopeType: 'user', scopeId: 'alice', parentId: teamA.id, amount: '10' })
  const bob = await create(admin, { name: 'bob secret', scopeType: 'user', scopeId: 'bob', parentId: teamB.id, amount: '10' })
  const lead = as({ actor: 'lead-a', role: 'editor', scopes: [{ scopeType: 'team', scopeId: 'team-a' }] })
  return { ...app, org, teamA, teamB, alice, bob, lead }
}

type Result = { index: number, status: string, record?: { budgetId: string | null, amount: string }, error?: { code: string, message: string, field?: string } }

t.test('held: a batch refuses a sibling\'s budget as a budget that does not exist, in any case, and stores nothing for it', async (t) => {
  const { lead, alice, bob, sql } = await setup(t)
  const unknown = randomUUID()
  const before = await snapshotTables(sql)
  const sent = [bob.id, unknown, bob.id.toUpperCase(), unknown.toUpperCase()].map((budgetId) => ({ budgetId, amount: '1', currency: 'USD', metadata: { requestId: `k-${budgetId}` } }))
  const answer = await lead({ method: 'POST', url: `${PREFIX}/usage/batch`, body: { records: sent } })
  t.equal(answer.statusCode, 200)
  const results = answer.json().results as Result[]
  const shape = (r: Result, id: string) => JSON.stringify(r).replaceAll(id, '<id>').replace(/"index":\d+/, '')
  t.equal(shape(results[0]!, bob.id), shape(results[1]!, unknown), 'sibling and unknown: the same answer apart from the id')
  t.equal(shape(results[2]!, bob.id.toUpperCase()), shape(results[3]!, unknown.toUpperCase()), 'in upper case too')
  t.same(await snapshotTables(sql), before, 'the refused records changed nothing')
  // an upper-case id of its own user is taken, as the single route takes it
  const own = (await lead({ method: 'POST', url: `${PREFIX}/usage/batch`, body: { records: [{ budgetId: alice.id.toUpperCase(), amount: '1', currency: 'USD' }] } })).json().results[0] as Result
  t.equal(own.status, 'created')
  t.equal(own.record!.budgetId, alice.id)
})

t.test('held: a key another tree used conflicts without naming its budget or amount; a replay of a record moved out shows no budget', async (t) => {
  const { admin, lead, alice, bob, teamA, teamB } = await setup(t)
  t.equal((await admin({ method: 'POST', url: `${PREFIX}/${bob.id}/usage`, body: { amount: '3.1415', currency: 'USD', metadata: { requestId: 'shared-key' } } })).statusCode, 201)
  t.equal((await admin({ method: 'POST', url: `${PREFIX}/usage/batch`, body: { records: [{ scopes: { team: 'team-b', user: 'bob' }, amount: '2.7182', currency: 'USD', metadata: { requestId: 'scoped-key' } }] } })).statusCode, 200)
  const answer = await lead({
    method: 'POST',
    url: `${PREFIX}/usage/batch`,
    body: {
      records: [
        { budgetId: alice.id, amount: '1', currency: 'USD', metadata: { requestId: 'shared-key' } },
        { budgetId: alice.id, amount: '3.1415', currency: 'USD', metadata: { requestId: 'scoped-key' } },
        { budgetId: alice.id, amount: '1', currency: 'USD', metadata: { requestId: 'mine' } },
        { budgetId: alice.id, amount: '2', currency: 'USD', metadata: { requestId: 'mine' } }
      ]
    }
  })
  t.equal(answer.statusCode, 200)
  const results = answer.json().results as Result[]
  t.same(results.map((r) => r.status === 'refused' ? r.error!.code : r.status), ['BUDGET_ERR_IDEMPOTENCY_CONFLICT', 'BUDGET_ERR_IDEMPOTENCY_CONFLICT', 'created', 'BUDGET_ERR_IDEMPOTENCY_CONFLICT'])
  for (const secret of [bob.id, teamB.id, '3.1415', '2.7182', 'bob']) t.notOk(answer.body.includes(secret), `no ${secret}`)

  // its record, then alice moved to team b by the admin: the replay shows no budget
  await admin({ method: 'PUT', url: `${PREFIX}/${alice.id}`, body: { parentId: teamB.id } })
  const replay = (await lead({ method: 'POST', url: `${PREFIX}/usage/batch`, body: { records: [{ budgetId: alice.id, amount: '1', currency: 'USD', metadata: { requestId: 'mine' } }] } })).json().results[0] as Result
  t.equal(replay.status, 'refused', 'alice is outside the area now: refused before anything is read')
  void teamA
})

t.test('held: 10,000 records from a lead, half outside its area, answer each and store the inside half', async (t) => {
  const { lead, alice, bob, sql } = await setup(t)
  const records = Array.from({ length: 10_000 }, (_, i) => ({ budgetId: i % 2 === 0 ? alice.id : (i % 4 === 1 ? bob.id : randomUUID()), amount: '0.0001', currency: 'USD', metadata: { requestId: `bulk-${i}` } }))
  const started = Date.now()
  const answer = await lead({ method: 'POST', url: `${PREFIX}/usage/batch`, body: { records } })
  t.equal(answer.statusCode, 200)
  const body = answer.json()
  t.equal(body.created, 5000)
  t.equal(body.refused, 5000)
  t.ok((body.results as Result[]).every((r) => r.index % 2 === 0 ? r.status === 'created' : r.error?.code === 'BUDGET_ERR_OUT_OF_SCOPE'))
  t.equal((await sql`select count(*)::int as n from budget_usage_records where budget_id = ${bob.id}`)[0]!.n, 0)
  t.comment(`10,000 records in ${Date.now() - started} ms`)
})

t.test('held: the decision log shows the area\'s binding budgets alone, across cursor pages, and a sibling\'s id as an unknown one', async (t) => {
  const { lead, sql, teamA, teamB, alice, org } = await setup(t)
  const at = Date.now()
  const rows: Array<[string | null, string | null]> = [
    [teamA.id, 'team a'], [teamB.id, 'team b'], [null, null], [alice.id, 'alice'], [org.id, 'acme'], [teamB.id, 'team b'], [teamA.id, 'team a']
  ]
  for (const [i, [id, name]] of rows.entries()) {
    await sql`insert into budget_decision_log (at, request_id, api, outcome, code, team_id, model, estimate, currency, budget_id, budget_name, budget_limit, budget_current, budget_reserved)
      values (${new Date(at - i * 1000).toISOString()}::timestamptz, ${`req-${i}`}, 'chat', 'refused', 'budget_exceeded', 'team-a', 'gpt-4o', 1, 'USD', ${id}::uuid, ${name}, ${id === null ? null : 10}, ${id === null ? null : 9}, ${id === null ? null : 0})`
  }
  const seen: string[] = []
  let cursor: string | null = null
  do {
    const page = await lead({ method: 'GET', url: `${PREFIX}/decisions?limit=1${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}` })
    t.equal(page.statusCode, 200)
    seen.push(...page.json().decisions.map((d: { budget: { id: string } | null }) => d.budget?.id ?? 'null'))
    cursor = page.json().nextCursor
  } while (cursor !== null)
  t.same(seen, [teamA.id, alice.id, teamA.id], 'its area\'s decisions, newest first, one page at a time')
  const sibling = await lead({ method: 'GET', url: `${PREFIX}/decisions?budgetId=${teamB.id}` })
  const unknown = await lead({ method: 'GET', url: `${PREFIX}/decisions?budgetId=${randomUUID()}` })
  t.same([sibling.statusCode, sibling.json()], [unknown.statusCode, unknown.json()])
  const upper = await lead({ method: 'GET', url: `${PREFIX}/decisions?budgetId=${alice.id.toUpperCase()}` })
  t.same(upper.json().decisions.map((d: { budget: { id: string } }) => d.budget.id), [alice.id])
})

t.test('held: the lead\'s gauges hold its area\'s top spenders while the admin\'s, scraped at once, hold every tree\'s', async (t) => {
  const { admin, lead, alice, teamA, bob, org } = await setup(t)
  // a dozen big spenders in team b's tree: the area's small spender is still among the lead's top ones
  const big = []
  for (let i = 0; i < 12; i++) {
    const b = await create(admin, { name: `big ${i}`, scopeType: 'user', scopeId: `big-${i}`, parentId: bob.id, amount: '10' })
    await admin({ method: 'POST', url: `${PREFIX}/${b.id}/usage`, body: { amount: '5', currency: 'USD' } })
    big.push(b.id)
  }
  await admin({ method: 'POST', url: `${PREFIX}/${alice.id}/usage`, body: { amount: '0.01', currency: 'USD' } })
  for (const id of [alice.id, teamA.id, ...big, bob.id, org.id]) await admin({ method: 'GET', url: `${PREFIX}/${id}/status` })
  const ids = (body: string) => new Set([...body.matchAll(/budget_id="([^"]+)"/g)].map((m) => m[1]!))
  for (let round = 0; round < 3; round++) {
    const [a, l, l2] = await Promise.all([admin({ method: 'GET', url: `${PREFIX}/metrics` }), lead({ method: 'GET', url: `${PREFIX}/metrics` }), lead({ method: 'GET', url: `${PREFIX}/metrics` })])
    t.same([...ids(l.body)].sort(), [alice.id, teamA.id].sort(), 'the lead: its area alone')
    t.same(l.body.replace(/relaycore_budget_seconds_to_reset\{[^\n]*\n/g, ''), l2.body.replace(/relaycore_budget_seconds_to_reset\{[^\n]*\n/g, ''))
    t.notOk(/bob|big|acme|team-b/.test(l.body), 'no names or scope ids of another tree')
    // the top 10: the organization and team b's line, then 7 of the 12 big spenders at 5 each (a tie ordered by id)
    t.ok(ids(a.body).has(org.id) && big.filter((id) => ids(a.body).has(id)).length === 7, 'the admin: every tree')
    t.ok(a.body.includes('relaycore_budget_gate_decisions_total'), 'with the gate\'s series')
  }
})
