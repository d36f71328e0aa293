import { tokenCounter } from '../lib/services/tokens.js'
import { countTokens } from 'gpt-tokenizer/encoding/o200k_base'
const O = { disallowedSpecial: new Set<string>() }
const t = (name: string, f: () => unknown) => { const s = process.hrtime.bigint(); const r = f(); console.log(name.padEnd(40), (Number(process.hrtime.bigint() - s) / 1e6).toFixed(1), 'ms', r) }
const aps = "a's".repeat(300000)
const comb = ('a' + '\u0301'.repeat(50) + ' ').repeat(9000)
countTokens('warm', O)
t('lib a\'s x20000', () => countTokens("a's".repeat(20000), O))
t('lib a\'s x65000', () => countTokens("a's".repeat(65000), O))
t('ours a\'s 300k', () => tokenCounter('gpt-4o')!(aps))
t('lib comb x1000', () => countTokens(('a' + '\u0301'.repeat(50) + ' ').repeat(1000), O))
t('ours comb 9000', () => tokenCounter('gpt-4o')!(comb))
const SPLIT = (await import('gpt-tokenizer/encodingParams/constants')).O200K_TOKEN_SPLIT_REGEX as RegExp
t('split a\'s x20 pieces', () => [..."a's".repeat(20).matchAll(SPLIT)].map(m => m[0]).slice(0, 5))
t('split comb pieces', () => [...('a' + '\u0301'.repeat(50) + ' ').repeat(3).matchAll(SPLIT)].map(m => m[0].length))
