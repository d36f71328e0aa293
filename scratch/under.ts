import { worstCaseTokens } from '../lib/services/estimate.js'
import { DEFAULT_PRICES } from '../lib/services/pricing.js'
import { openAIPromptTokens } from '../test/fixtures/openai-tokens.js'
const price = DEFAULT_PRICES['gpt-4o']!
const check = (name: string, body: any) => {
  const est = worstCaseTokens(body, price, body.model).inputTokens
  const oracle = openAIPromptTokens(body, price.maxImageTokens!)!
  console.log(est >= oracle ? 'ok   ' : 'UNDER', name, 'estimate', est, 'oracle', oracle)
}
const many = Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`k${i}`, i]))
const args = JSON.stringify(many)
check('args compact', { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 'f', arguments: args } }] }] })
check('args leading space', { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 'f', arguments: ' ' + args } }] }] })
check('args leading newline', { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 'f', arguments: '\n' + args } }] }] })
const tmany = JSON.stringify(Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`k${i}`, { v: i }])))
check('tool results x2 leading space', { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 'f', arguments: '{}' } }, { id: 'c2', type: 'function', function: { name: 'f', arguments: '{}' } }] }, { role: 'tool', tool_call_id: 'c1', content: ' ' + tmany }, { role: 'tool', tool_call_id: 'c2', content: ' ' + tmany }] })
check('tool results no id', { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }, { role: 'tool', content: tmany }, { role: 'tool', content: tmany }] })
const manyNum = JSON.stringify(Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`k${i}`, [i, i+1, 'a']])))
check('args arrays', { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 'f', arguments: manyNum } }] }] })
check('args arrays leading tab', { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 'f', arguments: '\t' + manyNum } }] }] })
for (const [label, value] of [['neg', (i: number) => -i], ['float', (i: number) => i + 0.25], ['exp', (i: number) => 1e21 * (i + 1)], ['str-num', (i: number) => `${i}`], ['nested arr', (i: number) => [[i]]]] as const) {
  const a = JSON.stringify(Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`key_${i}`, (value as any)(i)])))
  for (const lead of ['', ' ']) check(`args ${label} lead ${JSON.stringify(lead)}`, { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 'f', arguments: lead + a } }] }] })
}
