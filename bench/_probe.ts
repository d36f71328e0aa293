import { BENCH_ADMIN_TOKEN } from './gateway-server.js'
import { benchDatabase, startBenchGateway } from './harness.js'
const database = await benchDatabase()
const gateway = await startBenchGateway(database.url)
const post = async (path: string, body: unknown = {}, headers: Record<string, string> = {}) => await fetch(`${gateway.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) })
const admin = async (body: unknown) => await (await post('/api/v1/budgets', body, { authorization: `Bearer ${BENCH_ADMIN_TOKEN}` })).json() as { id: string }
const org = await admin({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '100000000', currency: 'USD', period: 'monthly', startDate: '2024-01-01' })
await admin({ name: 'hot team', scopeType: 'team', scopeId: 'hot', parentId: org.id, amount: '100000000', currency: 'USD', period: 'monthly', startDate: '2024-01-01' })
console.log(`URL ${gateway.url} PID ${gateway.child.pid}`)
await new Promise((resolve) => setTimeout(resolve, Number(process.env.HOLD ?? 60000)))
gateway.child.kill('SIGTERM')
process.exit(0)
