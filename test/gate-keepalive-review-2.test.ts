// Adversarial review 2: the connection watch on keep-alive and pipelined sockets, over real HTTP.
import t from 'tap'
import net from 'node:net'
import { buildGateway } from './fixtures/gateway.js'
import { findViolations } from './fixtures/invariants.js'

const BODY = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: 20 })
const STREAM_BODY = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: 200, stream: true, stream_options: { include_usage: true } })
const request = (body: string): string => `POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-relay-team-id: platform\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`

/** A raw keep-alive connection to `address`: what it has received, and `answered` to send requests one at a time, each waited for (its 200). */
function keepAlive (address: string) {
  const socket = net.connect(Number(new URL(address).port), '127.0.0.1')
  const received = { text: '' }
  socket.on('data', (chunk) => { received.text += chunk.toString() })
  const until = async (seen: () => boolean): Promise<void> => { while (!seen()) await new Promise((resolve) => setTimeout(resolve, 2)) }
  return {
    socket,
    received,
    until,
    async answered (count: number): Promise<void> {
      for (let i = 0; i < count; i++) {
        socket.write(request(BODY))
        await until(() => (received.text.match(/HTTP\/1\.1 200/g) ?? []).length >= i + 1)
      }
    }
  }
}

t.test('100 gated requests on one keep-alive socket leave one close listener and an empty watch set', async (t) => {
  const seen: Array<{ listeners: number, watches: number }> = []
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 }, routes: (app) => { app.addHook('onResponse', async (req) => {
    if (req.url !== '/v1/chat/completions') return
    const socket = req.raw.socket
    const symbol = Object.getOwnPropertySymbols(socket).find((s) => s.description === 'relaycore.budgetSocketWatches')
    seen.push({ listeners: socket.listenerCount('close'), watches: symbol === undefined ? -1 : (socket as unknown as Record<symbol, Set<unknown>>)[symbol]!.size })
  }) } })
  const { app, sql, createBudget } = gateway
  await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '100' })
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  const client = keepAlive(address)
  await client.answered(100)
  t.equal(seen.length, 100)
  t.equal(new Set(seen.map((s) => s.listeners)).size, 1, `the socket's close listeners stay flat: ${seen[0]!.listeners} .. ${seen[99]!.listeners}`)
  t.ok(seen.every((s) => s.watches <= 1), `the watch set holds at most the current request (max ${Math.max(...seen.map((s) => s.watches))})`)
  client.socket.end()
  await app.close()
  const [records] = await sql`select count(*)::int as n from budget_usage_records`
  t.equal(records!.n, 100, 'every call recorded once')
  t.same(await findViolations(sql), [], 'no hold left')
})

t.test('pipelined requests, the client leaves after the first response: no hold left, close() does not wait its 10 s', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 }, mockTokenDelayMs: 5 })
  const { app, sql, createBudget } = gateway
  await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '100' })
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  const socket = net.connect(Number(new URL(address).port), '127.0.0.1')
  await new Promise((resolve) => socket.once('connect', resolve))
  socket.write(request(BODY) + request(STREAM_BODY) + request(BODY) + request(STREAM_BODY))
  let text = ''
  await new Promise<void>((resolve) => socket.on('data', (chunk) => { text += chunk.toString(); if (text.includes('HTTP/1.1 200')) resolve() }))
  socket.destroy()
  await new Promise((resolve) => setTimeout(resolve, 200))
  const started = Date.now()
  await app.close()
  const took = Date.now() - started
  t.ok(took < 3000, `close() took ${took} ms`)
  t.same(await findViolations(sql), [], 'no hold left')
})

t.test('a client that leaves in the middle of its 3rd streamed request on a keep-alive socket: the first two recorded, the third ended', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 }, mockTokenDelayMs: 20 })
  const { app, sql, createBudget } = gateway
  await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '100' })
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  const client = keepAlive(address)
  await client.answered(2)
  client.socket.write(request(STREAM_BODY))
  await client.until(() => (client.received.text.match(/data: /g) ?? []).length >= 3)
  client.socket.destroy()
  await new Promise((resolve) => setTimeout(resolve, 300))
  const [held] = await sql`select count(*)::int as n from budget_reservations where request_id not like 'lease:%'`
  t.equal(held!.n, 0, 'no hold of a call left before close')
  const started = Date.now()
  await app.close()
  t.ok(Date.now() - started < 3000, 'close() does not wait its 10 s')
  const [records] = await sql`select count(*)::int as n from budget_usage_records`
  t.equal(records!.n, 3, 'the two finished calls and the cut one recorded')
  t.same(await findViolations(sql), [], 'no hold left')
})
