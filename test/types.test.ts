// The library API's types, checked by `tsc --noEmit` (part of npm test): every @ts-expect-error below
// must stay an error, or the type check fails. At run time the file only type-checks the seed's calls.
import Fastify from 'fastify'
import t from 'tap'
import { seedBudgetRequest } from './fixtures/app.js'
import budgets, {
  type BudgetConstraintCheck, type BudgetDefinition, type BudgetStatusInfo, type CreateBudgetRequest,
  type RecordUsageRequest, type UpdateBudgetRequest, type UsageRecord
} from '../lib/index.js'

async function seedCalls (): Promise<void> {
  const app = Fastify()
  await app.register(budgets, { database: 'postgres://localhost/budgets', adminToken: 'a-token-of-sixteen-chars' })

  // The seed's three examples, as written there.
  const request: CreateBudgetRequest = seedBudgetRequest()
  const budget: BudgetDefinition = await app.budgetRegistry.createBudget(request, 'admin-user')
  const usage: RecordUsageRequest = {
    budgetId: budget.id,
    amount: 25.50,
    currency: 'USD',
    source: 'openai-gpt-4',
    description: 'GPT-4 API calls for code review',
    metadata: { requestId: 'req-123', modelId: 'gpt-4', userId: 'user-456', teamId: 'team-engineering', inputTokens: 1500, outputTokens: 800 }
  }
  const record: UsageRecord = await app.budgetTracker.recordUsage(usage)
  const check: BudgetConstraintCheck = await app.budgetTracker.checkBudgetConstraints(budget.id, 100)
  const status: BudgetStatusInfo = await app.budgetTracker.getBudgetStatus(budget.id)
  const update: UpdateBudgetRequest = { amount: '12000' }
  await app.budgetRegistry.updateBudget(budget.id, update)
  void [record.amount.toUpperCase(), check.canProceed === true, status.percentUsed.toFixed(2)]

  // Wrong calls the types catch:
  // @ts-expect-error scopeType is one of organization, team, user, project
  await app.budgetRegistry.createBudget({ ...request, scopeType: 'tenant' })
  // @ts-expect-error period has a fixed set of values
  await app.budgetRegistry.createBudget({ ...request, period: 'hourly' })
  // @ts-expect-error an alert action must be one of the five
  await app.budgetRegistry.createBudget({ ...request, alerts: [{ threshold: 50, actions: ['email'], notificationChannels: [] }] })
  // @ts-expect-error a usage record needs its budget
  await app.budgetTracker.recordUsage({ amount: 1, currency: 'USD' })
  // @ts-expect-error token counts are numbers
  await app.budgetTracker.recordUsage({ ...usage, metadata: { inputTokens: '1500' } })
  // @ts-expect-error amounts are decimal strings in responses, not numbers
  const wrong: number = status.currentAmount
  // @ts-expect-error the integration takes scopes by their names
  await app.budgetIntegration.checkCaller({ tenant: 'acme' }, 1)
  // @ts-expect-error options need a database
  await Fastify().register(budgets, { adminToken: 'a-token-of-sixteen-chars' })
  void wrong
}

t.test('the library types accept the seed examples and reject wrong calls (checked by tsc)', async (t) => {
  t.type(seedCalls, 'function')
})
