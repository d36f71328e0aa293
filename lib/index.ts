// @relaycore/budgets: the Fastify plugin. Its whole shape is here: options, database, migrations,
// the services it decorates the instance with, and the admin routes.
import fp from 'fastify-plugin'
import type { FastifyPluginAsync } from 'fastify'
import postgres, { type Sql } from 'postgres'
import { migrate } from './database/migrate.js'
import { resolveOptions, type BudgetsOptions } from './options.js'
import { adminRoutes } from './routes/admin.js'
import { createBudgetRegistry, type BudgetRegistry } from './services/registry.js'
import { createBudgetTracker, type BudgetTracker } from './services/tracker.js'

declare module 'fastify' {
  interface FastifyInstance {
    budgetRegistry: BudgetRegistry
    budgetTracker: BudgetTracker
  }
  interface FastifyRequest {
    /** Who called the admin API, as the authorize option named them; null outside it. */
    budgetActor: string | null
  }
}

const budgets: FastifyPluginAsync<BudgetsOptions> = async (fastify, options) => {
  const { database, prefix, migrate: applyMigrations, authorize, statusCacheTtlMs } = resolveOptions(options)

  // Close only the client we open; a host's own client is the host's to end.
  const ownsClient = typeof database === 'string'
  const sql: Sql = ownsClient ? postgres(database, { onnotice: () => {} }) : database
  if (ownsClient) fastify.addHook('onClose', async () => await sql.end({ timeout: 5 }))

  if (applyMigrations) {
    try {
      await migrate(sql)
    } catch (error) {
      if (ownsClient) await sql.end({ timeout: 1 })
      throw error
    }
  }

  const budgetRegistry = createBudgetRegistry(sql)
  const budgetTracker = createBudgetTracker(sql, { statusCacheTtlMs, now: () => new Date() })
  fastify.decorate('budgetRegistry', budgetRegistry)
  fastify.decorate('budgetTracker', budgetTracker)
  fastify.decorateRequest('budgetActor', null)

  await fastify.register(adminRoutes, { prefix, authorize, registry: budgetRegistry, tracker: budgetTracker })
}

export default fp(budgets, { fastify: '5.x', name: '@relaycore/budgets' })
export { budgets }
export * from './errors.js'
export type { Authorize, BudgetsOptions } from './options.js'
export type { BudgetRegistry } from './services/registry.js'
export type { BudgetTracker } from './services/tracker.js'
export type * from './schemas.js'
