// Review of 65459a7: estimateChatCost now hands the body itself (not a `{ ...body, messages }` copy) to
// chatPromptTokens when no image part was replaced. The copy held only the body's OWN ENUMERABLE fields;
// the body itself also answers inherited and non-enumerable ones. A library caller's body whose tools,
// tool_choice or response_format is inherited or non-enumerable (never serialized upstream: JSON.stringify
// skips both) is now counted, and its estimate rises above what 0561ad3/09c0bc8 gave. The estimate is no
// longer "exactly what it was before". (Higher, not lower: no under-reservation found.) The same body with
// an image part still goes through the copy, so the two paths now disagree on the same fields.
import t from 'tap'
import { estimateChatCost } from '../lib/pricing/estimate.js'
import { createPriceBook } from '../lib/pricing/pricing.js'

const book = createPriceBook({})
const plain = () => ({ model: 'gpt-4o-mini', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] })
const tokensOf = async (body: unknown) => (await estimateChatCost(body, book)).tokens

t.test('fields JSON.stringify would not send change the estimate (they did not before 65459a7)', async (t) => {
  const base = await tokensOf(plain())
  t.equal(base, 18, 'the plain body: 18 tokens (as at 0561ad3)')

  const inheritedTools = Object.assign(Object.create({ tools: [{ type: 'function', function: { name: 'fff', description: 'd'.repeat(100) } }] }), plain())
  t.equal(JSON.stringify(inheritedTools), JSON.stringify(plain()), 'what goes upstream has no tools')
  t.equal(await tokensOf(inheritedTools), base, 'inherited tools: the estimate of 0561ad3 (18)')

  const inheritedChoice = Object.assign(Object.create({ tool_choice: { type: 'function', function: { name: 'x'.repeat(50) } } }), plain())
  t.equal(await tokensOf(inheritedChoice), base, 'inherited tool_choice: the estimate of 0561ad3 (18)')

  const hiddenFormat = plain()
  Object.defineProperty(hiddenFormat, 'response_format', { value: { type: 'json_schema', json_schema: { name: 'n', schema: { description: 'q'.repeat(100) } } }, enumerable: false })
  t.equal(JSON.stringify(hiddenFormat), JSON.stringify(plain()), 'what goes upstream has no response_format')
  t.equal(await tokensOf(hiddenFormat), base, 'non-enumerable response_format: the estimate of 0561ad3 (18)')
})
