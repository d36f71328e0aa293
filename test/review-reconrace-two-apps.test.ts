// Review of 1df63c1/57ae84d (adversarial, concurrency): two instances of this version on one plain PostgreSQL
// database, creating, moving (within and across trees) and deleting cost mappings on overlapping dimensions and
// budgets at once. Afterwards: a dimension mapped once, a budget to one provider, each id once, each row in its
// budget's tree, one audit entry per acknowledged change, no 5xx.
import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import budgets from '../lib/index.js'
import { ADMIN_TOKEN, PREFIX, TEST_CHANNELS, budgetRequest } from './fixtures/app.js'
import { createTestSql } from './fixtures/database.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }

async function instance (t: { teardown: (fn: () => unknown) => void }, url: string): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(budgets, { database: url, adminToken: ADMIN_TOKEN, notifications: { intervalMs: 0, channels: TEST_CHANNELS } })
  await app.ready()
  t.teardown(async () => await app.close())
  return app
}

t.test('two instances race mapping creates, moves and deletes', async (t) => {
  const { url, sql } = await createTestSql(t)
  const one = await instance(t, url)
  const two = await instance(t, url)
  const call = async (app: FastifyInstance, method: 'POST' | 'PUT' | 'DELETE', path: string, body?: Record<string, unknown>) =>
    await app.inject({ method, url: `${PREFIX}${path}`, headers: AUTH, ...(body === undefined ? {} : { body }) })
  const make = async (name: string, parentId?: string) => {
    const r = await call(one, 'POST', '', budgetRequest({ name, scopeId: name, ...(parentId === undefined ? {} : { parentId, scopeType: 'project' }) }))
    if (r.statusCode !== 201) throw new Error(r.body)
    return r.json().id as string
  }
  const rootA = await make('a')
  const childA = await make('a-child', rootA)
  const rootB = await make('b')
  const childB = await make('b-child', rootB)
  const rootC = await make('c')
  const budgetIds = [rootA, childA, rootB, childB, rootC]
  const providers = ['mistral', 'openai']
  const kinds = ['project', 'workspace', 'account'] as const
  const values = ['v0', 'v1', 'v2']

  let seed = 12345
  const rand = (n: number) => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n }
  const answers: Array<{ op: string, status: number, body: string }> = []
  const known: string[] = []
  for (let round = 0; round < 12; round++) {
    const work: Array<Promise<void>> = []
    for (let i = 0; i < 10; i++) {
      const app = i % 2 === 0 ? one : two
      const pick = rand(10)
      const id = known.length === 0 ? '1' : known[rand(known.length)]!
      let op: [string, Promise<any>]
      if (pick < 3 || known.length === 0) {
        op = ['create', call(app, 'POST', '/provider-costs/mappings', { provider: providers[rand(2)], kind: kinds[rand(3)], value: values[rand(3)], budgetId: budgetIds[rand(5)], trueUp: rand(2) === 0 })]
      } else if (pick < 8) {
        const body: Record<string, unknown> = { budgetId: budgetIds[rand(5)] }
        if (rand(2) === 0) body.value = values[rand(3)]
        op = ['update', call(app, 'PUT', `/provider-costs/mappings/${id}`, body)]
      } else {
        op = ['delete', call(app, 'DELETE', `/provider-costs/mappings/${id}`)]
      }
      work.push(op[1].then((r) => {
        answers.push({ op: op[0], status: r.statusCode, body: r.body })
        if (op[0] === 'create' && r.statusCode === 201) known.push(r.json().id)
        if (op[0] === 'delete' && r.statusCode === 204) known.splice(known.indexOf(id), 1)
      }))
    }
    await Promise.all(work)
  }
  const bad = answers.filter((a) => ![200, 201, 204, 404, 409].includes(a.status))
  t.strictSame(bad, [], 'no 5xx, only 404/409 refusals')
  const count = (op: string, status: number) => answers.filter((a) => a.op === op && a.status === status).length
  t.comment(`answers: ${JSON.stringify(answers.reduce<Record<string, number>>((acc, a) => ({ ...acc, [`${a.op}:${a.status}`]: (acc[`${a.op}:${a.status}`] ?? 0) + 1 }), {}))}`)

  const rows = await sql<Array<{ id: string, provider: string, kind: string, value: string, budget: string, sameRoot: boolean }>>`
    select m.id::text as id, m.provider, m.kind, m.value, m.budget_id::text as budget, m.root_id = d.root_id as "sameRoot"
    from budget_recon_mappings m left join budget_definitions d on d.root_id = m.root_id and d.id = m.budget_id order by m.id`
  t.equal(new Set(rows.map((r) => r.id)).size, rows.length, 'each mapping id once')
  t.strictSame(rows.filter((r) => r.sameRoot !== true), [], 'each mapping in its budget\'s tree')
  const dims = rows.map((r) => `${r.provider}/${r.kind === 'account' ? 'account' : 'project'}/${r.value}`)
  t.equal(new Set(dims).size, dims.length, 'a dimension mapped once')
  const providerOf = new Map<string, Set<string>>()
  for (const r of rows) providerOf.set(r.budget, (providerOf.get(r.budget) ?? new Set()).add(r.provider))
  t.strictSame([...providerOf.values()].filter((s) => s.size > 1).map((s) => [...s]), [], 'a budget mapped to one provider')
  const audits = await sql<Array<{ action: string, n: number }>>`select action, count(*)::int as n from budget_audit_log where action like '%cost-mapping' group by 1 order by 1`
  t.strictSame(Object.fromEntries(audits.map((a) => [a.action, a.n])),
    Object.fromEntries([['create-cost-mapping', count('create', 201)], ['delete-cost-mapping', count('delete', 204)], ['update-cost-mapping', count('update', 200)]].filter(([, n]) => n !== 0)),
    'one audit entry per acknowledged change')
  t.equal(rows.length, count('create', 201) - count('delete', 204), 'rows = creates - deletes')
})
