// Every recipe in the README is a program; run each against a real database, as a reader would.
import { execFile } from 'node:child_process'
import { readFile, rm, writeFile } from 'node:fs/promises'
import { promisify } from 'node:util'
import t from 'tap'
import { createTestDatabase } from './fixtures/database.js'

const run = promisify(execFile)
const root = new URL('..', import.meta.url)
const readme = await readFile(new URL('README.md', root), 'utf8')
const recipes = [...readme.matchAll(/<!-- recipe: (\w+) -->\n```ts\n([\s\S]*?)```/g)].map(([, name, code]) => ({ name: name!, code: code! }))

// What each recipe prints when it works.
const expected: Record<string, RegExp> = {
  register: /^function function$/,
  define: /^Acme > Platform 2000$/,
  gate: /^200 0\.\d+ 402 budget_exceeded$/,
  status: /^12\.5 87\.5 12\.5 normal$/,
  alerts: /^Budget 'Platform' crossed 50% \(60 of 100 USD\): notify$/,
  apis: /^\/v1\/chat\/completions 200, \/v1\/responses 200, \/v1\/messages 200, \/v1\/embeddings 200 \| 402 billing_error$/
}

t.same(recipes.map((recipe) => recipe.name), Object.keys(expected), 'the README has the six recipes')

for (const { name, code } of recipes) {
  t.test(`the README recipe "${name}" runs`, async (t) => {
    // In this repository the package is lib/ itself.
    const file = new URL(`test/fixtures/readme-${name}.ts`, root)
    await writeFile(file, code.replaceAll("'@relaycore/budgets'", "'../../lib/index.js'"))
    t.teardown(async () => await rm(file, { force: true }))
    const { stdout } = await run(process.execPath, ['--import', 'tsx', file.pathname], { env: { ...process.env, DATABASE_URL: await createTestDatabase(t) } })
    t.match(stdout.trim(), expected[name]!)
  })
}
