import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { PREFIX, seedBudgetRequest } from './fixtures/app.js'
import { createTestDatabase } from './fixtures/database.js'
import { startGatewayProcess, type GatewayProcess } from './fixtures/gateway-process.js'

/** Starts `npm start`'s script the way a new user would: no DATABASE_URL, no ADMIN_TOKEN. */
// Nothing listens at either: no usage is recorded, so nothing is sent.
const SEED_CHANNELS = 'slack=http://127.0.0.1:9/services/T000/B000/hook-secret,email=smtp://mailer:smtp-secret@127.0.0.1:9?from=budgets@example.com&to=ops@example.com,cfo@example.com'

async function startGateway (dataDir: string) {
  // The seed's example names the channels email and slack: a budget may name only configured channels.
  return await startGatewayProcess({ BUDGETS_DATA_DIR: dataDir, DATABASE_URL: undefined, ADMIN_TOKEN: undefined, NOTIFY_CHANNELS: SEED_CHANNELS })
}

t.test('npm start with no DATABASE_URL: embedded PostgreSQL, a printed token, and budgets that survive a restart', async (t) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'relaycore-gateway-'))
  t.teardown(async () => await rm(dataDir, { recursive: true, force: true }))

  const first = await startGateway(dataDir)
  t.teardown(async () => await first.stop())
  const channels = first.banner.find((line) => line.trimStart().startsWith('channels:'))
  t.match(channels, /channels: +slack \(webhook http:\/\/127\.0\.0\.1:9\), email \(email 127\.0\.0\.1:9\)/, 'the banner lists the channels')
  t.notMatch(channels, /secret|mailer|T000/, 'without their secrets')
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
  t.equal(second.token, first.token, 'the token made at the first start is kept in the data directory and used again')
  const tokenFile = join(dataDir, 'admin-token')
  t.equal((await readFile(tokenFile, 'utf8')).trim(), first.token, 'in its admin-token file')
  t.equal((await stat(tokenFile)).mode & 0o777, 0o600, 'readable by its owner only')
  t.ok(second.banner.some((line) => line.includes(`kept in ${tokenFile}`)), 'the banner says where it is')
  const read = await fetch(`${second.url}${PREFIX}/${budget.id}`, { headers: { authorization: `Bearer ${second.token}` } })
  t.equal(read.status, 200, 'the budget survived the restart')
  t.same(await read.json(), budget)

  const docs = await fetch(`${second.url}/docs/json`)
  t.equal(docs.status, 200, 'the OpenAPI document is served')
  const document = await docs.json() as { paths: Record<string, unknown> }
  t.match(document, { openapi: '3.1.0', paths: { '/api/v1/budgets': { post: { summary: 'Create a budget' } }, '/v1/chat/completions': { post: {} } } })
  t.notOk('/api/v1/budgets/' in document.paths, 'the create route is documented without a trailing slash, and only so')
  t.equal((await fetch(`${second.url}/docs/static/index.html`)).status, 200, 'and the browsable UI')
  await second.stop()

  const chosen = 'an-admin-token-of-my-own-0123456789'
  const third = await startGatewayProcess({ BUDGETS_DATA_DIR: dataDir, DATABASE_URL: undefined, ADMIN_TOKEN: chosen, NOTIFY_CHANNELS: SEED_CHANNELS })
  t.teardown(async () => await third.stop())
  t.ok(third.banner.some((line) => /admin token: from ADMIN_TOKEN$/.test(line)), 'ADMIN_TOKEN set wins over the kept one')
  t.equal((await fetch(`${third.url}${PREFIX}/${budget.id}`, { headers: { authorization: `Bearer ${chosen}` } })).status, 200, 'the token chosen opens the admin API')
  t.equal((await fetch(`${third.url}${PREFIX}/${budget.id}`, { headers: { authorization: `Bearer ${first.token}` } })).status, 401, 'and the kept one does not')
  t.equal((await readFile(tokenFile, 'utf8')).trim(), first.token, 'the kept token stays for a start without ADMIN_TOKEN')
})

const ADMIN = 'gateway-test-admin-token-0123456789'
const CHAT = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 20 }

/** The running gateway's admin API and model route, over HTTP. */
function client (gateway: GatewayProcess) {
  const admin = async (path: string, init: { method?: string, body?: unknown } = {}) => {
    const response = await fetch(`${gateway.url}${PREFIX}${path}`, {
      method: init.method ?? 'GET',
      headers: { authorization: `Bearer ${ADMIN}`, ...(init.body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(init.body === undefined ? {} : { body: JSON.stringify(init.body) })
    })
    if (!response.ok) throw new Error(`${response.status} ${await response.text()}`)
    return await response.json() as Record<string, unknown>
  }
  return {
    createTeamBudget: async (team: string, amount: string) => await admin('', {
      method: 'POST', body: { name: team, scopeType: 'team', scopeId: team, amount, currency: 'USD', period: 'monthly', startDate: '2024-01-01' }
    }) as { id: string },
    spent: async (id: string) => (await admin(`/${id}/status`)).currentAmount as string,
    spend: async (id: string, amount: string) => await admin(`/${id}/usage`, { method: 'POST', body: { amount, currency: 'USD', source: 'test' } }),
    chat: async (headers: Record<string, string>) => {
      const response = await fetch(`${gateway.url}/v1/chat/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(CHAT)
      })
      return { status: response.status, headers: response.headers, body: await response.json() as { error?: Record<string, unknown> } }
    },
    /** Waits until the budget's settled spend is no longer `from` (settlement runs after the response). */
    spentBeyond: async (id: string, from: string) => {
      for (const deadline = Date.now() + 10_000; ;) {
        const now = (await admin(`/${id}/status`)).currentAmount as string
        if (now !== from) return now
        if (Date.now() > deadline) throw new Error(`budget ${id} still at ${from}`)
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
    }
  }
}

t.test('GATEWAY_KEYS: the key names the caller; no key is 401; forged x-relay-* headers change nothing', async (t) => {
  const gateway = await startGatewayProcess({
    DATABASE_URL: await createTestDatabase(t),
    ADMIN_TOKEN: ADMIN,
    MOCK_TOKEN_DELAY_MS: '1',
    GATEWAY_KEYS: JSON.stringify({ 'sk-alice': { user: 'alice', team: 'platform', organization: 'acme' }, 'sk-carol': { team: 'platform', maxCallCost: '0.000001' } })
  })
  t.teardown(async () => await gateway.stop())
  const { createTeamBudget, spent, spend, spentBeyond, chat } = client(gateway)
  const platform = await createTeamBudget('platform', '1')
  const forged = await createTeamBudget('forged', '1')

  for (const [headers, what] of [
    [{ 'x-relay-team-id': 'platform' }, 'no key, scope headers only'],
    [{ authorization: 'Bearer sk-mallory', 'x-relay-team-id': 'platform' }, 'an unknown key'],
    [{ authorization: 'Basic sk-alice' }, 'not a bearer key']
  ] as const) {
    const refused = await chat(headers)
    t.equal(refused.status, 401, what)
    t.same(refused.body, { error: { message: refused.body.error?.message, type: 'invalid_request_error', code: 'invalid_api_key', param: null } }, `${what}: OpenAI's shape`)
    t.equal(refused.headers.get('x-budget-id'), null, `${what}: refused before any budget work`)
  }

  const allowed = await chat({ authorization: 'Bearer sk-alice', 'x-relay-team-id': 'forged', 'x-relay-user-id': 'mallory' })
  t.equal(allowed.status, 200)
  t.equal(allowed.headers.get('x-budget-id'), platform.id, "the key's team budget binds")
  t.not(await spentBeyond(platform.id, '0'), '0', "charged to the key's budget")
  t.equal(await spent(forged.id), '0', 'not to the team named in the forged header')

  // A key's maxCallCost is the operator's cap on one call for it: a caller's larger x-budget-max-cost does not raise it.
  for (const headers of [{ authorization: 'Bearer sk-carol' }, { authorization: 'Bearer sk-carol', 'x-budget-max-cost': '1' }] as Array<Record<string, string>>) {
    const capped = await chat(headers)
    t.equal(capped.status, 402, 'over the key\'s cap')
    t.match(capped.body, { error: { code: 'call_cost_cap_exceeded', cap: { source: 'operator', amount: '0.000001', currency: 'USD' } } })
  }
  t.match((await chat({ authorization: 'Bearer sk-alice', 'x-budget-max-cost': '0.000001' })).body, { error: { code: 'call_cost_cap_exceeded', cap: { source: 'header' } } }, 'a key without a cap: the caller\'s header')

  await spend(platform.id, '1') // the key's team budget is now spent
  const refused = await chat({ authorization: 'Bearer sk-alice', 'x-relay-team-id': 'forged' })
  t.equal(refused.status, 402, "refused by the key's own budget")
  t.match(refused.body, { error: { type: 'insufficient_quota', code: 'budget_exceeded', budget: { id: platform.id } } })
  t.equal(await spent(forged.id), '0')
})

t.test('without GATEWAY_KEYS the x-relay-* headers name the caller, as before', async (t) => {
  const gateway = await startGatewayProcess({ DATABASE_URL: await createTestDatabase(t), ADMIN_TOKEN: ADMIN, MOCK_TOKEN_DELAY_MS: '1', GATEWAY_KEYS: undefined })
  t.teardown(async () => await gateway.stop())
  const { createTeamBudget, spentBeyond, chat } = client(gateway)
  const forged = await createTeamBudget('forged', '1')
  const call = await chat({ 'x-relay-team-id': 'forged' })
  t.equal(call.status, 200)
  t.equal(call.headers.get('x-budget-id'), forged.id)
  t.not(await spentBeyond(forged.id, '0'), '0')
})

t.test('a bad GATEWAY_KEYS stops the gateway at start, with a message that says what is wrong', async (t) => {
  const script = new URL('../examples/gateway.ts', import.meta.url).pathname
  await Promise.all([
    ['{"sk-alice": ', /GATEWAY_KEYS is not JSON/],
    ['["sk-alice"]', /GATEWAY_KEYS must be a JSON object/],
    ['{"sk-alice": {"team": 42}}', /scope 'team' must be a string/],
    ['', /GATEWAY_KEYS is set but empty/]
  ].map(async ([value, message]) => {
    const child = spawn(process.execPath, ['--import', 'tsx', script], {
      // An unreachable database: a value that wrongly passed would fail later, and differently.
      env: { ...process.env, GATEWAY_KEYS: value as string, DATABASE_URL: 'postgres://nobody@127.0.0.1:9/none', PORT: '0', ADMIN_TOKEN: ADMIN },
      stdio: ['ignore', 'ignore', 'pipe']
    })
    let stderr = ''
    child.stderr.on('data', (data: Buffer) => { stderr += data.toString() })
    // Generous: four tsx processes start at once on a shared 2-core machine; the test is about how they exit.
    const timer = setTimeout(() => child.kill(), 90_000)
    const [code] = await once(child, 'exit') as [number | null]
    clearTimeout(timer)
    t.equal(code, 1, `exits for ${JSON.stringify(value)}`)
    t.match(stderr, /^The gateway cannot start: /m)
    t.match(stderr, message as RegExp)
  }))
})
