// Review of the process's small caches (lib/kernel/kept.ts and its users: amounts, tokenizer pieces and
// split texts, a model's encoding, a threshold's units). A warm process must answer exactly what a cold one
// does (a fresh import of the module, or the uncached reading), and no cache may hold more than its entries.
import t from 'tap'
import fc from 'fast-check'
import v8 from 'node:v8'
import vm from 'node:vm'
import { MONEY_SCALE, fromUnits, numberToDecimal, parseMoney, toUnits } from '../lib/kernel/money.js'
import { slices } from '../lib/kernel/loop-slices.js'
import { chatPromptTokens, encodingFor, forgetCountedPieces, providerTokens, tokenCounter } from '../lib/pricing/tokens.js'
import { percentReached } from '../lib/usage/status-rules.js'
import { ownText } from '../lib/kernel/kept.js'

/** A module as a cold process has it: a fresh instance of its own (its caches empty), by a query on its path. */
async function cold<T> (path: string, tag: string): Promise<T> {
  return await import(`${path}?review-cold-${tag}`) as T
}

const SCALE = 10n ** BigInt(MONEY_SCALE)

/** A plain decimal's units from its digits alone (no cache, no doubles). */
function reference (decimal: string): bigint {
  const negative = decimal.startsWith('-')
  const [integer = '', fraction = ''] = (negative ? decimal.slice(1) : decimal).split('.')
  const units = BigInt(integer === '' ? '0' : integer) * SCALE + BigInt((fraction + '0'.repeat(MONEY_SCALE)).slice(0, MONEY_SCALE))
  return negative ? -units : units
}

/** Units' canonical text from the bigint alone. */
function formatted (units: bigint): string {
  const magnitude = units < 0n ? -units : units
  const fraction = (magnitude % SCALE).toString().padStart(MONEY_SCALE, '0').replace(/0+$/, '')
  const text = fraction === '' ? `${magnitude / SCALE}` : `${magnitude / SCALE}.${fraction}`
  return units < 0n ? `-${text}` : text
}

// Plain decimals of every length around the 48-character key limit and the 15-digit double path.
const decimal = fc.tuple(fc.boolean(), fc.stringMatching(/^\d{1,30}$/), fc.option(fc.stringMatching(/^\d{0,22}$/)))
  .map(([negative, integer, fraction]) => `${negative ? '-' : ''}${integer}${fraction === null ? '' : `.${fraction}`}`)

t.test('toUnits answers, warm, what the digits say, whatever was kept before (and across the map being emptied)', async (t) => {
  const fresh = await cold<typeof import('../lib/kernel/money.js')>('../lib/kernel/money.js', 'units')
  fc.assert(fc.property(fc.array(decimal, { minLength: 1, maxLength: 40 }), (texts) => {
    for (const text of texts) {
      const expected = reference(text)
      if (toUnits(text) !== expected || toUnits(text) !== expected || fresh.toUnits(text) !== expected) return false
    }
    return true
  }), { numRuns: 3000 })
  // Keys that look alike are different texts with the same units, or different units: never each other's.
  const alike = ['1', '1.0', '01', '1.00000000000', '-1', '-0', '0', '-0.0', '0.1', '0.10', '0.10000000000', '.1', '1.', '10', '100000000000000000',
    '999999999999999.9999999999', '9999999999999999.9999999999', '900719.9254740992', '900719.9254740993', '0'.repeat(48) + '1', '0'.repeat(47) + '1']
  for (let round = 0; round < 3; round++) for (const text of alike) t.equal(toUnits(text), reference(text), `${JSON.stringify(text)}, round ${round}`)
})

t.test('fromUnits answers, warm, the canonical text of its units (and across the map being emptied)', async (t) => {
  const units = fc.oneof(fc.bigInt({ min: -(10n ** 28n), max: 10n ** 28n }), fc.bigInt({ min: -100000n, max: 100000n }), fc.bigInt({ min: -(2n ** 60n), max: 2n ** 60n }))
  fc.assert(fc.property(fc.array(units, { minLength: 1, maxLength: 60 }), (values) => values.every((value) => fromUnits(value) === formatted(value) && fromUnits(value) === formatted(value))), { numRuns: 3000 })
  for (const value of [0n, -1n, 1n, SCALE, -SCALE, 10n ** 28n - 1n, -(10n ** 28n - 1n), 10n ** 38n]) t.equal(fromUnits(value), formatted(value), String(value))
})

t.test('parseMoney answers a canonical text as itself only when the full reading answers the same', async (t) => {
  const fresh = await cold<typeof import('../lib/kernel/money.js')>('../lib/kernel/money.js', 'parse')
  const answer = (parse: typeof parseMoney, value: unknown): string => { try { return parse(value, 'amount') } catch (error) { return `refused: ${(error as Error).message}` } }
  const edges = ['00.5', '.5', '5.', '1_000', '٣', '１', '1.00000000000', '1.0000000000', '-0', '-0.0', '-0.00000000001', '+0', 'NaN', 'Infinity', ' 1', '1 ', '\n1', '1\n',
    '999999999999999999.9999999999', '-999999999999999999.9999999999', '1000000000000000000', '99999999999999999', '0.0000000001', '0.00000000010', '0.00000000001',
    '123456789012345678.1234567891', '1e3', '0x10', '0b1', '1.5e-3', '']
  for (const value of edges) {
    const answered = answer(parseMoney, value)
    // The full reading of the same text: a space in front (trimmed) never matches the canonical shape.
    t.equal(answered, answer(fresh.parseMoney, ` ${value}`), JSON.stringify(value))
    if (!answered.startsWith('refused')) {
      t.equal(toUnits(answered), reference(answered.trim()), `${JSON.stringify(value)}'s units`)
      t.equal(parseMoney(answered, 'amount'), answered, `${JSON.stringify(value)} read again`)
      t.equal(fromUnits(toUnits(answered)), answered, `${JSON.stringify(value)} is canonical`)
    }
  }
  // Every decimal answered is canonical: read again, through units, it is itself; a JSON number answers its string's answer.
  fc.assert(fc.property(fc.oneof(decimal, fc.stringMatching(/^-?0*\d{0,19}(\.\d{0,11}0*)?$/)), (value) => {
    const answered = answer(parseMoney, value)
    if (answered !== answer(fresh.parseMoney, ` ${value}`)) return false
    return answered.startsWith('refused') || (fromUnits(toUnits(answered)) === answered && toUnits(answered) === reference(value))
  }), { numRuns: 20_000 })
  fc.assert(fc.property(fc.double({ noNaN: true, noDefaultInfinity: true }), (value) => {
    const answered = answer(parseMoney, value)
    return answered.startsWith('refused') || answered === answer(parseMoney, numberToDecimal(value))
  }), { numRuns: 5000 })
})

t.test('a threshold percent, kept, compares as the percent read fresh does', async (t) => {
  const percents = [-0, 0, 1e-7, 1.2345e-7, 33.3333333333, 50, 75, 90, 99.9999999999, 100, 150, 1e21, 5e-11]
  const amounts = ['0', '1', '0.75', '0.7499999999', '33.3333333333', '0.0000000001', '999999999999999999.9999999999']
  const reached = (amount: string, limit: string, percent: number): boolean => reference(amount) * 100n * SCALE >= toUnits(numberToDecimal(percent)) * reference(limit)
  for (let round = 0; round < 2; round++) {
    for (const percent of percents) for (const amount of amounts) t.equal(percentReached(amount, '1', percent), reached(amount, '1', percent), `${amount} of 1 at ${percent}%`)
  }
  fc.assert(fc.property(fc.double({ min: 0, max: 1000, noNaN: true }), decimal, (percent, amount) => {
    if (amount.startsWith('-') || amount.length > 29) return true
    return percentReached(fromUnits(reference(amount)), '100', percent) === reached(fromUnits(reference(amount)), '100', percent)
  }), { numRuns: 3000 })
})

t.test("a model's encoding, kept, is the encoding a cold process finds", async (t) => {
  const fresh = await cold<typeof import('../lib/pricing/tokens.js')>('../lib/pricing/tokens.js', 'encoding')
  const names = ['gpt-4o', 'gpt-4', 'gpt-4o-mini', 'gpt-4.1', 'gpt-40', 'gpt-4-', 'GPT-4o', 'o1', 'o1-mini', 'o2', 'gpt-5', 'gpt-5.1', 'gpt-3.5-turbo', 'gpt-3.5-turbo-16k',
    'text-embedding-3-small', 'claude-3', '', ' gpt-4o', 'gpt-4o ', '__proto__', 'constructor', 'toString', 'gpt-4o' + 'x'.repeat(59), 'gpt-4o-' + 'x'.repeat(59)]
  for (let round = 0; round < 3; round++) for (const name of names) t.equal(encodingFor(name), fresh.encodingFor(name), `${JSON.stringify(name)}, round ${round}`)
  fc.assert(fc.property(fc.oneof(fc.string({ maxLength: 70 }), fc.constantFrom('gpt-4o', 'gpt-4', 'o3', 'gpt-4.1').chain((head) => fc.string({ maxLength: 8 }).map((tail) => head + tail))),
    (name) => encodingFor(name) === fresh.encodingFor(name) && encodingFor(name) === fresh.encodingFor(name)), { numRuns: 5000 })
})

/** The prompt tokens of `body` and the work its counter spent, after `before` (other requests) in the same process. */
async function counted (model: string, body: { messages: unknown[] }, before: Array<{ model: string, body: { messages: unknown[] } }>, window?: number): Promise<{ tokens: number, work: number }> {
  forgetCountedPieces()
  for (const earlier of before) await chatPromptTokens(earlier.body, tokenCounter(earlier.model, undefined, window)!)
  let work = 0
  const workOnly = slices({ ms: Number.POSITIVE_INFINITY, work: Number.POSITIVE_INFINITY })
  const spend = workOnly.spend.bind(workOnly)
  workOnly.spend = (units: number) => { work += units; spend(units) }
  const tokens = await chatPromptTokens(body, tokenCounter(model, workOnly)!)
  return { tokens, work }
}

// Short texts of letters, marks, digits, apostrophes, spaces, line breaks, CJK and both halves of surrogate pairs, around the 12-character limit.
const piece = fc.constantFrom('a', 'b', 'ab', 'A', 'é', 'e\u0301', '日', '本', '1', '23', "'", "'s", ' ', '  ', '\n', '\r\n', '\t', '.', '!', '?', '😀', '\ud83d', '\ude00', '<|endoftext|>', 'hello', 'user')
const shortText = fc.array(piece, { maxLength: 8 }).map((parts) => parts.join('')).filter((text) => text.length <= 14)
const model = fc.constantFrom('gpt-4o', 'gpt-4')
const request = fc.record({ model, texts: fc.array(shortText, { minLength: 1, maxLength: 5 }) })
const bodyOf = (texts: string[]): { messages: unknown[] } => ({ messages: texts.map((content, index) => ({ role: index % 2 === 0 ? 'user' : 'assistant', content })) })

t.test('short texts split before, by either encoding and any window, count and charge as in a cold process', async () => {
  await fc.assert(fc.asyncProperty(fc.array(request, { maxLength: 3 }), request, fc.constantFrom(undefined, 4, 12, 13), async (before, now, window) => {
    const body = bodyOf(now.texts)
    const fresh = await counted(now.model, body, [])
    const warm = await counted(now.model, body, before.map((earlier) => ({ model: earlier.model, body: bodyOf(earlier.texts) })), window)
    const again = await counted(now.model, body, [{ model: now.model, body }, { model: now.model === 'gpt-4o' ? 'gpt-4' : 'gpt-4o', body }])
    return fresh.tokens === warm.tokens && fresh.work === warm.work && fresh.tokens === again.tokens && fresh.work === again.work
  }), { numRuns: 400 })
})

t.test('a short text counted from the cache counts at least its provider tokens, in either encoding', async () => {
  await fc.assert(fc.asyncProperty(shortText, model, async (text, name) => {
    forgetCountedPieces()
    const count = (): Promise<number> => tokenCounter(name)!(text)
    const first = await count()
    const second = await count()
    return first === second && second >= providerTokens(name, text)!
  }), { numRuns: 1000 })
})

// The process's piece counts (tokenizer pieces, keep() in lib/kernel/kept.ts) are keyed by the piece as the
// split pattern's match gives it. A piece of 13 characters or more is a V8 sliced string, a view into the
// request's text: kept as it is, one new 16-letter word at the front of a 1 MiB message would keep that 1 MiB
// for as long as the process (63 MiB for these 64 requests before keep() copied its text keys).
t.test('the piece counts kept by the process do not keep the requests’ texts alive', async (t) => {
  v8.setFlagsFromString('--expose-gc')
  const gc = vm.runInNewContext('gc') as () => void
  const word = (i: number): string => Array.from({ length: 16 }, (_, k) => String.fromCharCode(97 + Math.floor(i / 26 ** (k % 3)) % 26)).join('')
  forgetCountedPieces()
  await chatPromptTokens({ messages: [{ role: 'user', content: 'warm up' }] }, tokenCounter('gpt-4o')!)
  gc(); gc()
  const before = process.memoryUsage().heapUsed
  for (let i = 0; i < 64; i++) {
    // As the gate gets it: a body's JSON parsed, its content one flat string.
    const body = JSON.parse(JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: `${word(i)} ${'x'.repeat(1 << 20)}` }] })) as { messages: unknown[] }
    await chatPromptTokens(body, tokenCounter('gpt-4o')!)
  }
  gc(); gc()
  const retained = (process.memoryUsage().heapUsed - before) / 2 ** 20
  forgetCountedPieces()
  t.ok(retained < 16, `64 requests of 1 MiB leave ${retained.toFixed(1)} MiB kept by the piece counts (expected a few KiB)`)
})

t.test('a request during which the split texts, or the piece counts, are emptied (full) counts and charges as in a cold process', async (t) => {
  // 4096 split texts kept at most: earlier requests of distinct short texts fill the map to just short of
  // full, so that it is emptied between two texts of the request under test (which repeats its texts).
  const distinct = (i: number): string => `q${i.toString(36)}`
  const body = bodyOf(['user', 'hi hi', 'user', 'Say hello', 'hi hi', 'assistant', 'ab ab', 'user', 'hi hi'])
  const fresh = await counted('gpt-4o', body, [])
  for (const filled of [4085, 4090, 4093, 4094, 4095, 4096, 4097, 19_995, 19_999]) {
    const before = Array.from({ length: Math.ceil(filled / 1000) }, (_, r) => ({
      model: 'gpt-4o',
      body: { messages: Array.from({ length: Math.min(1000, filled - r * 1000) }, (_, k) => ({ content: distinct(r * 1000 + k) })) }
    }))
    t.same(await counted('gpt-4o', body, before), fresh, `after ${filled} distinct texts`)
  }
})

t.test('ownText answers the same text, unit for unit (lone surrogates too), of its own', async (t) => {
  fc.assert(fc.property(fc.string({ unit: 'binary', maxLength: 64 }), fc.nat(20), (text, cut) => {
    const piece = text.slice(Math.min(cut, text.length))
    const own = ownText(piece)
    return own === piece && own.length === piece.length
  }), { numRuns: 2000 })
  t.equal(ownText('\ud800'.repeat(13)), '\ud800'.repeat(13))
})
