import { estimateChatCost } from '../lib/services/estimate.js'
import { DEFAULT_PRICES, createPriceBook } from '../lib/services/pricing.js'
import { InvalidFieldError } from '../lib/errors.js'
const book = createPriceBook({ ...DEFAULT_PRICES })
const deepArgs = '{"a":'.repeat(20000) + '1' + '}'.repeat(20000)
const bodies: Array<[string, any]> = [
  ['null part', { model: 'gpt-4o', messages: [{ role: 'user', content: [null] }] }],
  ['tool call args deep', { model: 'gpt-4o', messages: [{ role: 'assistant', content: null, tool_calls: [{ id: 'a', type: 'function', function: { name: 'f', arguments: deepArgs } }] }] }],
  ['tool result deep', { model: 'gpt-4o', messages: [{ role: 'tool', tool_call_id: 'a', content: deepArgs }] }],
  ['tool_call_id object', { model: 'gpt-4o', messages: [{ role: 'tool', tool_call_id: { x: 1 }, content: 'x' }] }],
  ['tools null entries', { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], tools: [null, 1, 'x', { type: 'function', function: { name: 'f', parameters: { type: 'object', properties: null } } }] }],
  ['tools props weird', { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: { a: { type: ['string', 'null'], enum: [1, null, {}] }, b: { anyOf: [{ $ref: '#' }] }, c: { items: 1 } } } } }] }],
  ['tools props array', { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: [1, 2] } } }] }],
  ['tools parameters string', { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], tools: [{ type: 'function', function: { name: 'f', parameters: 'x' } }] }],
  ['tools description number', { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], tools: [{ type: 'function', function: { name: 'f', description: 5, parameters: { type: 'object', properties: { a: { description: {}, type: 'string' } } } } }] }],
  ['function_call string weird', { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], functions: [{ name: 'f' }], function_call: { name: 5 } }],
  ['max_tokens huge', { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], max_tokens: 1e300 }],
  ['n 128 maxtok', { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], n: 128 }],
  ['model proto', { model: '__proto__', messages: [] }],
  ['model constructor', { model: 'constructor', messages: [] }],
  ['messages has proto key', JSON.parse('{"model":"gpt-4o","messages":[{"role":"user","content":"x","__proto__":{"a":1}}]}')],
  ['content part text object', { model: 'gpt-4o', messages: [{ role: 'user', content: [{ type: 'text', text: { a: 1 } }] }] }],
  ['refusal part', { model: 'gpt-4o', messages: [{ role: 'assistant', content: [{ type: 'refusal', refusal: 5, text: 6 }] }] }],
  ['role object', { model: 'gpt-4o', messages: [{ role: { a: 1 }, content: 'x', name: { b: 2 } }] }],
  ['lone surrogate', { model: 'gpt-4o', messages: [{ role: 'user', content: '\ud800abc' }] }],
  ['special tokens', { model: 'gpt-4o', messages: [{ role: '<|im_start|>', content: '<|endoftext|>', name: '<|fim_prefix|>' }] }],
  ['response_format weird', { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], response_format: 'json' }],
  ['tools object', { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], tools: { a: 1 } }],
  ['tool_calls non-array', { model: 'gpt-4o', messages: [{ role: 'assistant', tool_calls: 5 }] }],
  ['claude tools', { model: 'claude-3-5-sonnet', messages: [{ role: 'user', content: 'x' }], tools: [{ type: 'function', function: { name: 'f' } }], tool_choice: { type: 'function', function: { name: 'f' } } }],
  ['deepseek', { model: 'deepseek-reasoner', messages: [{ role: 'user', content: 'x' }], n: 128 }],
  ['service tier object', { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], service_tier: { a: 1 } }],
  ['time-conditional deepseek-v4', { model: 'deepseek-v4-pro', messages: [{ role: 'user', content: 'x' }] }],
]
for (const [name, body] of bodies) {
  try { const e = estimateChatCost(body, book); console.log('ok   ', name, e.amount, e.tokens) } catch (e) { console.log(e instanceof InvalidFieldError ? 'refuse' : 'THROW ', name, (e as Error).constructor.name, (e as Error).message.slice(0, 100)) }
}
