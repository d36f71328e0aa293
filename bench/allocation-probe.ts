// Where the gated route allocates on a hot line, by function (sampled), per call: everything allocated,
// or (ALLOCATIONS=promoted) what lived through young collections and died in a full one.
import autocannon from 'autocannon'
import { HOT_CALL as CALL, benchDatabase, hotLine, startBenchGateway } from './harness.js'

interface Node { callFrame: { functionName: string, url: string, lineNumber: number }, selfSize: number, children: Node[] }
const database = await benchDatabase()
const gateway = await startBenchGateway(database.url)
const post = async (path: string, body: unknown = {}, headers: Record<string, string> = {}) =>
  await (await fetch(`${gateway.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) })).json() as unknown
await hotLine(gateway.url)
const path = process.env.PROFILE_ROUTE === 'ungated' ? '/ungated/v1/chat/completions' : '/v1/chat/completions'
await autocannon({ url: `${gateway.url}${path}`, connections: 16, duration: 2, ...CALL })
await post('/bench/allocations/start', { promoted: process.env.ALLOCATIONS === 'promoted' })
const result = await autocannon({ url: `${gateway.url}${path}`, connections: 16, duration: 5, ...CALL })
const { head } = await post('/bench/allocations/stop') as { head: Node }
gateway.child.kill('SIGTERM')
await database.close()
const bySite = new Map<string, number>()
const walk = (node: Node, parent: string) => {
  const url = node.callFrame.url.replace(/^file:\/\//, '')
  const where = url.includes('node_modules/') ? url.slice(url.lastIndexOf('node_modules/') + 13) : url.replace(`${process.cwd()}/`, '')
  const name = `${node.callFrame.functionName || '(anonymous)'} ${where}:${node.callFrame.lineNumber + 1} < ${parent}`
  if (node.selfSize > 0) bySite.set(name, (bySite.get(name) ?? 0) + node.selfSize)
  for (const child of node.children) walk(child, node.callFrame.functionName || '(anonymous)')
}
walk(head, '')
const total = [...bySite.values()].reduce((a, b) => a + b, 0)
console.log(`${result.requests.total} calls; ${(total / result.requests.total).toFixed(0)} bytes a call sampled`)
for (const [name, bytes] of [...bySite].sort((a, b) => b[1] - a[1]).slice(0, Number(process.env.TOP ?? 40))) console.log((bytes / result.requests.total).toFixed(0).padStart(6), name)
