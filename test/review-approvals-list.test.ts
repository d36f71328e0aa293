// Review (approvals): the list's filters and limit, hostile inputs on the three routes, the policy checked on PUT,
// and a request keeping its policy while the alert changes.
import t from 'tap'
import fc from 'fast-check'
import { snapshotTables } from './fixtures/app.js'
import { approvalsGateway } from './fixtures/approvals-gateway.js'

const setup = approvalsGateway


t.test('decidable=true with a limit: the limit counts the requests one may decide, not those filtered out after it', async (t) => {
  const { team, dev, lead } = await setup(t)
  const mine = (await dev('POST', `/${team.id}/approval-requests`, { amount: '10' })).json()
  for (let i = 0; i < 3; i++) t.equal((await lead('POST', `/${team.id}/approval-requests`, { amount: '10' })).statusCode, 201, 'the lead files its own: not its to decide')
  t.same((await lead('GET', '/approval-requests?decidable=true')).json().requests.map((one: { id: string }) => one.id), [mine.id], 'without a limit: the one the lead may decide')
  const limited = (await lead('GET', '/approval-requests?decidable=true&limit=1')).json().requests.map((one: { id: string }) => one.id)
  t.same(limited, [mine.id], 'limit=1: the newest the lead may decide, not an empty page')
})

t.test('held: a PUT with a bad policy is a 400 that changes nothing; a request keeps the policy it was filed under', async (t) => {
  const { team, dev, lead, finance, admin, sql } = await setup(t)
  const request = (await dev('POST', `/${team.id}/approval-requests`, { amount: '800' })).json()
  const before = await snapshotTables(sql)
  const bad = [
    { threshold: 50, actions: ['require-approval'], approvalPolicy: { levels: [{ name: 'a', roles: ['root'] }] } },
    { threshold: 50, actions: ['require-approval'], approvalPolicy: { levels: [{ name: 'a', actors: [''] }] } },
    { threshold: 50, actions: ['require-approval'], approvalPolicy: { levels: [{ name: 'a', roles: ['editor'], upTo: '0' }, { name: 'b', roles: ['admin'] }] } },
    { threshold: 50, actions: ['require-approval'], approvalPolicy: { levels: [{ name: 'a', roles: ['editor'], upTo: '1e3' }, { name: 'b', roles: ['admin'] }] } },
    { threshold: 50, actions: ['require-approval'], approvalPolicy: { levels: [{ name: 'a', roles: ['editor'], upTo: '10000000000000000000' }, { name: 'b', roles: ['admin'] }] } },
    { threshold: 50, actions: ['require-approval'], approvalPolicy: { levels: [{ name: 'a', roles: ['editor', 'editor'] }] } },
    { threshold: 50, actions: ['require-approval'], approvalPolicy: { levels: [] } },
    { threshold: 50, actions: ['require-approval'], approvalPolicy: { levels: [{ name: 'a', roles: ['editor'] }], requestTtlMinutes: 4 } },
    { threshold: 50, actions: ['require-approval'], approvalPolicy: { levels: [{ name: 'a', roles: [] }] } },
    { threshold: 50, actions: ['notify'], approvalPolicy: { levels: [{ name: 'a', roles: ['editor'] }] } }
  ]
  for (const alert of bad) {
    const response = await admin('PUT', `/${team.id}`, { alerts: [alert] })
    t.equal(response.statusCode, 400, `${JSON.stringify(alert.approvalPolicy)}: ${response.body.slice(0, 150)}`)
  }
  t.same(await snapshotTables(sql), before, 'nothing changed')
  // the alert changed: one level of finance now, and then none at all
  t.equal((await admin('PUT', `/${team.id}`, { alerts: [{ threshold: 50, actions: ['require-approval'], approvalPolicy: { levels: [{ name: 'finance', roles: ['approver'] }] } }] })).statusCode, 200)
  t.equal((await admin('PUT', `/${team.id}`, { alerts: [] })).statusCode, 200)
  const decide = `/${team.id}/approval-requests/${request.id}/decisions`
  t.equal((await finance('POST', decide, { level: 1, verdict: 'approve' })).statusCode, 403, 'level 1 is still the lead\'s')
  t.equal((await lead('POST', decide, { level: 1, verdict: 'approve' })).json().nextLevel, 2)
  t.equal((await finance('POST', decide, { level: 2, verdict: 'approve' })).json().state, 'approved')
})

t.test('held: hostile inputs on the three routes: no 5xx, and a 4xx changes nothing', async (t) => {
  const { team, teamB, dev, lead, finance, otherLead, sql } = await setup(t)
  const pending = (await dev('POST', `/${team.id}/approval-requests`, { amount: '800' })).json()
  const who = { dev, lead, finance, otherLead }
  const anything = fc.oneof(fc.string(), fc.integer(), fc.double(), fc.boolean(), fc.constant(null), fc.array(fc.string(), { maxLength: 2 }), fc.object({ maxDepth: 1 }),
    fc.constantFrom('1e3', '-1', '0', '500', '500.0000000001', '99999999999999999999', '2099-01-01T00:00:00Z', '1970-01-01', 'approve', 'reject', 1, 2, 6, 0, -1, 1.5))
  const ids = fc.constantFrom(team.id, teamB.id, pending.id, team.id.toUpperCase(), pending.id.toUpperCase(), '00000000-0000-0000-0000-000000000000', 'x', '%00', '..', '')
  const body = fc.dictionary(fc.constantFrom('amount', 'reason', 'expiresAt', 'level', 'verdict', 'comment', 'x'), anything, { maxKeys: 4 })
  const query = fc.dictionary(fc.constantFrom('state', 'budgetId', 'decidable', 'limit', 'x'), fc.oneof(fc.string({ maxLength: 8 }), fc.constantFrom('pending', 'expired', team.id, teamB.id, 'true', '0', '201', '1')), { maxKeys: 3 })
  await fc.assert(fc.asyncProperty(fc.constantFrom(...Object.keys(who) as Array<keyof typeof who>), fc.integer({ min: 0, max: 2 }), ids, ids, body, query, async (principal, route, id, requestId, payload, q) => {
    const before = await snapshotTables(sql)
    const response = route === 0
      ? await who[principal]('POST', `/${encodeURIComponent(id)}/approval-requests`, payload)
      : route === 1
        ? await who[principal]('GET', `/approval-requests?${new URLSearchParams(q as Record<string, string>).toString()}`)
        : await who[principal]('POST', `/${encodeURIComponent(id)}/approval-requests/${encodeURIComponent(requestId)}/decisions`, payload)
    if (response.statusCode >= 500) throw new Error(`${response.statusCode} ${response.body}`)
    if (response.statusCode >= 400) t.same(await snapshotTables(sql), before, `${response.statusCode} changed nothing`)
    if (route === 1 && response.statusCode === 200 && (principal === 'otherLead')) {
      if (response.json().requests.some((one: { budgetId: string }) => one.budgetId !== teamB.id)) throw new Error(`leak: ${response.body}`)
    }
  }), { numRuns: 150 })
})
