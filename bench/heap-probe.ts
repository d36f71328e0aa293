import autocannon from 'autocannon'
import { BENCH_ADMIN_TOKEN } from './gateway-server.js'
import { benchDatabase, startBenchGateway } from './harness.js'
const database = await benchDatabase()
const gw = await startBenchGateway(database.url, {}, ['--expose-gc'])
const admin = async (body: unknown) => (await (await fetch(`${gw.url}/api/v1/budgets`, { method: 'POST', headers: { authorization: `Bearer ${BENCH_ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(body) })).json()) as { id: string }
const org = await admin({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '100000000', currency: 'USD', period: 'monthly', startDate: '2024-01-01' })
await admin({ name: 'hot team', scopeType: 'team', scopeId: 'hot', parentId: org.id, amount: '100000000', currency: 'USD', period: 'monthly', startDate: '2024-01-01' })
const CALL = { method: 'POST' as const, headers: { 'content-type': 'application/json', 'x-relay-team-id': 'hot' }, body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 20 }) }
const heap = async () => { const m = await (await fetch(`${gw.url}/bench/heap`)).json() as { heapUsed: number }; return (m.heapUsed / 1e6).toFixed(1) + ' MB' }
console.log('start', await heap())
for (let i = 0; i < 3; i++) {
  const r = await autocannon({ url: `${gw.url}${process.env.ROUTE ?? '/v1/chat/completions'}`, connections: 16, duration: 4, ...CALL })
  await new Promise((resolve) => setTimeout(resolve, 3000))
  console.log('after', r.requests.total, 'calls', await heap())
}
gw.child.kill('SIGTERM'); await database.close()
