// `npm run mutation` (docs/mutation.md): StrykerJS mutates the pure rule modules and runs their pure test files
// (test/fixtures/rule-tests.ts) once per mutant. A mutant that no test notices is a rule no test pins down.
/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  testRunner: 'command',
  commandRunner: { command: 'node --import tsx test/fixtures/rule-tests.ts' },
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
