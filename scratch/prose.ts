import { estimateChatCost } from '../lib/services/estimate.js'
import { DEFAULT_PRICES, createPriceBook } from '../lib/services/pricing.js'
import { preloadTokenizers } from '../lib/services/tokens.js'
const book = createPriceBook(DEFAULT_PRICES); preloadTokenizers(['gpt-4o'])
for (const [name, content] of [['repeated prose 1MB', 'The quick brown fox jumps over the lazy dog. '.repeat(23000)], ["a's 1MB", "a's".repeat(340000)], ['prose 100KB', 'The quick brown fox jumps over the lazy dog. '.repeat(2300)]] as const) {
  const body = { model: 'gpt-4o', messages: [{ role: 'user', content }], max_tokens: 10 }
  const cpu: number[] = []
  for (let i = 0; i < 5; i++) { const s = process.cpuUsage(); estimateChatCost(body, book); const u = process.cpuUsage(s); cpu.push((u.user + u.system) / 1000) }
  cpu.sort((a, b) => a - b); console.log(name, 'median CPU', cpu[2]!.toFixed(1), 'ms')
}
