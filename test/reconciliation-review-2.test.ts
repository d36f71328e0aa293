// Second adversarial review of reconciliation with the provider's bill: each test here reproduces a defect
// (it fails until the defect is fixed), against real PostgreSQL.
import t from 'tap'
import { buildApp, PREFIX, type TestApp } from './fixtures/app.js'

const DAY_MS = 86_400_000
const dayBefore = (days: number): string => new Date(Date.now() - days * DAY_MS).toISOString().slice(0, 10)
const YESTERDAY = dayBefore(1)

async function ok<T> (app: TestApp, method: 'GET' | 'POST' | 'PUT' | 'DELETE', url: string, body?: unknown, status = 200): Promise<T> {
  const response = await app.admin({ method, url: `${PREFIX}${url}`, ...(body === undefined ? {} : { body: body as Record<string, unknown> }) })
  if (response.statusCode !== status) throw new Error(`${method} ${url} answered ${response.statusCode}: ${response.body}`)
  return (response.body === '' ? undefined : response.json()) as T
}

async function budget (app: TestApp, overrides: Record<string, unknown> = {}): Promise<string> {
  const created = await ok<{ id: string }>(app, 'POST', '', {
    name: 'Team budget', scopeType: 'team', scopeId: 'team-a', amount: '1000', currency: 'USD', period: 'monthly', startDate: '2024-01-01', ...overrides
  }, 201)
  return created.id
}

async function importCsv (app: TestApp, lines: string[]): Promise<void> {
  const response = await app.admin({ method: 'POST', url: `${PREFIX}/provider-costs/import`, headers: { 'content-type': 'text/csv' }, payload: ['date,provider,account,project,amount,currency', ...lines].join('\n') })
  if (response.statusCode !== 200) throw new Error(`import answered ${response.statusCode}: ${response.body}`)
}

async function counted (app: TestApp, budgetId: string, day: string): Promise<string> {
  const [row] = await app.sql<Array<{ total: string }>>`
    select coalesce(sum(amount), 0)::numeric(28,10)::text as total from budget_usage_allocations
    where budget_id = ${budgetId} and occurred_at >= ${`${day}T00:00:00Z`}::timestamptz and occurred_at < ${`${day}T00:00:00Z`}::timestamptz + interval '1 day'`
  return row!.total
}


t.test('a mapping moved to another budget after a true-up: the old budget keeps a correction nothing can adjust or undo', async (t) => {
  const app = await buildApp(t)
  const org = await budget(app, { name: 'Org', scopeType: 'organization', scopeId: 'acme' })
  const a = await budget(app, { name: 'A', parentId: org })
  const b = await budget(app, { name: 'B', scopeId: 'team-b', parentId: org })
  const mapping = await ok<{ id: string }>(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: a, trueUp: true }, 201)
  await ok(app, 'POST', `/${a}/usage`, { amount: '8', currency: 'USD', occurredAt: `${YESTERDAY}T00:00:00Z`, metadata: { requestId: 'a' } }, 201)
  await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,10,USD`])
  await ok(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: a })
  t.equal(await counted(app, a, YESTERDAY), '10.0000000000')

  const moved = await app.admin({ method: 'PUT', url: `${PREFIX}/provider-costs/mappings/${mapping.id}`, body: { budgetId: b } })
  if (moved.statusCode === 409) return t.pass('moving a mapping with corrections is refused')
  t.equal(moved.statusCode, 200, moved.body)
  // A's 2 USD correction is for a bill no longer mapped to it: its true-up is refused (409 not mapped),
  // the report shows no line for it, and nothing documents that it stays.
  const retry = await app.admin({ method: 'POST', url: `${PREFIX}/reconciliation/true-up`, body: { provider: 'mistral', day: YESTERDAY, budgetId: a } })
  t.not(retry.statusCode, 409, `the old budget's correction can still be moved by a true-up: ${retry.body}`)
  t.equal(await counted(app, a, YESTERDAY), '8.0000000000', 'the old budget does not keep a correction for a bill that is no longer its')
})

t.test('mappings: one project mapped as project to one budget and as workspace to another is a dimension mapped twice', async (t) => {
  const app = await buildApp(t)
  const a = await budget(app, { name: 'A' })
  const b = await budget(app, { name: 'B', scopeId: 'team-b' })
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: a, trueUp: true }, 201)
  // workspace reads the same project column (docs/provider-costs.md#reconciliation): the same buckets.
  const second = await app.admin({ method: 'POST', url: `${PREFIX}/provider-costs/mappings`, body: { provider: 'mistral', kind: 'workspace', value: 'proj_a', budgetId: b, trueUp: true } })
  t.equal(second.statusCode, 409, `the same buckets mapped a second time are BUDGET_ERR_COST_MAPPING_CONFLICT: ${second.body}`)
})

t.test('grandparent, parent and child all mapped, trued up in every order and the whole order run twice: each ends at its invoice', async (t) => {
  const orders = [['gp', 'p', 'c'], ['gp', 'c', 'p'], ['p', 'gp', 'c'], ['p', 'c', 'gp'], ['c', 'gp', 'p'], ['c', 'p', 'gp']]
  for (const order of orders) {
    await t.test(order.join(','), async (t) => {
      const app = await buildApp(t)
      const gp = await budget(app, { name: 'GP', scopeType: 'organization', scopeId: 'acme' })
      const p = await budget(app, { name: 'P', scopeId: 'team-p', parentId: gp })
      const c = await budget(app, { name: 'C', scopeType: 'project', scopeId: 'proj-c', parentId: p })
      const ids: Record<string, string> = { gp, p, c }
      // GP: mistral's whole account (15); P: mistral proj_a (10); C: another provider's project (6).
      await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'account', value: 'acme', budgetId: gp, trueUp: true }, 201)
      await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: p, trueUp: true }, 201)
      await ok(app, 'POST', '/provider-costs/mappings', { provider: 'other', kind: 'project', value: 'proj_c', budgetId: c, trueUp: true }, 201)
      await ok(app, 'POST', `/${c}/usage`, { amount: '4', currency: 'USD', occurredAt: `${YESTERDAY}T01:00:00Z`, metadata: { requestId: 'c' } }, 201)
      await ok(app, 'POST', `/${p}/usage`, { amount: '3', currency: 'USD', occurredAt: `${YESTERDAY}T01:00:00Z`, metadata: { requestId: 'p' } }, 201)
      await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,10,USD`, `${YESTERDAY},mistral,acme,proj_b,5,USD`, `${YESTERDAY},other,acme,proj_c,6,USD`])
      const provider: Record<string, string> = { gp: 'mistral', p: 'mistral', c: 'other' }
      for (let pass = 0; pass < 2; pass++) {
        for (const name of order) await ok(app, 'POST', '/reconciliation/true-up', { provider: provider[name], day: YESTERDAY, budgetId: ids[name] })
      }
      t.same([await counted(app, gp, YESTERDAY), await counted(app, p, YESTERDAY), await counted(app, c, YESTERDAY)],
        ['15.0000000000', '10.0000000000', '6.0000000000'], 'GP at 15, P at 10, C at 6 after the order was run twice')
    })
  }
})
