// The tokenizer's split run on windows of a text finds the pieces the split of the whole text finds
// (lib/pricing/split-windows.ts): one native match of the pattern is never longer than a window, and the
// counts are unchanged. Windows here are a few characters long, so that every shape meets an edge.
import t from 'tap'
import fc from 'fast-check'
import { createRequire } from 'node:module'
import { segments } from '../lib/pricing/split-windows.js'
import { forgetCountedPieces, tokenCounter } from '../lib/pricing/tokens.js'
import { slices } from '../lib/kernel/loop-slices.js'

const SPLIT = createRequire(import.meta.url)('gpt-tokenizer/encodingParams/constants') as Record<string, RegExp>
const PATTERNS: Array<[string, RegExp]> = [['o200k_base', SPLIT.O200K_TOKEN_SPLIT_REGEX!], ['cl100k_base', SPLIT.CL100K_TOKEN_SPLIT_REGEX!]]

// Letters of every case class the patterns tell apart (Lu, Ll, Lt, Lm, Lo, an astral Lu), combining
// marks, digits (ASCII and Arabic-Indic), spaces, tabs, CR, LF, apostrophes, contractions' letters,
// punctuation, '/', an emoji (a surrogate pair of no letter class) and lone surrogate halves.
const ALPHABET = ['a', 'b', 's', 't', 'A', 'B', 'S', 'ǅ', 'ʰ', '中', '文', '𝐀', '\u0301', '\u0300', '1', '2', '٣', ' ', ' ', '\t', '\n', '\r', "'", '.', ',', '!', '/', '-', '😀', '\ud800', '\udc00', '\u00a0', '"', '{', ':']
const char = fc.constantFrom(...ALPHABET)
// Runs as well as single characters: long letter runs, long space runs, long digit runs.
const run = fc.tuple(char, fc.integer({ min: 1, max: 40 })).map(([c, n]) => c.repeat(n))
const text = fc.array(fc.oneof(char, char, run, fc.string({ maxLength: 6, unit: 'grapheme' })), { maxLength: 60 }).map((parts) => parts.join(''))
const window = fc.integer({ min: 1, max: 48 })

const wholePieces = (pattern: RegExp, value: string): Array<[number, string]> => [...value.matchAll(pattern)].map((match) => [match.index, match[0]])
const boundaries = (pieces: Array<[number, string]>): Set<number> => new Set(pieces.flatMap(([index, piece]) => [index, index + piece.length]))

for (const [name, pattern] of PATTERNS) {
  t.test(`${name}: the windowed split finds the whole text's pieces, and a region holds whole pieces`, async () => {
    fc.assert(fc.property(text, window, (value, size) => {
      const whole = wholePieces(pattern, value)
      const edges = boundaries(whole)
      edges.add(0)
      edges.add(value.length)
      const windowed: Array<[number, string]> = []
      for (const { start, end, exact } of segments(value, size)) {
        if (!edges.has(start) || !edges.has(end)) return false // a cut inside a piece
        if (exact) {
          if (end - start > size) return false
          for (const match of value.slice(start, end).matchAll(pattern)) windowed.push([start + match.index, match[0]])
        } else {
          windowed.push(...whole.filter(([index]) => index >= start && index < end)) // a region: its whole pieces
        }
      }
      return JSON.stringify(windowed) === JSON.stringify(whole)
    }), { numRuns: 3000 })
  })
}

t.test('a region longer than a window is counted at least as the whole-text pieces count', async () => {
  // Long runs of digits and of " !" have no cut: the only shapes whose region holds several pieces.
  for (const model of ['gpt-4o', 'gpt-4']) {
    await fc.assert(fc.asyncProperty(text, async (value) => {
      const windowed = tokenCounter(model, slices(), 8)!
      const whole = tokenCounter(model, slices(), Number.MAX_SAFE_INTEGER)!
      forgetCountedPieces()
      const [a, b] = [await windowed(value), await whole(value)]
      const exact = segments(value, 8).every((segment) => segment.exact)
      return exact ? a === b : a >= b
    }), { numRuns: 1000 })
  }
})

t.test('the windowed counter equals the whole-text counter wherever the text has cuts', async (t) => {
  const prose = 'The budget gate counts tokens; it\'s exact. 预算网关 令牌 12345 don\'t\r\n  '.repeat(3000)
  for (const model of ['gpt-4o', 'gpt-4']) {
    t.equal(await tokenCounter(model, slices(), 64)!(prose), await tokenCounter(model, slices(), Number.MAX_SAFE_INTEGER)!(prose), model)
  }
  const digits = '1234567'.repeat(100)
  t.ok(await tokenCounter('gpt-4o', slices(), 64)!(digits) >= await tokenCounter('gpt-4o', slices(), Number.MAX_SAFE_INTEGER)!(digits), 'a digit run: an upper bound')
  const chinese = '预算网关令牌模型成本限制周期每个团队本月调用支出'.repeat(20_000)
  t.equal(await tokenCounter('gpt-4o')!(chinese), Buffer.byteLength(chinese, 'utf8'), 'one long run of letters: its bytes, as its one piece counts')
})
