import { tokenCounter } from '../lib/services/tokens.js'
tokenCounter('gpt-4o')!('warm up')
const cands = ["a's", "'s", "x'd", "A'S", "a'll", ".'s", "1'", "é's", "a's ", " a's", "a'", "'", "''", "a''", "aa's", "!'s", "a'sa", "\u0301's", "ǅ's", "a'RE"]
for (const p of cands) {
  const text = p.repeat(Math.ceil(600000 / p.length))
  const best: number[] = []
  for (let i = 0; i < 3; i++) { const s = process.hrtime.bigint(); tokenCounter('gpt-4o')!(text); best.push(Number(process.hrtime.bigint() - s) / 1e6) }
  console.log(JSON.stringify(p).padEnd(10), Math.min(...best).toFixed(1), 'ms')
}
