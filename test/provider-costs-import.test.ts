// The cost CSV import (POST {prefix}/provider-costs/import) and the list of stored costs (GET {prefix}/provider-costs):
// a good file stored whole and exactly, the same file again changing nothing, a corrected line replacing its
// bucket (audited), every malformed file a 4xx that stores nothing, and a fast-check battery of hostile files.
import t from 'tap'
import fc from 'fast-check'
import { buildApp, PREFIX, snapshotTables, type TestApp } from './fixtures/app.js'

const IMPORT = `${PREFIX}/provider-costs/import`

async function importCsv (app: TestApp, body: string | Buffer, contentType = 'text/csv') {
  return await app.admin({ method: 'POST', url: IMPORT, payload: body, headers: { 'content-type': contentType } })
}

const GOOD = '\ufeffdate,provider,account,project,model,line_item,amount,currency\r\n' +
  '2024-06-01,mistral,acme,web,mistral-large,"input, cached",0.1234567890123456789012345,EUR\r\n' +
  '2024-06-01,mistral,acme,web,mistral-large,"the ""fast"" tier",12,EUR\r\n' +
  '2024-06-02,together,acme,,llama-3-70b,,-0.50,USD\r\n' +
  '2024-06-03,mistral,"acme\nsecond line",,,,100000000000000000000.000000000000000000001,EUR\n'

t.test('a good file is stored whole with exact amounts; the same file again changes nothing; a corrected line is replaced and audited', async (t) => {
  const app = await buildApp(t)
  const first = await importCsv(app, GOOD)
  t.equal(first.statusCode, 200, first.body)
  t.same(first.json(), { rows: 4, inserted: 4, corrected: 0, unchanged: 0 })
  const listed = (await app.admin({ url: `${PREFIX}/provider-costs` })).json<{ costs: Array<Record<string, unknown>>, nextCursor: string | null }>()
  t.same(listed.costs.map(({ date, provider, account, project, model, lineItem, amount, currency, source }) => [date, provider, account, project, model, lineItem, amount, currency, source]), [
    ['2024-06-01', 'mistral', 'acme', 'web', 'mistral-large', 'input, cached', '0.1234567890123456789012345', 'EUR', 'csv'],
    ['2024-06-01', 'mistral', 'acme', 'web', 'mistral-large', 'the "fast" tier', '12', 'EUR', 'csv'],
    ['2024-06-02', 'together', 'acme', '', 'llama-3-70b', '', '-0.5', 'USD', 'csv'],
    ['2024-06-03', 'mistral', 'acme\nsecond line', '', '', '', '100000000000000000000.000000000000000000001', 'EUR', 'csv']
  ], 'quoted fields, doubled quotes, a line break inside quotes; amounts digit for digit')
  t.equal(listed.nextCursor, null)

  const before = await snapshotTables(app.sql)
  const again = await importCsv(app, GOOD)
  t.same(again.json(), { rows: 4, inserted: 0, corrected: 0, unchanged: 4 })
  t.same(await snapshotTables(app.sql), before, 'imported twice: nothing changed, not even collected_at')

  const corrected = await importCsv(app, 'amount,currency,date,provider,account,project,model,line_item\n12.0000000001,EUR,2024-06-01,mistral,acme,web,mistral-large,"the ""fast"" tier"\n')
  t.same(corrected.json(), { rows: 1, inserted: 0, corrected: 1, unchanged: 0 }, 'columns in any order')
  const audit = (await app.admin({ url: `${PREFIX}/audit` })).json<{ entries: Array<Record<string, unknown>> }>().entries
  t.match(audit, [{ action: 'correct-provider-cost', budgetId: null, actor: 'admin', requestId: String, before: { source: 'csv', provider: 'mistral', lineItem: 'the "fast" tier', amount: '12' }, after: { amount: '12.0000000001' } }])
})

t.test('the list: filters by provider, source and days, pages by keyset; a bad query is a 400', async (t) => {
  const app = await buildApp(t)
  const lines = Array.from({ length: 25 }, (_, index) => `2024-07-${String(1 + (index % 10)).padStart(2, '0')},${index % 2 === 0 ? 'mistral' : 'cohere'},acme,p${index},,,${index}.5,USD`)
  t.equal((await importCsv(app, `date,provider,account,project,model,line_item,amount,currency\n${lines.join('\n')}`)).statusCode, 200)
  const seen: string[] = []
  let cursor: string | null = null
  let pages = 0
  do {
    const url: string = `${PREFIX}/provider-costs?provider=mistral&from=2024-07-02&to=2024-07-09&limit=4${cursor === null ? '' : `&cursor=${cursor}`}`
    const page = (await app.admin({ url })).json<{ costs: Array<{ date: string, project: string, provider: string }>, nextCursor: string | null }>()
    for (const cost of page.costs) {
      t.equal(cost.provider, 'mistral')
      seen.push(`${cost.date} ${cost.project}`)
    }
    cursor = page.nextCursor
    pages++
  } while (cursor !== null && pages < 20)
  const expected = lines.map((line, index) => ({ line, index })).filter(({ index }) => index % 2 === 0 && index % 10 >= 1 && index % 10 <= 8)
    .map(({ line, index }) => `${line.slice(0, 10)} p${index}`).sort()
  t.same([...seen].sort(), expected, 'every matching bucket once, across pages')
  t.same(seen, [...seen].sort((a, b) => a.slice(0, 10).localeCompare(b.slice(0, 10))), 'by day')
  for (const query of ['from=2024-02-30', 'to=yesterday', 'from=2024-07-05&to=2024-07-01', 'limit=0', 'cursor=abc', 'cursor=999999', 'provider=Mistral', 'source=bank', 'x=1']) {
    const response = await app.admin({ url: `${PREFIX}/provider-costs?${query}` })
    t.equal(response.statusCode, 400, query)
    t.equal(response.json().code, 'BUDGET_ERR_VALIDATION', query)
  }
  t.equal((await app.app.inject({ url: `${PREFIX}/provider-costs` })).statusCode, 401, 'admin auth')
  t.equal((await app.app.inject({ method: 'POST', url: IMPORT, payload: GOOD, headers: { 'content-type': 'text/csv' } })).statusCode, 401)
})

const HEADER = 'date,provider,account,amount,currency'
const MALFORMED: Array<[string, string | Buffer, number?]> = [
  ['an empty file', ''],
  ['a header only', `${HEADER}\n`],
  ['an unknown column', `${HEADER},region\n2024-01-01,x,a,1,USD,eu\n`],
  ['a missing column', 'date,provider,account,amount\n2024-01-01,x,a,1\n'],
  ['a column named twice', `${HEADER},amount\n2024-01-01,x,a,1,USD,1\n`],
  ['too few fields', `${HEADER}\n2024-01-01,x,a,1\n`],
  ['too many fields', `${HEADER}\n2024-01-01,x,a,1,USD,extra\n`],
  ['a blank line', `${HEADER}\n2024-01-01,x,a,1,USD\n\n2024-01-02,x,a,1,USD\n`],
  ['a day that does not exist', `${HEADER}\n2024-02-30,x,a,1,USD\n`],
  ['a date with slashes', `${HEADER}\n2024/01/01,x,a,1,USD\n`],
  ['a date and time', `${HEADER}\n2024-01-01T00:00:00Z,x,a,1,USD\n`],
  ['a provider in upper case', `${HEADER}\n2024-01-01,OpenAI,a,1,USD\n`],
  ['an empty account', `${HEADER}\n2024-01-01,x,,1,USD\n`],
  ['an exponent', `${HEADER}\n2024-01-01,x,a,1e5,USD\n`],
  ['a thousands separator', `${HEADER}\n2024-01-01,x,a,"1,000.00",USD\n`],
  ['an empty amount', `${HEADER}\n2024-01-01,x,a,,USD\n`],
  ['a word for an amount', `${HEADER}\n2024-01-01,x,a,NaN,USD\n`],
  ['41 digits', `${HEADER}\n2024-01-01,x,a,${'9'.repeat(41)},USD\n`],
  ['a lower-case currency', `${HEADER}\n2024-01-01,x,a,1,usd\n`],
  ['an unterminated quote', `${HEADER}\n2024-01-01,x,"a,1,USD\n`],
  ['a quote inside an unquoted field', `${HEADER}\n2024-01-01,x,a"b,1,USD\n`],
  ['text after a closing quote', `${HEADER}\n2024-01-01,x,"a"b,1,USD\n`],
  ['a lone carriage return', `${HEADER}\r2024-01-01,x,a,1,USD\n`],
  ['the same bucket twice', `${HEADER}\n2024-01-01,x,a,1,USD\n2024-01-01,x,a,2,USD\n`],
  ['a field over 512 characters', `${HEADER}\n2024-01-01,x,${'a'.repeat(513)},1,USD\n`],
  ['a NUL character', `${HEADER}\n2024-01-01,x,a\u0000b,1,USD\n`],
  ['bytes that are not UTF-8', Buffer.concat([Buffer.from(`${HEADER}\n2024-01-01,x,`), Buffer.from([0xff, 0xfe]), Buffer.from(',1,USD\n')])],
  ['a bad line after good ones (all or nothing)', `${HEADER}\n${Array.from({ length: 50 }, (_, index) => `2024-01-01,x,a${index},1,USD`).join('\n')}\n2024-01-01,x,b,oops,USD\n`],
  ['more than 10,000 lines', `${HEADER}\n${Array.from({ length: 10_001 }, (_, index) => `2024-01-01,x,a${index},1,USD`).join('\n')}\n`],
  ['more than 1 MiB', `${HEADER}\n${'2024-01-01,x,a,1,USD\n'.repeat(52_000)}`, 413],
  ['JSON instead of CSV', JSON.stringify({ date: '2024-01-01' }), 415],
  ['a JSON string of CSV', JSON.stringify(`${HEADER}\n2024-01-01,x,a,1,USD\n`), 415],
  ['plain text', `${HEADER}\n2024-01-01,x,a,1,USD\n`, 415]
]

t.test('a malformed file is a 4xx with a stable code, and stores nothing', async (t) => {
  const app = await buildApp(t)
  t.equal((await importCsv(app, `${HEADER}\n2024-01-01,keep,a,1,USD\n`)).statusCode, 200)
  const before = await snapshotTables(app.sql)
  for (const [name, body, status] of MALFORMED) {
    const response = await importCsv(app, body, name.startsWith('JSON') || name.startsWith('a JSON') ? 'application/json' : name === 'plain text' ? 'text/plain' : 'text/csv')
    t.equal(response.statusCode, status ?? 400, `${name}: ${response.body.slice(0, 200)}`)
    t.match(response.json().code, status === 413 ? 'FST_ERR_CTP_BODY_TOO_LARGE' : status === 415 ? 'FST_ERR_CTP_INVALID_MEDIA_TYPE' : /^BUDGET_ERR_(COST_CSV_INVALID|VALIDATION)$/, name)
  }
  t.match((await importCsv(app, `${HEADER}\n2024-01-01,x,a,1,USD\n2024-01-01,x,a,2,USD\n`)).json(), { code: 'BUDGET_ERR_COST_CSV_INVALID', field: 'line 3', message: /line 2/ }, 'the line at fault, and the line it repeats')
  const tooMany = (await importCsv(app, MALFORMED.find(([name]) => name === 'more than 10,000 lines')![1])).json()
  t.match(tooMany, { code: 'BUDGET_ERR_COST_CSV_INVALID', field: 'line 10002', message: /more than 10,000 data lines; split the file: each part is imported on its own, and importing a part again changes nothing/ })
  const tooLarge = (await importCsv(app, MALFORMED.find(([name]) => name === 'more than 1 MiB')![1])).json()
  t.match(tooLarge, { code: 'FST_ERR_CTP_BODY_TOO_LARGE', statusCode: 413, message: /larger than 1 MiB: split the file into parts of at most 10,000 lines and 1 MiB; each part is imported on its own/ })
  t.same(await snapshotTables(app.sql), before, 'nothing stored, nothing changed')
})

t.test('fast-check: any file is stored whole or refused with a coded 4xx that stores nothing; never a 5xx', async (t) => {
  const app = await buildApp(t)
  const field = fc.oneof(
    fc.constantFrom('2024-01-01', '2024-02-29', '2023-02-29', 'mistral', 'acme', 'USD', 'usd', '1', '0.1', '-0', '1e3', '', '"', '""', ',', '\n', '\r\n', '\r', ' ', '\u0000', '\ud800', '__proto__', 'x'.repeat(600), '9'.repeat(40), '9'.repeat(41)),
    fc.string({ maxLength: 12 }),
    fc.string({ unit: 'binary', maxLength: 8 })
  )
  const quoted = fc.tuple(field, fc.boolean()).map(([text, quote]) => quote ? `"${text.replaceAll('"', '""')}"` : text)
  const header = fc.oneof(
    fc.constant('date,provider,account,project,model,line_item,amount,currency'),
    fc.shuffledSubarray(['date', 'provider', 'account', 'project', 'model', 'line_item', 'amount', 'currency', 'amount', 'region', ''], { minLength: 1 }).map((names) => names.join(','))
  )
  const good = fc.record({ day: fc.integer({ min: 1, max: 28 }), provider: fc.constantFrom('mistral', 'cohere'), project: fc.constantFrom('', 'p1', 'p,2', 'p "3"'),
    amount: fc.oneof(fc.bigInt({ min: -(10n ** 20n), max: 10n ** 20n }).map(String), fc.tuple(fc.nat(), fc.nat()).map(([a, b]) => `${a}.${b}`)) })
    .map(({ day, provider, project, amount }) => `2024-03-${String(day).padStart(2, '0')},${provider},acme,"${project.replaceAll('"', '""')}",,,${amount},USD`)
  const file = fc.oneof(
    fc.tuple(header, fc.array(fc.array(quoted, { minLength: 1, maxLength: 9 }).map((fields) => fields.join(',')), { maxLength: 5 }), fc.constantFrom('\n', '\r\n'))
      .map(([head, lines, eol]) => [head, ...lines].join(eol)),
    fc.array(good, { minLength: 1, maxLength: 8 }).map((lines) => ['date,provider,account,project,model,line_item,amount,currency', ...lines].join('\n')),
    fc.string({ maxLength: 200 })
  )
  let accepted = 0
  let refused = 0
  await fc.assert(fc.asyncProperty(file, async (text) => {
    const before = await snapshotTables(app.sql)
    const response = await importCsv(app, text)
    if (response.statusCode >= 500) throw new Error(`a 5xx for ${JSON.stringify(text)}: ${response.body}`)
    if (response.statusCode >= 400) {
      refused++
      const { code, statusCode } = response.json<{ code?: string, statusCode?: number }>()
      if (typeof code !== 'string' || !/^(BUDGET_ERR_|FST_ERR_)[A-Z0-9_]+$/.test(code) || statusCode !== response.statusCode) throw new Error(`an uncoded 4xx: ${response.body}`)
      const after = await snapshotTables(app.sql)
      if (JSON.stringify(after) !== JSON.stringify(before)) throw new Error(`a 4xx that changed the tables: ${JSON.stringify(text)}`)
      return
    }
    accepted++
    const counts = response.json<{ rows: number, inserted: number, corrected: number, unchanged: number }>()
    if (counts.inserted + counts.corrected + counts.unchanged !== counts.rows) throw new Error(`counts that do not add up: ${response.body}`)
  }), { numRuns: 300, seed: 20261203 })
  t.ok(accepted > 20, `some files were stored (${accepted})`)
  t.ok(refused > 20, `some were refused (${refused})`)
})
