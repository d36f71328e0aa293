// The example gateway's ADMIN_KEYS (examples/admin-keys.ts): each key a principal limited to its role and
// budget subtrees, beside ADMIN_TOKEN (the platform admin). Parsed strictly, held as digests, and the real
// gateway process enforces them on the admin API and on its own /metrics.
import t from 'tap'
import { parseAdminKeys } from '../examples/admin-keys.js'
import { createTestDatabase } from './fixtures/database.js'
import { startGatewayProcess } from './fixtures/gateway-process.js'

const LEAD = 'lead-platform-key-0123456789'
const VIEWER = 'viewer-everywhere-key-0123456789'
const ADMIN_TOKEN = 'admin-keys-test-token-0123456789'

t.test('ADMIN_KEYS is parsed strictly: every mistake stops the start with a message that names the key by its place, never by its text', async (t) => {
  const keys = parseAdminKeys(JSON.stringify({ [LEAD]: { actor: 'lead', role: 'editor', scopes: [{ scopeType: 'team', scopeId: 'platform' }] }, [VIEWER]: { actor: 'v', role: 'viewer', scopes: null } }))
  t.equal(keys.size, 2)
  t.notOk([...keys.keys()].some((digest) => digest.includes(LEAD)), 'held as digests')
  const bad: Array<[string, RegExp]> = [
    ['not json', /not JSON/],
    ['[]', /JSON object of one or more admin keys/],
    ['{}', /JSON object of one or more admin keys/],
    [JSON.stringify({ short: { actor: 'a', role: 'viewer', scopes: null } }), /key #1 must be at least 16 printable characters/],
    [JSON.stringify({ [LEAD]: { actor: 'a', role: 'owner', scopes: null } }), /key #1 must map to \{"actor"/],
    [JSON.stringify({ [LEAD]: { actor: 'a', role: 'admin' } }), /key #1 must map to .*or null for every tree/],
    [JSON.stringify({ [LEAD]: 'admin' }), /key #1 must map to/],
    [JSON.stringify({ [LEAD]: true }), /key #1 must map to/],
    [JSON.stringify({ [LEAD]: { actor: 'a', role: 'viewer', scopes: null }, [VIEWER]: { actor: 'b', role: 'viewer', scopes: [{ budgetId: 'x' }] } }), /key #2 must map to/]
  ]
  for (const [text, message] of bad) {
    t.throws(() => parseAdminKeys(text), message, text.slice(0, 60))
    try { parseAdminKeys(text) } catch (error) { t.notMatch((error as Error).message, LEAD, 'the message does not echo a key') }
  }
})

t.test('the example gateway process: a lead\'s key works within its team, a viewer\'s reads only, the admin token stays the platform admin, and /metrics refuses a scoped key', async (t) => {
  const keys = {
    [LEAD]: { actor: 'lead-platform', role: 'editor', scopes: [{ scopeType: 'team', scopeId: 'platform' }] },
    [VIEWER]: { actor: 'auditor', role: 'viewer', scopes: null }
  }
  const gateway = await startGatewayProcess({ DATABASE_URL: await createTestDatabase(t), ADMIN_TOKEN, ADMIN_KEYS: JSON.stringify(keys), GATEWAY_KEYS: undefined, BUDGETS_DATA_DIR: undefined })
  t.teardown(async () => await gateway.stop())
  t.ok(gateway.banner.some((line) => /admin keys:\s+2 from ADMIN_KEYS/.test(line)), 'the banner counts the keys')
  const call = async (key: string, method: string, path: string, body?: unknown) => await fetch(`${gateway.url}${path}`, {
    method, headers: { authorization: `Bearer ${key}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) }, ...(body === undefined ? {} : { body: JSON.stringify(body) })
  })
  const budget = { currency: 'USD', period: 'monthly', startDate: '2024-01-01' }
  const team = await (await call(ADMIN_TOKEN, 'POST', '/api/v1/budgets', { ...budget, name: 'Platform', scopeType: 'team', scopeId: 'platform', amount: '100' })).json() as { id: string }
  const other = await (await call(ADMIN_TOKEN, 'POST', '/api/v1/budgets', { ...budget, name: 'Data', scopeType: 'team', scopeId: 'data', amount: '100' })).json() as { id: string }

  const made = await call(LEAD, 'POST', '/api/v1/budgets', { ...budget, name: 'Alice', scopeType: 'user', scopeId: 'alice', parentId: team.id, amount: '10' })
  t.equal(made.status, 201, 'the lead makes a budget under its team')
  t.equal(((await made.json()) as { createdBy: string }).createdBy, 'lead-platform', 'in its name')
  const refused = await call(LEAD, 'GET', `/api/v1/budgets/${other.id}`)
  t.equal(refused.status, 403, 'the lead cannot read another team')
  t.equal(((await refused.json()) as { code: string }).code, 'BUDGET_ERR_OUT_OF_SCOPE')
  t.equal((await call(VIEWER, 'GET', `/api/v1/budgets/${other.id}`)).status, 200, 'a viewer without scopes reads every team')
  t.equal(((await (await call(VIEWER, 'POST', `/api/v1/budgets/${other.id}/usage`, { amount: '1', currency: 'USD' })).json()) as { code: string }).code, 'BUDGET_ERR_FORBIDDEN', 'but records nothing')
  t.equal((await call(ADMIN_TOKEN, 'PUT', '/api/v1/budgets/exchange-rates/EUR/USD', { rate: '1.1' })).status, 201, 'the admin token sets an exchange rate')
  t.equal((await call(LEAD, 'GET', '/metrics')).status, 403, 'the gateway\'s /metrics (every tree\'s money) refuses the lead')
  t.equal((await call(VIEWER, 'GET', '/metrics')).status, 200, 'and serves a principal without scopes')
  t.equal((await call('unknown-key-0123456789abcdef', 'GET', '/api/v1/budgets')).status, 401, 'an unknown key is a 401')
})

t.test('a bad ADMIN_KEYS stops the example gateway before it listens, saying why', async (t) => {
  const failure = await startGatewayProcess({ DATABASE_URL: await createTestDatabase(t), ADMIN_TOKEN, ADMIN_KEYS: JSON.stringify({ [LEAD]: { actor: 'x', role: 'superuser' } }), BUDGETS_DATA_DIR: undefined })
    .then(async (gateway) => { await gateway.stop(); return null }, (error: Error) => error.message)
  t.match(failure, /ADMIN_KEYS: key #1 must map to/)
})

t.test('ADMIN_KEYS with one key written twice stops the start: JSON would keep the second quietly', async (t) => {
  const text = `{"${LEAD}": {"actor": "lead", "role": "viewer", "scopes": [{"scopeType": "team", "scopeId": "platform"}]}, "${LEAD}": {"actor": "ops", "role": "admin", "scopes": null}}`
  t.throws(() => parseAdminKeys(text), /names the same admin key twice/)
  const escaped = `{"${LEAD}": {"actor": "a", "role": "viewer", "scopes": null}, "\\u006c${LEAD.slice(1)}": {"actor": "b", "role": "admin", "scopes": null}}`
  t.throws(() => parseAdminKeys(escaped), /names the same admin key twice/, 'written with an escape too')
  const lookalike = `{"${LEAD}": {"actor": "${LEAD}:", "role": "viewer", "scopes": null}, "${VIEWER}": {"actor": "x\\": y", "role": "viewer", "scopes": null}}`
  t.equal(parseAdminKeys(lookalike).size, 2, 'a value that looks like a key is no key')
})
