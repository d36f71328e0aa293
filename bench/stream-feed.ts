// How long the gate's stream reading holds the event loop for one response (issue 20 review): a
// Responses `response.completed` of 8 MiB on one line (a generated image, base64), arriving in 16 KiB
// chunks, against the same bytes in short lines. CPU time of the synchronous feed, per chunk and in all.
// Run: npx tsx bench/stream-feed.ts
import { chatApi } from '../lib/model-apis/chat.js'
import { responsesApi } from '../lib/model-apis/responses.js'
import { streamFeeder } from '../lib/http/gate/stream-usage.js'

const SIZE = 8 * 1024 * 1024
const CHUNK = 16_384
const cpuMs = (from: NodeJS.CpuUsage) => { const used = process.cpuUsage(from); return (used.user + used.system) / 1000 }

function measure (name: string, bytes: Buffer, reader: ReturnType<typeof chatApi.streamUsage>): void {
  let read = false
  const feed = streamFeeder(reader, () => { read = true })
  let slowest = 0
  const all = process.cpuUsage()
  for (let at = 0; at < bytes.length; at += CHUNK) {
    const one = process.cpuUsage()
    feed(bytes.subarray(at, at + CHUNK))
    slowest = Math.max(slowest, cpuMs(one))
  }
  feed.finish()
  console.log(`| ${name} | ${(bytes.length / 1048576).toFixed(1)} MiB | ${cpuMs(all).toFixed(0)} ms | ${slowest.toFixed(0)} ms | ${read ? 'read' : 'NOT READ'} |`)
}

const completed = JSON.stringify({ type: 'response.completed', response: { model: 'gpt-4o-mini', output: [{ type: 'image_generation_call', result: 'A'.repeat(SIZE) }], usage: { input_tokens: 9, output_tokens: 40 } } })
const chunk = (fields: object) => JSON.stringify({ object: 'chat.completion.chunk', model: 'gpt-4o-mini', choices: [], ...fields })
const line = `data: ${chunk({ choices: [{ index: 0, delta: { content: 'A'.repeat(900) } }] })}\n\n`

console.log('| stream | size | CPU in all | slowest chunk | usage |\n|---|---|---|---|---|')
measure('one Responses event on one line', Buffer.from(`event: response.completed\ndata: ${completed}\n\n`), responsesApi.streamUsage('gpt-4o-mini'))
measure('chat chunks of 900 characters', Buffer.from(line.repeat(Math.ceil(SIZE / line.length)) + `data: ${chunk({ usage: { prompt_tokens: 3, completion_tokens: 4 } })}\n\n`), chatApi.streamUsage('gpt-4o-mini'))
