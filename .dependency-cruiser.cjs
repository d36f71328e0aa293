// The import rules of lib/ (docs/layout.md draws them). `npm run lint:imports` checks them; .ci/run runs it.
// A domain is a folder of lib/. It imports the kernel, its own files, and the entry module (index.ts) of
// the domains below it, never their other files: the entry says what a domain hands out. The root files
// (lib/index.ts, lib/options.ts, lib/repositories.ts) compose the plugin and may import any of it.
const below = {
  kernel: [],
  audit: [],
  access: [],
  pricing: [],
  reports: [],
  budgets: ['audit'],
  currencies: ['audit'],
  'model-apis': ['pricing'],
  usage: ['audit', 'budgets'],
  gate: ['audit', 'budgets', 'usage', 'pricing'],
  alerts: ['audit', 'budgets', 'usage'],
  metrics: ['usage'],
  approvals: ['audit', 'budgets', 'usage', 'alerts'],
  'provider-costs': ['audit'],
  reconciliation: ['audit'],
  simulate: ['audit', 'budgets', 'pricing'],
  http: ['access', 'approvals', 'audit', 'budgets', 'usage', 'pricing', 'model-apis', 'currencies', 'reports', 'gate', 'alerts', 'metrics', 'provider-costs', 'reconciliation', 'simulate']
}
const entry = (domains) => domains.map((domain) => `^lib/${domain}/index\\.ts$`)

module.exports = {
  forbidden: [
    { name: 'no-circular', severity: 'error', comment: 'lib/ has no import cycle', from: { path: '^lib/' }, to: { circular: true } },
    {
      name: 'no-fastify-in-domains',
      severity: 'error',
      comment: 'Only the HTTP side and the plugin root know Fastify; a domain takes a Logger (lib/kernel/logger.ts), not a Fastify logger (@fastify/error is an error factory, no server)',
      from: { path: '^lib/[^/]+/', pathNot: '^lib/http/' },
      to: { path: '(^|/)node_modules/(fastify|@fastify/[^/]+|fastify-plugin)/', pathNot: '(^|/)node_modules/@fastify/error/' }
    },
    { name: 'no-unresolvable', severity: 'error', from: { path: '^lib/' }, to: { couldNotResolve: true } }
  ],
  allowed: [
    { comment: 'anything outside lib/: node built-ins and packages', from: { path: '^lib/' }, to: { pathNot: '^lib/' } },
    { comment: 'the root composes the plugin', from: { path: '^lib/[^/]+\\.ts$' }, to: { path: '^lib/' } },
    ...Object.entries(below).map(([domain, lower]) => ({
      comment: `${domain}: its own files, the kernel${lower.length === 0 ? '' : ', and the entries of ' + lower.join(', ')}`,
      from: { path: `^lib/${domain}/` },
      to: { path: [`^lib/${domain}/`, '^lib/kernel/', ...entry(lower)] }
    }))
  ],
  allowedSeverity: 'error',
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'require', 'node', 'default', 'types'], extensions: ['.ts', '.js', '.d.ts'] }
  }
}
