// Scoped admin access (lib/access, lib/http/admin/access.ts): a principal's role decides what it may do, its
// scopes which budgets it may see and change. A team lead's day first, then every route against random trees
// and random principals: whatever a principal is answered or changes lies in its area, and a refusal is the
// same for a budget of another team as for one that does not exist, and changes nothing.
import t from 'tap'
import fc from 'fast-check'
import { randomUUID } from 'node:crypto'
import type { LightMyRequestResponse } from 'fastify'
import { PREFIX, buildApp, snapshotTables, type TestApp } from './fixtures/app.js'
import type { AdminRoute } from './fixtures/routes.js'

import { MONTHLY, accessApp, create } from './fixtures/access-app.js'

/** A report's total as a count of ten-thousandths, exactly (the property's usage amounts are whole ten-thousandths). */
function tenThousandths (total: string): bigint {
  const [whole, fraction = ''] = total.split('.')
  return BigInt(whole!) * 10_000n + BigInt(fraction.padEnd(4, '0'))
}

function code (response: LightMyRequestResponse): string {
  return `${response.statusCode} ${(response.json() as { code?: string }).code}`
}

t.test('a team lead manages the budgets under its team, sees nothing of a sibling team, and is told the same for a budget that does not exist', async (t) => {
  const { admin, as, sql } = await accessApp(t)
  const org = await create(admin, { name: 'acme', scopeType: 'organization', scopeId: 'acme', amount: '1000' })
  const platform = await create(admin, { name: 'platform', scopeType: 'team', scopeId: 'platform', parentId: org.id, amount: '500' })
  const data = await create(admin, { name: 'data', scopeType: 'team', scopeId: 'data', parentId: org.id, amount: '300' })
  const crossing = [{ threshold: 50, actions: ['notify'], notificationChannels: ['email'] }]
  const alice = await create(admin, { name: 'alice', scopeType: 'user', scopeId: 'alice', parentId: platform.id, amount: '50', alerts: crossing })
  const bob = await create(admin, { name: 'bob', scopeType: 'user', scopeId: 'bob', parentId: data.id, amount: '50', alerts: crossing })
  const lead = as({ actor: 'lead-platform', role: 'editor', scopes: [{ scopeType: 'team', scopeId: 'platform' }] })

  const listed = (await lead({ method: 'GET', url: PREFIX })).json().budgets.map((budget: { id: string }) => budget.id).sort()
  t.same(listed, [platform.id, alice.id].sort(), 'the list holds its team and what lies under it, nothing else')
  const hierarchy = (await lead({ method: 'GET', url: `${PREFIX}/hierarchy/team/platform` })).json()
  t.same(hierarchy.roots.map((root: { id: string }) => root.id), [platform.id], 'the hierarchy starts at its team: the organization above is not shown')
  t.same((await lead({ method: 'GET', url: `${PREFIX}/scope/team/data` })).json(), { budgets: [] }, 'a sibling team\'s scope lists nothing')

  // another team's budget and a budget that does not exist: the same refusal
  const sibling = await lead({ method: 'GET', url: `${PREFIX}/${data.id}` })
  const unknown = await lead({ method: 'GET', url: `${PREFIX}/${'0'.repeat(8)}-0000-4000-8000-${'0'.repeat(12)}` })
  t.equal(code(sibling), '403 BUDGET_ERR_OUT_OF_SCOPE')
  t.same({ ...sibling.json(), message: sibling.json().message.replace(data.id, '<id>') }, { ...unknown.json(), message: unknown.json().message.replace(/budget '[^']+'/, `budget '<id>'`) },
    'a sibling team\'s budget and an unknown one are refused alike')
  t.equal(code(await lead({ method: 'GET', url: `${PREFIX}/${bob.id}/status` })), '403 BUDGET_ERR_OUT_OF_SCOPE', 'nor its users\' status')

  const before = await snapshotTables(sql)
  const refusals: Array<[string, Parameters<TestApp['admin']>[0], string]> = [
    ['a budget with no parent', { method: 'POST', url: PREFIX, body: { ...MONTHLY, name: 'x', scopeType: 'team', scopeId: 'new', amount: '1' } }, '403 BUDGET_ERR_OUT_OF_SCOPE'],
    ['a budget under the sibling team', { method: 'POST', url: PREFIX, body: { ...MONTHLY, name: 'x', scopeType: 'user', scopeId: 'carol', parentId: data.id, amount: '1' } }, '403 BUDGET_ERR_OUT_OF_SCOPE'],
    ['its own team\'s amount (set by whoever granted it)', { method: 'PUT', url: `${PREFIX}/${platform.id}`, body: { amount: '900' } }, '403 BUDGET_ERR_OUT_OF_SCOPE'],
    ['a move of its user to the sibling team', { method: 'PUT', url: `${PREFIX}/${alice.id}`, body: { parentId: data.id } }, '403 BUDGET_ERR_OUT_OF_SCOPE'],
    ['a move of its user out of every tree', { method: 'PUT', url: `${PREFIX}/${alice.id}`, body: { parentId: null } }, '403 BUDGET_ERR_OUT_OF_SCOPE'],
    ['a move of the sibling\'s user into its team', { method: 'PUT', url: `${PREFIX}/${bob.id}`, body: { parentId: platform.id } }, '403 BUDGET_ERR_OUT_OF_SCOPE'],
    ['the organization deleted', { method: 'DELETE', url: `${PREFIX}/${org.id}?cascade=true` }, '403 BUDGET_ERR_OUT_OF_SCOPE'],
    ['usage on the sibling\'s user', { method: 'POST', url: `${PREFIX}/${bob.id}/usage`, body: { amount: '1', currency: 'USD' } }, '403 BUDGET_ERR_OUT_OF_SCOPE'],
    ['an exchange rate', { method: 'PUT', url: `${PREFIX}/exchange-rates/EUR/USD`, body: { rate: '1.1' } }, '403 BUDGET_ERR_FORBIDDEN']
  ]
  for (const [what, request, expected] of refusals) t.equal(code(await lead(request)), expected, `refused: ${what}`)
  t.same(await snapshotTables(sql), before, 'the refusals changed nothing')

  const carol = await lead({ method: 'POST', url: PREFIX, body: { ...MONTHLY, name: 'carol', scopeType: 'user', scopeId: 'carol', parentId: platform.id, amount: '100' } })
  t.equal(carol.statusCode, 201, 'a budget under its team is made')
  t.equal(carol.json().createdBy, 'lead-platform', 'in its name')
  t.equal((await lead({ method: 'PUT', url: `${PREFIX}/${alice.id}`, body: { amount: '60' } })).statusCode, 200, 'its user\'s amount changed')
  t.equal((await lead({ method: 'PUT', url: `${PREFIX}/${alice.id}`, body: { parentId: carol.json().id } })).statusCode, 200, 'its user moved within its team')
  t.equal((await lead({ method: 'POST', url: `${PREFIX}/${alice.id}/usage`, body: { amount: '1', currency: 'USD' } })).statusCode, 201, 'usage recorded on its user')
  t.equal((await lead({ method: 'GET', url: `${PREFIX}/${platform.id}/status` })).statusCode, 200, 'its team\'s status read')
  const dave = await create(admin, { name: 'dave', scopeType: 'user', scopeId: 'dave', parentId: platform.id, amount: '5' })
  t.equal((await lead({ method: 'DELETE', url: `${PREFIX}/${dave.id}` })).statusCode, 204, 'a budget under its team archived')
  const [entry] = await sql<Array<{ actor: string }>>`select actor from budget_audit_log where action = 'delete' order by at desc limit 1`
  t.equal(entry?.actor, 'lead-platform', 'the audit log names the lead')

  // the feeds: its area's entries only, while the platform admin's hold every team's
  await admin({ method: 'PUT', url: `${PREFIX}/exchange-rates/EUR/USD`, body: { rate: '1.1' } })
  const area = new Set([platform.id, alice.id, carol.json().id])
  const feed = (await lead({ method: 'GET', url: `${PREFIX}/audit?limit=500` })).json().entries as Array<{ budgetId: string | null }>
  t.ok(feed.length > 0 && feed.every((one) => one.budgetId !== null && area.has(one.budgetId)), `the audit feed holds its area's entries only (${feed.length})`)
  const everything = (await admin({ method: 'GET', url: `${PREFIX}/audit?limit=500` })).json().entries as Array<{ budgetId: string | null }>
  t.ok(everything.some((one) => one.budgetId === bob.id) && everything.some((one) => one.budgetId === null), 'the platform admin\'s feed holds the sibling team\'s and the exchange rate\'s')
  for (const [budget, amount] of [[alice.id, '40'], [bob.id, '49']] as const) {
    t.equal((await admin({ method: 'POST', url: `${PREFIX}/${budget}/usage`, body: { amount, currency: 'USD' } })).statusCode, 201)
  }
  const alerts = (await lead({ method: 'GET', url: `${PREFIX}/alerts?limit=500` })).json().alerts as Array<{ budgetId: string }>
  const allAlerts = (await admin({ method: 'GET', url: `${PREFIX}/alerts?limit=500` })).json().alerts as Array<{ budgetId: string }>
  t.ok(allAlerts.some((one) => one.budgetId === bob.id), 'the sibling\'s user crossed a threshold')
  t.ok(alerts.length > 0 && alerts.every((one) => area.has(one.budgetId)), `the alerts feed holds its area's crossings only (${alerts.length})`)
})

t.test('roles: a viewer reads, an approver decides approvals but changes no budget, an editor changes budgets but decides no approval, and only an admin without scopes touches what every tree shares', async (t) => {
  const { admin, as } = await accessApp(t)
  const team = await create(admin, { name: 'platform', scopeType: 'team', scopeId: 'platform', amount: '500', alerts: [{ threshold: 50, actions: ['require-approval'] }] })
  const scopes = [{ budgetId: team.id }]
  const viewer = as({ actor: 'v', role: 'viewer', scopes })
  const approver = as({ actor: 'finance', role: 'approver', scopes })
  const editor = as({ actor: 'lead', role: 'editor', scopes })
  const scopedAdmin = as({ actor: 'org-admin', role: 'admin', scopes })
  const everywhereEditor = as({ actor: 'ops', role: 'editor', scopes: null })
  const approval = { method: 'POST' as const, url: `${PREFIX}/${team.id}/approvals`, body: { amount: '10', reason: 'launch week' } }
  const usage = { method: 'POST' as const, url: `${PREFIX}/${team.id}/usage`, body: { amount: '1', currency: 'USD' } }
  const rate = { method: 'PUT' as const, url: `${PREFIX}/exchange-rates/EUR/USD`, body: { rate: '1.1' } }

  t.equal((await viewer({ method: 'GET', url: `${PREFIX}/${team.id}/status` })).statusCode, 200, 'a viewer reads')
  t.equal(code(await viewer(usage)), '403 BUDGET_ERR_FORBIDDEN', 'a viewer records no usage')
  t.equal(code(await viewer(approval)), '403 BUDGET_ERR_FORBIDDEN', 'a viewer decides no approval')
  t.equal(code(await approver(usage)), '403 BUDGET_ERR_FORBIDDEN', 'an approver records no usage')
  t.equal((await approver(approval)).statusCode, 201, 'an approver grants an approval in its area')
  t.equal(code(await editor(approval)), '403 BUDGET_ERR_FORBIDDEN', 'an editor decides no approval')
  t.equal((await editor(usage)).statusCode, 201, 'an editor records usage in its area')
  t.equal(code(await scopedAdmin(rate)), '403 BUDGET_ERR_FORBIDDEN', 'an admin with scopes sets no exchange rate')
  t.equal(code(await scopedAdmin({ method: 'GET', url: `${PREFIX}/channels` })), '403 BUDGET_ERR_FORBIDDEN', 'nor reads the channels')
  t.equal(code(await everywhereEditor(rate)), '403 BUDGET_ERR_FORBIDDEN', 'an editor without scopes sets no exchange rate either')
  t.equal((await everywhereEditor({ method: 'GET', url: `${PREFIX}/audit` })).statusCode, 200, 'an editor without scopes reads the feed of every tree')
  t.equal((await admin(rate)).statusCode, 201, 'the platform admin sets it')
  t.equal((await scopedAdmin({ method: 'GET', url: `${PREFIX}/no/such/route` })).statusCode, 404, 'a route that does not exist is a 404 for anyone')
})

t.test('GET /access tells each principal its role, permissions, scopes and the roots of its area', async (t) => {
  const { admin, as } = await accessApp(t)
  const org = await create(admin, { name: 'acme', scopeType: 'organization', scopeId: 'acme', amount: '1000' })
  const team = await create(admin, { name: 'platform', scopeType: 'team', scopeId: 'platform', parentId: org.id, amount: '500' })
  const user = await create(admin, { name: 'alice', scopeType: 'user', scopeId: 'alice', parentId: team.id, amount: '50' })
  const other = await create(admin, { name: 'globex', scopeType: 'organization', scopeId: 'globex', amount: '1000' })
  const read = async (principal: unknown) => (await as(principal)({ method: 'GET', url: `${PREFIX}/access` })).json()
  t.same(await admin({ method: 'GET', url: `${PREFIX}/access` }).then((response) => response.json()),
    { actor: 'admin', role: 'admin', permissions: ['read', 'write', 'approve', 'platform'], scopes: null, roots: null }, 'the platform admin: everything, every tree')
  const scopes = [{ scopeType: 'team', scopeId: 'platform' }, { budgetId: user.id.toUpperCase() }, { budgetId: other.id }]
  t.same(await read({ actor: 'lead', role: 'editor', scopes }),
    { actor: 'lead', role: 'editor', permissions: ['read', 'write'], scopes: [scopes[0], { budgetId: user.id }, scopes[2]], roots: [team.id, other.id].sort() },
    'a lead: read and write; the user named inside its team is no root of its own')
  t.same((await read({ actor: 'finance', role: 'approver', scopes: null })).permissions, ['read', 'approve'])
  t.same((await read({ actor: 'org-admin', role: 'admin', scopes: [{ budgetId: org.id }] })).permissions, ['read', 'write', 'approve'], 'an admin with scopes is no platform admin')
  t.same((await read({ actor: 'nobody', role: 'viewer', scopes: [] })), { actor: 'nobody', role: 'viewer', permissions: ['read'], scopes: [], roots: [] }, 'no scopes granted: an empty area')
})

t.test('a principal badly made is refused with 401, as a missing one is: access fails closed', async (t) => {
  const { as } = await accessApp(t)
  const bad: unknown[] = [
    { actor: 'x', role: 'root', scopes: null }, { actor: '', role: 'viewer', scopes: null }, { actor: 'x', role: 'viewer' }, { actor: 'x', role: 'admin', scopes: undefined }, { actor: ' ', role: 'viewer' }, { role: 'viewer' }, { actor: 'x' },
    { actor: 'x', role: 'viewer', scopes: 'team:platform' }, { actor: 'x', role: 'viewer', scopes: [{ budgetId: 'not-a-uuid' }] },
    { actor: 'x', role: 'viewer', scopes: [{ scopeType: 'galaxy', scopeId: 'a' }] }, { actor: 'x', role: 'viewer', scopes: [{ scopeType: 'team', scopeId: 'a b' }] },
    { actor: 'x', role: 'viewer', scopes: [{ scopeType: 'team', scopeId: 'a', budgetId: randomUUID() }] }, { actor: 'x', role: 'viewer', scopes: [null] },
    { actor: 'x', role: 'viewer', scopes: null, admin: true }, { actor: 'x\u0000', role: 'viewer', scopes: null }, { actor: 'x'.repeat(201), role: 'viewer', scopes: null }, [], 0, null, ''
  ]
  for (const principal of bad) {
    const response = await as(principal)({ method: 'GET', url: PREFIX })
    t.equal(code(response), '401 BUDGET_ERR_UNAUTHORIZED', `refused: ${JSON.stringify(principal)}`)
  }
  t.equal((await as({ actor: 'x', role: 'viewer', scopes: [] })({ method: 'GET', url: PREFIX })).json().budgets.length, 0, 'no scopes at all: a principal that sees nothing')
})

t.test('every admin route says what it needs; none is open to a scoped principal by omission', async (t) => {
  const { routes } = await buildApp(t)
  const permissions = new Set(['read', 'write', 'approve', 'platform'])
  for (const route of routes) {
    t.ok(route.access.access === undefined || permissions.has(route.access.access), `${route.method} ${route.url}: ${route.access.access ?? 'platform (by default)'}`)
    if (route.url.startsWith(`${PREFIX}/:id`)) {
      t.ok(route.access.budgetParam === true || route.access.access === undefined || route.access.access === 'platform', `${route.method} ${route.url}: its :id is checked against the area`)
    }
  }
})

// ---- every route, random trees, random principals -------------------------------------------------------

interface Node { parent: number | null, scopeType: 'organization' | 'team' | 'user', scopeKey: string }

/** A forest of up to two organizations, each with teams and users; scope ids repeat so a scope can name several budgets. */
const forest = fc.array(fc.record({ teams: fc.array(fc.array(fc.constantFrom('u1', 'u2', 'u3'), { maxLength: 2 }), { maxLength: 2 }) }), { minLength: 1, maxLength: 2 })
  .map((orgs) => {
    const nodes: Node[] = []
    orgs.forEach((org, o) => {
      const orgIndex = nodes.push({ parent: null, scopeType: 'organization', scopeKey: `org${o}` }) - 1
      org.teams.forEach((users, k) => {
        const teamIndex = nodes.push({ parent: orgIndex, scopeType: 'team', scopeKey: `team${k}` }) - 1
        for (const user of users) nodes.push({ parent: teamIndex, scopeType: 'user', scopeKey: user })
      })
    })
    return nodes
  })

const scopeChoice = fc.oneof(fc.record({ by: fc.constant('budget' as const), index: fc.nat() }), fc.record({ by: fc.constant('scope' as const), index: fc.nat() }))
const principalShape = fc.record({
  role: fc.constantFrom('viewer', 'editor', 'approver', 'admin'),
  scopes: fc.option(fc.array(scopeChoice, { maxLength: 2 }), { freq: 5 })
})

const GRANTS: Record<string, string[]> = { viewer: ['read'], editor: ['read', 'write'], approver: ['read', 'approve'], admin: ['read', 'write', 'approve', 'platform'] }

/** What the route should answer the principal, by the test's own reading of the rules: a 403 code, or null (the route may go on). */
function expectedRefusal (route: AdminRoute, role: string, scoped: boolean, targetInArea: boolean): string | null {
  const needs = route.access.access ?? 'platform'
  if (!GRANTS[role]!.includes(needs) || (needs === 'platform' && scoped)) return 'BUDGET_ERR_FORBIDDEN'
  if (!scoped) return null
  if (route.access.budgetParam === true && !targetInArea) return 'BUDGET_ERR_OUT_OF_SCOPE'
  return null
}

t.test('every route, random trees and principals: a principal is refused exactly outside its role and area, sees only its area, and a refusal changes nothing', async (t) => {
  const { admin, as, sql, routes } = await accessApp(t)
  let run = 0
  await fc.assert(fc.asyncProperty(forest, principalShape, fc.nat(), async (nodes, shape, pick) => {
    run++
    const ids: string[] = []
    for (const node of nodes) {
      const amount = node.parent === null ? '1000' : nodes[node.parent]!.parent === null ? '100' : '10'
      ids.push((await create(admin, { name: `${node.scopeType} ${node.scopeKey}`, scopeType: node.scopeType, scopeId: `r${run}-${node.scopeKey}`, amount, parentId: node.parent === null ? null : ids[node.parent] })).id)
    }
    // the area by the test's own walk: the budgets the scopes name, and every descendant
    const scopes = shape.scopes === null
      ? null
      : shape.scopes.map((choice) => {
        const node = nodes[choice.index % nodes.length]!
        return choice.by === 'budget' ? { budgetId: ids[choice.index % nodes.length]! } : { scopeType: node.scopeType, scopeId: `r${run}-${node.scopeKey}` }
      })
    const named = new Set(nodes.flatMap((node, i) => scopes?.some((scope) => 'budgetId' in scope ? scope.budgetId === ids[i] : scope.scopeType === node.scopeType && scope.scopeId === `r${run}-${node.scopeKey}`) === true ? [i] : []))
    const inArea = (i: number): boolean => named.has(i) || (nodes[i]!.parent !== null && inArea(nodes[i]!.parent!))
    const area = new Set(ids.filter((_id, i) => inArea(i)))
    const call = as({ actor: `p${run}`, role: shape.role, scopes })

    // the list: this run's budgets it shows are its area's (all of them, when scoped)
    if (GRANTS[shape.role]!.includes('read')) {
      const listed = new Set<string>()
      for (let cursor: string | null = null, pages = 0; pages < 50; pages++) {
        const page: { budgets: Array<{ id: string }>, nextCursor: string | null } = (await call({ method: 'GET', url: `${PREFIX}?limit=500${cursor === null ? '' : `&cursor=${cursor}`}` })).json()
        for (const budget of page.budgets) listed.add(budget.id)
        cursor = page.nextCursor
        if (cursor === null) break
      }
      const mine = ids.filter((id) => listed.has(id))
      if (scopes === null) t.same(mine, ids, 'without scopes: every budget listed')
      else {
        t.same(mine, ids.filter((id) => area.has(id)), 'scoped: its area listed, nothing else of this run')
        t.ok([...listed].every((id) => area.has(id)), 'and nothing of another run')
      }
    }

    const outside = ids.find((id) => !area.has(id))
    const inside = [...area][pick % Math.max(area.size, 1)]

    // the reads over many budgets: a usage record on each of this run's budgets (in ten-thousandths: i + 1);
    // the report grouped by budget holds exactly the area's, its metrics label the area's budgets alone
    for (const [i, id] of ids.entries()) {
      t.equal((await admin({ method: 'POST', url: `${PREFIX}/${id}/usage`, body: { amount: `0.${String(i + 1).padStart(4, '0')}`, currency: 'USD' } })).statusCode, 201)
    }
    if (GRANTS[shape.role]!.includes('read')) {
      const report: { groups: Array<{ key: string | null, total: string }> } = (await call({ method: 'GET', url: `${PREFIX}/reports/spend?groupBy=scope` })).json()
      const expected = new Map<string, bigint>()
      for (const [i, node] of nodes.entries()) {
        if (scopes !== null && !area.has(ids[i]!)) continue
        const key = `${node.scopeType}:r${run}-${node.scopeKey}`
        expected.set(key, (expected.get(key) ?? 0n) + BigInt(i + 1))
      }
      const reported = new Map(report.groups.filter((group) => scopes !== null || group.key?.includes(`:r${run}-`) === true).map((group) => [String(group.key), tenThousandths(group.total)]))
      t.same(Object.fromEntries(reported), Object.fromEntries(expected), scopes === null ? 'the report holds every budget of this run' : 'the report holds its area\'s budgets, at their own usage, and nothing else')
      const metrics = (await call({ method: 'GET', url: `${PREFIX}/metrics` })).body
      const labelled = new Set([...metrics.matchAll(/budget_id="([^"]+)"/g)].map((match) => match[1]!))
      if (scopes !== null) {
        t.ok([...labelled].every((id) => area.has(id)), 'its metrics label its area\'s budgets alone')
        t.equal(labelled.size, Math.min(area.size, 10), 'its top spenders, up to topBudgets')
        t.notOk(/^relaycore_budget_(decisions|reservation|settlement|live|sweeper|notifications|unbudgeted|shadow)/m.test(metrics), 'and no series of the gate')
      }
    }
    // a usage batch: a record on a budget in the area, one outside, one that does not exist, one by scopes
    if (GRANTS[shape.role]!.includes('write')) {
      const someNode = nodes[pick % nodes.length]!
      const records = [inside, outside, randomUUID()].map((budgetId) => budgetId === undefined ? null : { budgetId, amount: '0.00001', currency: 'USD' })
      const sent = [...records.filter((record) => record !== null), { scopes: { [someNode.scopeType]: `r${run}-${someNode.scopeKey}` }, amount: '0.00001', currency: 'USD' }]
      const answer = (await call({ method: 'POST', url: `${PREFIX}/usage/batch`, body: { records: sent } })).json()
      const statuses = answer.results.map((result: { status: string, error?: { code: string } }) => result.status === 'refused' ? result.error!.code : result.status)
      const wanted = sent.map((record) => {
        if ('scopes' in record) return scopes === null ? 'created' : 'BUDGET_ERR_OUT_OF_SCOPE'
        if (scopes !== null && !area.has(record.budgetId!)) return 'BUDGET_ERR_OUT_OF_SCOPE'
        return ids.includes(record.budgetId!) ? 'created' : 'BUDGET_ERR_NOT_FOUND'
      })
      t.same(statuses, wanted, 'a batch: each record refused exactly outside the area')
    }

    // every route, on a budget in the area, one outside it, and one that does not exist
    const targets = [inside, outside, randomUUID()].filter((id): id is string => id !== undefined)
    for (const route of routes) {
      for (const target of targets) {
        const scoped = scopes !== null
        const refusal = expectedRefusal(route, shape.role, scoped, area.has(target))
        // a delete that would go through archives the budget: the property asks only about refusals there
        if (route.method === 'DELETE' && refusal === null) continue
        const url = route.url.replace(':id', target).replace(':alertId', randomUUID()).replace(':name', 'email').replace(':from', 'EUR').replace(':to', 'USD').replace(':type', 'team')
        const before = refusal === null ? null : await snapshotTables(sql)
        const response = await call({ method: route.method as 'GET', url, ...(route.method === 'GET' || route.method === 'DELETE' ? {} : { body: {} }) })
        if (refusal !== null) {
          // HEAD answers without a body: its status says it
          if (response.statusCode !== 403 || (route.method !== 'HEAD' && response.json().code !== refusal)) t.fail(`${route.method} ${url} as ${shape.role}${scoped ? ' (scoped)' : ''}: expected 403 ${refusal}, got ${response.statusCode} ${response.body}`)
          if (JSON.stringify(await snapshotTables(sql)) !== JSON.stringify(before)) t.fail(`${route.method} ${url}: a refusal changed the tables`)
        } else {
          if (response.statusCode === 403 || response.statusCode >= 500) t.fail(`${route.method} ${url} as ${shape.role}${scoped ? ' (scoped)' : ''}: expected to go on, got ${response.statusCode} ${response.body}`)
        }
      }
    }
  }), { numRuns: Number(process.env.ACCESS_RUNS ?? 12), seed: 2412 })
  t.pass(`${run} random trees and principals, every route`)
})
