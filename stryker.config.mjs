// `npm run mutation` (docs/mutation.md): StrykerJS mutates the pure rule modules and runs their pure test files
// (test/fixtures/rule-tests.ts) once per mutant. A mutant that no test notices is a rule no test pins down.
// Stryker builds its sandbox's instrumented code (every mutant in it, switched on one at a time by an environment
// variable) into one bundle first: a start of the bundle costs a third of the CPU of a start under tsx.
/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  testRunner: 'command',
  buildCommand: 'esbuild test/fixtures/rule-tests.ts --bundle --platform=node --format=esm --packages=external --log-level=warning --outfile=.mutation/rule-tests.mjs',
  commandRunner: { command: 'node .mutation/rule-tests.mjs' },
  mutate: [
    'lib/kernel/money.ts',
    'lib/usage/status-rules.ts',
    'lib/usage/usage-rules.ts',
    'lib/budgets/budget-rules.ts',
    'lib/http/gate/clamp.ts',
    'lib/gate/decision.ts'
  ],
  // The sandbox needs only the code and its tests; node_modules is linked, not copied.
  ignorePatterns: ['/bench', '/docs', '/examples', '/ui', '/sql', '/dist', '/coverage', '/.tap', '/.data', '/reports', '/.stryker-tmp'],
  // The command runner cannot tell which test covers a mutant: every mutant runs the whole command.
  coverageAnalysis: 'off',
  concurrency: 2,
  // One run takes about a second; a mutant that makes a loop endless is stopped and counts as detected.
  timeoutMS: 10_000,
  reporters: ['clear-text', 'progress', 'html', 'json'],
  htmlReporter: { fileName: 'reports/mutation/mutation.html' },
  jsonReporter: { fileName: 'reports/mutation/mutation.json' },
  tempDirName: '.stryker-tmp',
  cleanTempDir: true,
  thresholds: { high: 95, low: 90, break: null }
}
