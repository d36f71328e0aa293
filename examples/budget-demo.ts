// The seed's three usage examples, run for real: create the Q1 team budget, record the GPT-4 usage,
// check constraints. `npm run demo`; on an embedded PostgreSQL unless DATABASE_URL is set.
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Fastify from 'fastify'
import budgets from '../lib/index.js'
import { startEmbeddedPostgres } from './embedded-postgres.js'

const dataDir = await mkdtemp(join(tmpdir(), 'relaycore-budget-demo-'))
const embedded = process.env.DATABASE_URL === undefined ? await startEmbeddedPostgres({ dataDir, persistent: false }) : null
const app = Fastify()
await app.register(budgets, { database: process.env.DATABASE_URL ?? embedded!.url, authorize: () => true, notifications: { channels: { email: { type: 'log' }, slack: { type: 'log' } } } })
await app.ready()
const { budgetRegistry, budgetTracker } = app
const print = (title: string, value: unknown) => { process.stdout.write(`\n== ${title}\n${JSON.stringify(value, null, 2)}\n`) }

try {
  // 1. Create a team budget for Q1.
  const budget = await budgetRegistry.createBudget({
    name: 'Engineering Team Q1 Budget',
    description: 'Quarterly budget for engineering team AI usage',
    scopeType: 'team',
    scopeId: 'team-engineering',
    amount: 10000,
    currency: 'USD',
    period: 'quarterly',
    startDate: new Date('2024-01-01'), // recurring: today it is in this quarter's window
    recurring: true,
    alerts: [
      { threshold: 50, actions: ['notify'], notificationChannels: ['email'] },
      { threshold: 80, actions: ['notify', 'restrict-models'], notificationChannels: ['email', 'slack'] },
      { threshold: 95, actions: ['require-approval'], notificationChannels: ['email', 'slack'] }
    ]
  }, 'admin-user')
  print('1. created the budget', budget)

  // 2. Record the GPT-4 usage.
  const usage = await budgetTracker.recordUsage({
    budgetId: budget.id,
    amount: 25.50,
    currency: 'USD',
    source: 'openai-gpt-4',
    description: 'GPT-4 API calls for code review',
    metadata: { requestId: 'req-123', modelId: 'gpt-4', userId: 'user-456', teamId: 'team-engineering', inputTokens: 1500, outputTokens: 800 }
  })
  print('2. recorded the usage', usage)
  print('   the budget now', await budgetTracker.getBudgetStatus(budget.id))

  // 3. Check constraints before a call estimated at 100.
  const check = await budgetTracker.checkBudgetConstraints(budget.id, 100)
  print('3. may a call estimated at 100 go ahead?', check)
  process.stdout.write(`\n${check.canProceed ? 'Yes' : 'No'}: ${check.reason}. ${check.remaining ?? '?'} ${budget.currency} remaining.\n`)
} finally {
  await app.close()
  await embedded?.stop()
  await rm(dataDir, { recursive: true, force: true })
}
