// The package as a gateway installs it: `npm pack`, then the tarball in a fresh Fastify app.
import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { createTestDatabase } from './fixtures/database.js'

const run = promisify(execFile)
const root = new URL('..', import.meta.url).pathname

t.test('npm pack ships the build and the schema, and a fresh Fastify app can register it', async (t) => {
  const work = await mkdtemp(join(tmpdir(), 'relaycore-package-'))
  t.teardown(async () => await rm(work, { recursive: true, force: true }))

  // prepack builds lib/ into dist/ first
  const { stdout: packed } = await run('npm', ['pack', '--pack-destination', work, '--json'], { cwd: root, maxBuffer: 10 * 1024 * 1024 })
  const [{ filename, files }] = JSON.parse(packed) as [{ filename: string, files: Array<{ path: string }> }]
  const paths = files.map((file) => file.path)
  t.ok(paths.includes('dist/index.js') && paths.includes('dist/index.d.ts'), 'the build, with declarations')
  t.ok(paths.includes('sql/migrations/001_baseline.sql') && paths.includes('sql/functions/settlements.sql'), 'the migrations and the function files')
  t.ok(paths.includes('ui/index.html') && paths.includes('ui/dashboard.js'), 'the dashboard page')
  t.ok(paths.includes('docs/options.md') && paths.includes('docs/glossary.md'), 'the pages the README links to')
  t.same(paths.filter((path) => /^(test|examples|bench|lib)\//.test(path)), [], 'no tests, examples, benchmarks or sources')

  const app = join(work, 'app')
  await run('mkdir', ['-p', app])
  await writeFile(join(app, 'package.json'), JSON.stringify({ name: 'gateway', private: true, type: 'module' }))
  // From npm's cache where it can: these are the project's own dependencies.
  await run('npm', ['install', join(work, filename), 'fastify@5', '--prefer-offline', '--no-audit', '--no-fund', '--ignore-scripts'], { cwd: app, maxBuffer: 10 * 1024 * 1024 })
  await writeFile(join(app, 'gateway.mjs'), `
    import Fastify from 'fastify'
    import budgets from '@relaycore/budgets'
    const app = Fastify()
    await app.register(budgets, { database: process.env.DATABASE_URL, adminToken: 'installed-token-0123456789' })
    const created = await app.inject({
      method: 'POST', url: '/api/v1/budgets', headers: { authorization: 'Bearer installed-token-0123456789' },
      body: { name: 'installed', scopeType: 'team', scopeId: 't', amount: '5', currency: 'USD', period: 'monthly', startDate: '2024-01-01' }
    })
    const status = await app.budgetTracker.getBudgetStatus(created.json().id)
    const chart = await app.inject({ url: '/api/v1/budgets/ui/uPlot.iife.min.js' })
    const page = await app.inject({ url: '/api/v1/budgets/ui/' })
    console.log(created.statusCode, status.limit, status.state, page.statusCode, chart.statusCode)
    await app.close()
  `)
  const { stdout } = await run(process.execPath, ['gateway.mjs'], { cwd: app, env: { ...process.env, DATABASE_URL: await createTestDatabase(t) } })
  t.equal(stdout.trim(), '201 5 active 200 200', 'registered, migrated, and serving the API and the dashboard (with its chart library) from the installed package')
})
