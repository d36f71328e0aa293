// A short text the counter split before (a role, a greeting) is not split again: its pieces are replayed,
// charged as a split would charge them. What a request counts, and the work it spends, must not depend on
// what the process counted before: checked against a process that forgot every piece (forgetCountedPieces).
import t from 'tap'
import { slices } from '../lib/kernel/loop-slices.js'
import { MAX_TOKENIZED_WORK, chatPromptTokens, forgetCountedPieces, tokenCounter } from '../lib/pricing/tokens.js'

/** The prompt tokens of `body` and the work its counter spent, counted after `before` (another request) in the same process. */
async function counted (body: { messages: unknown[] }, before?: { messages: unknown[] }): Promise<{ tokens: number, work: number }> {
  forgetCountedPieces()
  if (before !== undefined) await chatPromptTokens(before, tokenCounter('gpt-4o')!)
  let work = 0
  const workOnly = slices({ ms: Number.POSITIVE_INFINITY, work: Number.POSITIVE_INFINITY })
  const spend = workOnly.spend.bind(workOnly)
  workOnly.spend = (units: number) => { work += units; spend(units) }
  const tokens = await chatPromptTokens(body, tokenCounter('gpt-4o', workOnly)!)
  return { tokens, work }
}

const shortTexts = ['user', 'assistant', 'Say hello', 'hi hi hi', 'ab ab', 'naïve café', '日本語のテキスト', '12345 6789', "it's 'x'", '  spaced ', '']

t.test('a short text counted again (split once in the process) counts and charges as the first time', async (t) => {
  for (const text of shortTexts) {
    const body = { messages: [{ role: 'user', content: text }, { role: 'assistant', content: text }] }
    const fresh = await counted(body)
    const again = await counted(body, body)
    t.same(again, fresh, JSON.stringify(text))
  }
})

t.test('a request that repeats a piece within it is charged the piece once as new, split before or not', async (t) => {
  // "ab ab": the second " ab" is a piece the request met; the cached pieces keep that distinction.
  const body = { messages: [{ role: 'user', content: 'ab ab' }, { role: 'user', content: 'ab' }, { role: 'user', content: ' ab' }] }
  t.same(await counted(body, { messages: [{ role: 'user', content: 'ab ab' }] }), await counted(body))
})

t.test('past the work budget a replayed short text counts a token a byte from where the budget ran out, as a split does', async (t) => {
  // A first message of new words (" xabc": 40 units of work each) and one more word of `pad` letters (4 units
  // a letter) spends the budget to within a few units, in steps of 4: the short texts after it run out at
  // each of their pieces in turn.
  const letters = (i: number) => String.fromCharCode(97 + Math.floor(i / 676) % 26, 97 + Math.floor(i / 26) % 26, 97 + i % 26)
  const words = Array.from({ length: Math.floor(MAX_TOKENIZED_WORK / 40) - 4 }, (_, i) => `x${letters(i)}`).join(' ')
  for (let pad = 1; pad <= 60; pad++) {
    const body = { messages: [{ role: 'user', content: `${words} ${'q'.repeat(pad)}` }, { role: 'user', content: 'hi hi hi' }, { role: 'user', content: 'Say hello' }] }
    const fresh = await counted(body)
    const again = await counted(body, { messages: [{ role: 'user', content: 'hi hi hi' }, { role: 'user', content: 'Say hello' }] })
    t.same(again, fresh, `a pad of ${pad}`)
  }
})
