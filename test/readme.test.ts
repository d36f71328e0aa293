// Every recipe in the README and in docs/ is a program; run each against a real database, as a reader would.
import { execFile } from 'node:child_process'
import { rm, writeFile } from 'node:fs/promises'
import { promisify } from 'node:util'
import t from 'tap'
import { createTestDatabase } from './fixtures/database.js'
import { readDocsPages } from './fixtures/docs-pages.js'

const run = promisify(execFile)
const root = new URL('..', import.meta.url)
const recipes = (await readDocsPages()).flatMap(({ path, text }) =>
  [...text.matchAll(/<!-- recipe: (\w+) -->\n```ts\n([\s\S]*?)```/g)].map(([, name, code]) => ({ path, name: name!, code: code! })))

// What each recipe prints when it works.
const expected: Record<string, RegExp> = {
  register: /^function function$/,
  gate: /^200 0\.\d+ 402 budget_exceeded$/,
  alerts: /^Budget 'Platform' crossed 50% \(60 of 100 USD\): notify$/,
  define: /^Acme > Platform 2000$/,
  apis: /^\/v1\/chat\/completions 200, \/v1\/responses 200, \/v1\/messages 200, \/v1\/embeddings 200 \| 402 billing_error$/,
  status: /^12\.5 87\.5 12\.5 normal$/
}

t.same(recipes.map((recipe) => recipe.name).sort(), Object.keys(expected).sort(), 'the README and docs/ hold these recipes, each once')

for (const { path, name, code } of recipes) {
  t.test(`the recipe "${name}" in ${path} runs`, async (t) => {
    t.ok(name in expected, `${path}: the recipe "${name}" has an expected output in this test`)
    // In this repository the package is lib/ itself.
    const file = new URL(`test/fixtures/readme-${name}.ts`, root)
    await writeFile(file, code.replaceAll("'@relaycore/budgets'", "'../../lib/index.js'"))
    t.teardown(async () => await rm(file, { force: true }))
    const { stdout } = await run(process.execPath, ['--import', 'tsx', file.pathname], { env: { ...process.env, DATABASE_URL: await createTestDatabase(t) } })
    t.match(stdout.trim(), expected[name] ?? /(?!)/)
  })
}
