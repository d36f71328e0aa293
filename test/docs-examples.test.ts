// Every shell example in the README and in docs/ that calls curl runs as written: the real example
// gateway (`npm start`'s script) on a database of its own per page, the admin token exported as the
// README's quick start says (and docs/access.md's LEAD_KEY, docs/approvals.md's FINANCE_KEY), each page's examples run by bash in order, each to exit 0. Variables an
// example sets (an id picked out with jq) are there for the page's later examples, as in one terminal.
// The one change made to the text: the gateway listens on a free port, so http://127.0.0.1:3000 is
// replaced by its address (tap runs test files side by side, and 3000 may be taken).
import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { createTestDatabase } from './fixtures/database.js'
import { fencedBlocks, readDocsPages } from './fixtures/docs-pages.js'
import { startGatewayProcess } from './fixtures/gateway-process.js'

const run = promisify(execFile)
const DOCUMENTED_ORIGIN = 'http://127.0.0.1:3000'
const ADMIN_TOKEN = 'docs-examples-admin-token-0123456789'
// docs/access.md's team lead: the key its start command makes, given to every page's gateway in ADMIN_KEYS
// (the platform admin's token works beside it) and exported as that page's examples expect.
const LEAD_KEY = 'lead-platform-docs-examples-0123456789'
// docs/approvals.md's finance: an approver of every tree, the second level of its policy
const FINANCE_KEY = 'finance-docs-examples-0123456789'
const ADMIN_KEYS = JSON.stringify({
  [LEAD_KEY]: { actor: 'lead-platform', role: 'editor', scopes: [{ scopeType: 'team', scopeId: 'platform' }] },
  [FINANCE_KEY]: { actor: 'finance', role: 'approver', scopes: null }
})

/** Runs `example` after `state` (what earlier examples set), and writes back what it set. */
function script (example: string, stateFile: string): string {
  return [
    'set -euo pipefail',
    '__known=" $(compgen -v | tr \'\\n\' \' \') "',
    `source ${JSON.stringify(stateFile)}`,
    example,
    // Every variable the examples have set so far, for the next example (names starting __ are ours).
    `for __name in $(compgen -v); do case "$__known" in *" $__name "*) ;; *) [[ $__name == __* ]] || declare -p "$__name" ;; esac; done > ${JSON.stringify(stateFile)}`
  ].join('\n')
}

const pages = (await readDocsPages())
  .map(({ path, text }) => ({ path, examples: fencedBlocks(text, ['sh', 'bash']).filter((code) => /\bcurl\b/.test(code)) }))
  .filter(({ examples }) => examples.length > 0)

t.ok(pages.some(({ path }) => path === 'README.md'), 'the README has curl examples, and they are run')

for (const { path, examples } of pages) {
  t.test(`the curl examples of ${path} run as written`, async (t) => {
    const gateway = await startGatewayProcess({ DATABASE_URL: await createTestDatabase(t), ADMIN_TOKEN, ADMIN_KEYS, NOTIFY_CHANNELS: undefined, GATEWAY_KEYS: undefined, BUDGETS_DATA_DIR: undefined })
    t.teardown(async () => await gateway.stop())
    const directory = await mkdtemp(join(tmpdir(), 'relaycore-docs-'))
    t.teardown(async () => await rm(directory, { recursive: true, force: true }))
    const stateFile = join(directory, '.state')
    await writeFile(stateFile, '')
    for (const [index, example] of examples.entries()) {
      const code = example.replaceAll(DOCUMENTED_ORIGIN, gateway.url)
      try {
        await run('bash', ['-c', script(code, stateFile)], { cwd: directory, env: { ...process.env, ADMIN_TOKEN, LEAD_KEY, FINANCE_KEY }, timeout: 60_000 })
        t.pass(`${path}, example ${index + 1} exits 0`)
      } catch (error) {
        const { code: exit, stdout, stderr } = error as { code: unknown, stdout: string, stderr: string }
        t.fail(`${path}, example ${index + 1} exits ${String(exit)}`, { example, stdout: stdout.slice(-2000), stderr: stderr.slice(-2000) })
      }
    }
  })
}
