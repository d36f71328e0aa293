import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { PREFIX, seedBudgetRequest } from './fixtures/app.js'
import { startGatewayProcess } from './fixtures/gateway-process.js'

/** Starts `npm start`'s script the way a new user would: no DATABASE_URL, no ADMIN_TOKEN. */
async function startGateway (dataDir: string) {
  return await startGatewayProcess({ BUDGETS_DATA_DIR: dataDir, DATABASE_URL: undefined, ADMIN_TOKEN: undefined })
}

t.test('npm start with no DATABASE_URL: embedded PostgreSQL, a printed token, and budgets that survive a restart', async (t) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'relaycore-gateway-'))
  t.teardown(async () => await rm(dataDir, { recursive: true, force: true }))

  const first = await startGateway(dataDir)
  t.teardown(async () => await first.stop())
  const body = seedBudgetRequest()
  const unauthorized = await fetch(`${first.url}${PREFIX}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  t.equal(unauthorized.status, 401, 'the admin API wants the token')
  const created = await fetch(`${first.url}${PREFIX}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${first.token}` },
    body: JSON.stringify(body)
  })
  t.equal(created.status, 201)
  const budget = await created.json() as { id: string }
  await first.stop()

  const second = await startGateway(dataDir)
  t.teardown(async () => await second.stop())
  t.not(second.token, first.token, 'a fresh token each start when ADMIN_TOKEN is unset')
  const read = await fetch(`${second.url}${PREFIX}/${budget.id}`, { headers: { authorization: `Bearer ${second.token}` } })
  t.equal(read.status, 200, 'the budget survived the restart')
  t.same(await read.json(), budget)

  const docs = await fetch(`${second.url}/docs/json`)
  t.equal(docs.status, 200, 'the OpenAPI document is served')
  t.match(await docs.json(), { openapi: '3.1.0', paths: { '/api/v1/budgets/': { post: { summary: 'Create a budget' } }, '/v1/chat/completions': { post: {} } } })
  t.equal((await fetch(`${second.url}/docs/static/index.html`)).status, 200, 'and the browsable UI')
})
