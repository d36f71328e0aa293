// Review of scoped admin access (be14af1): attacks that held, kept as regression tests. Odd id forms that
// PostgreSQL accepts as a uuid, HEAD, trailing slashes, archived and moved budgets, the hierarchy around a
// user, an empty area: a scoped principal reaches nothing outside its area, and is answered alike for
// another team's budget and one that does not exist.
import t from 'tap'
import { randomUUID } from 'node:crypto'
import type { LightMyRequestResponse } from 'fastify'
import { PREFIX, buildApp, snapshotTables } from './fixtures/app.js'

import { MONTHLY, accessApp, create } from './fixtures/access-app.js'

const code = (response: LightMyRequestResponse): string => `${response.statusCode} ${(response.json() as { code?: string }).code}`

async function world (t: Parameters<typeof buildApp>[0]) {
  const app = await accessApp(t)
  const org = await create(app.admin, { name: 'acme', scopeType: 'organization', scopeId: 'acme', amount: '1000' })
  const platform = await create(app.admin, { name: 'platform', scopeType: 'team', scopeId: 'platform', parentId: org.id, amount: '500' })
  const data = await create(app.admin, { name: 'data', scopeType: 'team', scopeId: 'data', parentId: org.id, amount: '300' })
  const alice = await create(app.admin, { name: 'alice', scopeType: 'user', scopeId: 'alice', parentId: platform.id, amount: '50' })
  const bob = await create(app.admin, { name: 'bob', scopeType: 'user', scopeId: 'bob', parentId: data.id, amount: '50' })
  const lead = app.as({ actor: 'lead-platform', role: 'editor', scopes: [{ scopeType: 'team', scopeId: 'platform' }] })
  return { ...app, org, platform, data, alice, bob, lead }
}

/** Forms of an id PostgreSQL reads as the same uuid. */
const forms = (id: string): string[] => [id.toUpperCase(), `{${id}}`, id.replaceAll('-', ''), `{${id.toUpperCase()}}`]

t.test('another team\'s budget in every form PostgreSQL reads as its uuid: refused on reads and writes, as an unknown budget is, and nothing changes', async (t) => {
  const { lead, sql, bob, data, alice } = await world(t)
  const before = await snapshotTables(sql)
  for (const id of forms(bob.id)) {
    for (const [method, suffix, body] of [['GET', '', undefined], ['GET', '/status', undefined], ['GET', '/usage', undefined], ['PUT', '', { amount: '1' }], ['DELETE', '', undefined], ['POST', '/usage', { amount: '1', currency: 'USD' }], ['POST', '/check-constraints', { estimatedCost: '1' }]] as const) {
      const response = await lead({ method, url: `${PREFIX}/${encodeURIComponent(id)}${suffix}`, ...(body === undefined ? {} : { body }) })
      t.equal(code(response), '403 BUDGET_ERR_OUT_OF_SCOPE', `${method} ${suffix || '/'} on ${id}`)
    }
  }
  for (const parentId of forms(data.id)) {
    t.equal(code(await lead({ method: 'POST', url: PREFIX, body: { ...MONTHLY, name: 'x', scopeType: 'user', scopeId: 'x', parentId, amount: '1' } })), '403 BUDGET_ERR_OUT_OF_SCOPE', `create under ${parentId}`)
    t.equal(code(await lead({ method: 'PUT', url: `${PREFIX}/${alice.id}`, body: { parentId } })), '403 BUDGET_ERR_OUT_OF_SCOPE', `move under ${parentId}`)
  }
  t.same(await snapshotTables(sql), before, 'the refusals changed nothing')
  t.equal((await lead({ method: 'GET', url: `${PREFIX}/${alice.id.toUpperCase()}` })).statusCode, 200, 'its own user in upper case is read')
})

t.test('HEAD and a trailing slash reach nothing outside the area', async (t) => {
  const { lead, bob } = await world(t)
  t.equal((await lead({ method: 'HEAD', url: `${PREFIX}/${bob.id}` })).statusCode, 403, 'HEAD of another team\'s budget')
  t.equal((await lead({ method: 'HEAD', url: `${PREFIX}/${randomUUID()}` })).statusCode, 403, 'HEAD of an unknown budget, alike')
  t.equal((await lead({ method: 'HEAD', url: `${PREFIX}/${bob.id}/status` })).statusCode, 403, 'HEAD of its status')
  t.equal((await lead({ method: 'GET', url: `${PREFIX}/${bob.id}/` })).statusCode, 404, 'a trailing slash is no route, for anyone')
  t.equal((await lead({ method: 'GET', url: `${PREFIX}/${bob.id}/status/` })).statusCode, 404)
  t.equal((await lead({ method: 'GET', url: `${PREFIX}/alerts/` })).statusCode, 404)
})

t.test('the area is read at each request: a budget the platform admin moves out is refused at once; an archived root leaves nothing; an empty area sees and makes nothing', async (t) => {
  const { admin, as, lead, alice, data, platform } = await world(t)
  t.equal((await lead({ method: 'GET', url: `${PREFIX}/${alice.id}` })).statusCode, 200)
  t.equal((await admin({ method: 'PUT', url: `${PREFIX}/${alice.id}`, body: { parentId: data.id } })).statusCode, 200, 'the platform admin moves alice to the data team')
  t.equal(code(await lead({ method: 'GET', url: `${PREFIX}/${alice.id}/usage` })), '403 BUDGET_ERR_OUT_OF_SCOPE', 'alice is out of the lead\'s area at once')
  t.same((await lead({ method: 'GET', url: PREFIX })).json().budgets.map((budget: { id: string }) => budget.id), [platform.id])

  const gone = await create(admin, { name: 'gone', scopeType: 'team', scopeId: 'gone', amount: '10' })
  t.equal((await admin({ method: 'DELETE', url: `${PREFIX}/${gone.id}` })).statusCode, 204)
  const ofGone = as({ actor: 'g', role: 'editor', scopes: [{ budgetId: gone.id }, { scopeType: 'team', scopeId: 'gone' }] })
  t.same((await ofGone({ method: 'GET', url: PREFIX })).json().budgets, [], 'an archived root leaves an empty area')
  t.equal(code(await ofGone({ method: 'GET', url: `${PREFIX}/${gone.id}/audit` })), '403 BUDGET_ERR_OUT_OF_SCOPE', 'and its log is not read from it')
  const none = as({ actor: 'n', role: 'admin', scopes: [] })
  t.same((await none({ method: 'GET', url: PREFIX })).json().budgets, [])
  t.equal(code(await none({ method: 'POST', url: PREFIX, body: { ...MONTHLY, name: 'x', scopeType: 'team', scopeId: 'x', amount: '1' } })), '403 BUDGET_ERR_OUT_OF_SCOPE', 'scopes: [] makes no root')
})

t.test('views around a scope: ancestors above the area are cut, another team\'s scope shows nothing, and a lead relabelling its root is refused', async (t) => {
  const { lead, alice, platform, bob } = await world(t)
  const user = (await lead({ method: 'GET', url: `${PREFIX}/hierarchy/user/alice` })).json()
  t.same(user.roots.map((root: { id: string }) => root.id), [platform.id], 'the hierarchy around alice starts at the team, not the organization')
  t.same(user.roots[0].children.map((child: { id: string }) => child.id), [alice.id])
  t.same((await lead({ method: 'GET', url: `${PREFIX}/hierarchy/user/bob` })).json().roots, [], 'another team\'s user: nothing')
  t.same((await lead({ method: 'GET', url: `${PREFIX}/scope/user/bob` })).json().budgets, [])
  t.notMatch((await lead({ method: 'GET', url: `${PREFIX}/hierarchy/team/data` })).body, bob.id)
  t.equal(code(await lead({ method: 'PUT', url: `${PREFIX}/${platform.id}`, body: { scopeId: 'data' } })), '403 BUDGET_ERR_OUT_OF_SCOPE', 'its root relabelled')
  t.equal(code(await lead({ method: 'PUT', url: `${PREFIX}/${platform.id}`, body: { scopeType: 'organization', scopeId: 'acme' } })), '403 BUDGET_ERR_OUT_OF_SCOPE')
})
