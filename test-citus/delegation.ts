// Where each delegated gate statement runs on a distributed schema (`npm run test:citus`), by Citus's own
// statistics: the plugin's statement, sent by its own repository from the coordinator, runs whole on the node
// that holds its tree. Two organizations whose trees sit on different workers: each hold goes to its tree's
// worker (EXPLAIN names the node), which runs every statement inside it on its own shards (citus_stat_counters:
// no multi-shard execution and no connection opened or reused on any node, nothing run on the other worker).
import t, { type Test } from 'tap'
import Fastify from 'fastify'
import postgres from 'postgres'
import { randomUUID } from 'node:crypto'
import budgets from '../lib/index.js'
import { distributeOnCitus } from '../lib/kernel/database/citus.js'
import { NIL_ROOT } from '../lib/kernel/database/db.js'
import { migrate } from '../lib/kernel/database/migrate.js'
import { createHoldRepository } from '../lib/gate/hold-repository.js'
import { createLeaseRepository } from '../lib/gate/lease-repository.js'
import { createLineRepository } from '../lib/gate/line-repository.js'
import { createSettlementRepository } from '../lib/gate/settlement-repository.js'
import { createRateRepository } from '../lib/gate/rate-repository.js'
import { createSweeperRepository } from '../lib/gate/sweeper-repository.js'
import { createUsageRepository } from '../lib/usage/usage-repository.js'
import { createStatusRepository } from '../lib/usage/status-repository.js'
import type { BudgetTerms } from '../lib/gate/budget-terms.js'
import { ADMIN_TOKEN, PREFIX } from '../test/fixtures/app.js'
import { createTestSql } from '../test/fixtures/database.js'
import { findViolations } from '../test/fixtures/invariants.js'

interface Counters { connections: number, singleShard: number, multiShard: number }

/** A database migrated and distributed on the cluster, Citus's counters on, and a client on each node's copy of it. */
async function distributedDatabase (t: Test) {
  const { sql, url } = await createTestSql(t, { max: 4 })
  await migrate(sql)
  await distributeOnCitus(sql)
  const database = new URL(url).pathname.slice(1)
  // set on the coordinator, propagated by Citus to the workers' copies of the database, for sessions opened from now on
  await sql.unsafe(`alter database "${database}" set citus.enable_stat_counters = on`)
  await sql.unsafe(`alter database "${database}" set citus.log_remote_commands = on`)
  const nodes = await sql<Array<{ port: number, host: string, coordinator: boolean }>>`
    select nodename as host, nodeport as port, groupid = 0 as coordinator from pg_dist_node where noderole = 'primary' order by groupid`
  const clients = new Map<number, postgres.Sql>()
  for (const node of nodes) {
    const client = postgres({ host: node.host, port: node.port, user: new URL(url).username || 'postgres', database, max: 1, onnotice: () => {} })
    clients.set(node.port, client)
    t.teardown(async () => await client.end({ timeout: 1 }))
  }
  /** Each node's counters for this database (Citus keeps them in shared memory, updated as each execution ends). */
  const counters = async (): Promise<Map<number, Counters>> => new Map(await Promise.all([...clients].map(async ([port, client]) => {
    const [row] = await client<Counters[]>`
      select (connection_establishment_succeeded + connection_establishment_failed + connection_reused)::int as connections,
             query_execution_single_shard::int as "singleShard", query_execution_multi_shard::int as "multiShard"
      from citus_stat_counters where name = current_database()`
    return [port, row!] as const
  })))
  // the app, and with it the connection pool's sessions, only now: they read the setting above when they open
  const app = Fastify()
  await app.register(budgets, { database: postgres(url, { max: 2, onnotice: () => {} }), adminToken: ADMIN_TOKEN, notifications: { intervalMs: 0 } })
  await app.ready()
  t.teardown(async () => await app.close())
  const gateSql = postgres(url, { max: 1, onnotice: () => {} })
  t.teardown(async () => await gateSql.end({ timeout: 1 }))
  const coordinator = nodes.find((node) => node.coordinator)!.port
  return { sql, url, gateSql, app, counters, coordinator, workers: nodes.filter((node) => !node.coordinator).map((node) => node.port) }
}

/** The worker that holds a tree's shard. */
async function nodeOf (sql: postgres.Sql, rootId: string): Promise<number> {
  const [row] = await sql<Array<{ port: number }>>`
    select nodeport as port from citus_shards
    where table_name = 'budget_definitions'::regclass and shardid = get_shard_id_for_distribution_column('budget_definitions', ${rootId}::uuid)`
  return row!.port
}

function delta (after: Map<number, Counters>, before: Map<number, Counters>, port: number): Counters {
  const a = after.get(port)!
  const b = before.get(port)!
  return { connections: a.connections - b.connections, singleShard: a.singleShard - b.singleShard, multiShard: a.multiShard - b.multiShard }
}

/**
 * Two organizations whose trees sit on different workers (created until one is on each), with a hard budget
 * of 100 a month and rate limits, and each one's line.
 */
async function twoTreesOnTwoWorkers (t: Test, database: Awaited<ReturnType<typeof distributedDatabase>>) {
  const { sql, gateSql, app, workers } = database
  t.equal(workers.length, 2, 'a coordinator and two workers')
  const byWorker = new Map<number, { id: string, line: BudgetTerms[] }>()
  for (let i = 0; i < 16 && byWorker.size < 2; i++) {
    const scopeId = `org-${i}`
    const created = await app.inject({
      method: 'POST', url: PREFIX, headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      body: { name: scopeId, scopeType: 'organization', scopeId, amount: '100', currency: 'USD', period: 'monthly', startDate: '2024-01-01', enforcement: 'hard', rateLimits: { requestsPerMinute: 600, tokensPerMinute: 1_000_000 } }
    })
    if (created.statusCode !== 201) t.fail(`${scopeId} not created: ${created.body}`)
    const port = await nodeOf(sql, created.json().id)
    if (byWorker.has(port)) continue
    const { line } = await createLineRepository(gateSql).loadLine({ scopes: [{ type: 'organization', id: scopeId }], model: 'gpt-4o-mini' }, 'USD')
    byWorker.set(port, { id: created.json().id, line })
  }
  t.same([...byWorker.keys()].sort(), [...workers].sort(), 'one organization\'s tree on each worker')
  return byWorker
}

/**
 * Runs `statement` (a repository call that sends `name`) twice, and checks where it ran: the first time by
 * Citus's counters on every node, the second by EXPLAIN of the statement as the client sent it.
 */
async function checkRunsOn (t: Test, database: Awaited<ReturnType<typeof distributedDatabase>>, worker: number, name: string,
  statement: (sql: postgres.Sql) => Promise<unknown>): Promise<void> {
  const { gateSql, counters, coordinator, workers } = database
  const before = await counters()
  await statement(gateSql)
  const after = await counters()
  t.same(delta(after, before, coordinator), { connections: 1, singleShard: 1, multiShard: 0 }, `${name}: the coordinator sent one call, on one connection, to one node`)
  const there = delta(after, before, worker)
  t.equal(there.multiShard, 0, `${name}: no statement inside it ran on more than one shard`)
  t.equal(there.connections, 0, `${name}: the tree's worker opened or reused no connection, every statement ran on its own shards (${there.connections})`)
  t.ok(there.singleShard > 0, `${name}: the tree's worker ran its statements (${there.singleShard} single-shard executions)`)
  t.same(delta(after, before, workers.find((port) => port !== worker)!), { connections: 0, singleShard: 0, multiShard: 0 }, `${name}: the other worker ran nothing`)

  // EXPLAIN of the same statement as sent: one task, on the tree's worker, the function called there
  const sent: Array<{ text: string, parameters: unknown[] }> = []
  const debugSql = postgres(database.url, { max: 1, onnotice: () => {}, debug: (_connection, text, parameters) => { sent.push({ text, parameters }) } })
  try {
    await statement(debugSql)
    const query = sent.find((one) => one.text.includes(name))!
    const plan = (await debugSql.unsafe(`explain (costs off, verbose) ${query.text}`, query.parameters as never[])).map((line) => Object.values(line)[0]).join('\n')
    t.match(plan, /Task Count: 1\n/, `${name}: EXPLAIN shows one task`, { plan })
    t.match(plan, new RegExp(`Node: host=\\S+ port=${worker} `), `${name}: on the tree's worker (${worker})`, { plan })
    // below the node: the function itself, called there
    t.match(plan.slice(plan.indexOf('Node: ')), new RegExp(`(Function Scan on |Output: )(public\\.)?${name}\\b`), `${name}: called there`, { plan })
  } finally {
    await debugSql.end({ timeout: 1 })
  }
}

t.test('a hold runs whole on the node of its tree: two organizations on two workers, each hold on its own', async (t) => {
  const database = await distributedDatabase(t)
  for (const [worker, org] of await twoTreesOnTwoWorkers(t, database)) {
    t.same(org.line.map((budget) => budget.rootId), [org.id], 'the line names its tree')
    const hold = () => ({ reservationId: randomUUID(), requestId: randomUUID(), amount: '0.25', line: org.line })
    await checkRunsOn(t, database, worker, 'budget_hold_batch', async (sql) => {
      const [held] = await createHoldRepository(sql).holdBatch([hold()], 'USD', 60_000)
      t.ok(held!.reserved, 'the call is held')
    })
    const [row] = await database.sql<Array<{ reserved: string }>>`
      select reserved_amount::text as reserved from budget_status_cache where root_id = ${org.id} and budget_id = ${org.id}`
    t.equal(Number(row!.reserved), 0.5, 'both holds on the tree\'s window row')
  }
})

t.test('a held call\'s settlement and a leased call\'s run whole on the node of their tree', async (t) => {
  const database = await distributedDatabase(t)
  for (const [worker, org] of await twoTreesOnTwoWorkers(t, database)) {
    const trees = [org.id]
    const reservationId = randomUUID()
    const [held] = await createHoldRepository(database.gateSql).holdBatch([{ reservationId, requestId: randomUUID(), amount: '0.25', line: org.line }], 'USD', 60_000)
    t.ok(held!.reserved, 'held')
    await checkRunsOn(t, database, worker, 'budget_settle_batch', async (sql) => {
      await createSettlementRepository(sql).settleBatch([{ reservationId, trees, actualCost: '0.1', source: 'gateway', description: null, metadata: {}, usageId: randomUUID() }])
    })
    const lease = randomUUID()
    await createLeaseRepository(database.gateSql).takeLease(lease, org.line, 'USD', 60_000, '1', '0.01')
    const requestId = randomUUID()
    await checkRunsOn(t, database, worker, 'budget_settle_leased', async (sql) => {
      const { outcomes } = await createSettlementRepository(sql).settleLeased([{
        leaseId: lease, budgetIds: [org.id], trees, requestId, actualCost: '0.2', occurredAt: new Date(), source: 'gateway', description: null, metadata: {}, usageId: randomUUID()
      }], 60_000)
      t.ok(outcomes.get(requestId)?.leaseFound, 'the lease found')
    })
    const [usage] = await database.sql<Array<{ records: number, spent: string }>>`
      select count(*)::int as records, sum(amount)::text as spent from budget_usage_records where root_id = ${org.id}`
    t.same(usage, { records: 2, spent: '0.3000000000' }, 'each call recorded once, in its tree')
    await createLeaseRepository(database.gateSql).returnLease(lease, trees, '0', true, 1)
    t.same(await findViolations(database.sql), [], 'no hold left, the windows equal to their allocations, no hard budget over its limit')
  }
})

t.test('a settlement that only gives back what was held (the call ended without a cost) runs whole on its tree\'s node, and gives it back', async (t) => {
  const database = await distributedDatabase(t)
  for (const [worker, org] of await twoTreesOnTwoWorkers(t, database)) {
    const reservationId = randomUUID()
    const [held] = await createHoldRepository(database.gateSql).holdBatch([{ reservationId, requestId: randomUUID(), amount: '0.25', line: org.line }], 'USD', 60_000)
    t.ok(held!.reserved, 'held')
    // a client that left before the provider answered: nothing spent, the hold given back
    await checkRunsOn(t, database, worker, 'budget_settle_batch', async (sql) => {
      await createSettlementRepository(sql).settleBatch([{ reservationId, trees: [org.id], actualCost: null, source: 'gateway', description: null, metadata: {}, usageId: randomUUID() }])
    })
    const [left] = await database.sql<Array<{ n: number }>>`select count(*)::int as n from budget_reservations where root_id = ${org.id}`
    t.equal(left!.n, 0, 'the hold is given back')
    t.same(await findViolations(database.sql), [], 'no hold left, the windows equal to their allocations')
  }
})

t.test('a lease taken, renewed and given back runs whole on the node of its tree', async (t) => {
  const database = await distributedDatabase(t)
  for (const [worker, org] of await twoTreesOnTwoWorkers(t, database)) {
    const lease = randomUUID()
    const trees = [org.id]
    await checkRunsOn(t, database, worker, 'budget_lease_take', async (sql) => {
      const taken = await createLeaseRepository(sql).takeLease(lease, org.line, 'USD', 60_000, '1', '0.01')
      t.ok(taken !== null && Number(taken.granted) > 0, 'a slice granted')
    })
    await checkRunsOn(t, database, worker, 'budget_lease_renew', async (sql) => {
      t.ok(await createLeaseRepository(sql).renewLease(lease, trees, 60_000), 'renewed')
    })
    let number = 0
    await checkRunsOn(t, database, worker, 'budget_lease_return', async (sql) => {
      await createLeaseRepository(sql).returnLease(lease, trees, '0.5', false, ++number)
    })
    const [row] = await database.sql<Array<{ reserved: string, held: string }>>`
      select c.reserved_amount::text as reserved, r.amount::text as held from budget_status_cache c
      join budget_reservations r on r.root_id = c.root_id and r.budget_id = c.budget_id and r.period_start = c.period_start
      where c.root_id = ${org.id} and r.id = ${lease}`
    t.equal(Number(row!.reserved), Number(row!.held), 'the window holds what the lease holds, after two slices and two returns')
    await createLeaseRepository(database.gateSql).returnLease(lease, trees, '0', true, ++number)
    const [left] = await database.sql<Array<{ reserved: string }>>`select reserved_amount::text as reserved from budget_status_cache where root_id = ${org.id}`
    t.equal(Number(left!.reserved), 0, 'a final return gives back the rest')
  }
})

/**
 * Runs `read` (a repository read that sends `marker` in its text), and checks it went to `worker` only: one
 * single-shard execution on the coordinator, nothing on the other worker, and EXPLAIN's one task there.
 */
async function checkRoutedTo (t: Test, database: Awaited<ReturnType<typeof distributedDatabase>>, worker: number, marker: string,
  read: (sql: postgres.Sql) => Promise<unknown>): Promise<void> {
  const before = await database.counters()
  await read(database.gateSql)
  const after = await database.counters()
  t.same(delta(after, before, database.coordinator), { connections: 1, singleShard: 1, multiShard: 0 }, `${marker}: one single-shard execution, on one connection`)
  t.same(delta(after, before, database.workers.find((port) => port !== worker)!), { connections: 0, singleShard: 0, multiShard: 0 }, `${marker}: the other worker ran nothing`)
  const sent: Array<{ text: string, parameters: unknown[] }> = []
  const debugSql = postgres(database.url, { max: 1, onnotice: () => {}, debug: (_connection, text, parameters) => { sent.push({ text, parameters }) } })
  try {
    await read(debugSql)
    const query = sent.find((one) => one.text.includes(marker))!
    const plan = (await debugSql.unsafe(`explain (costs off) ${query.text}`, query.parameters as never[])).map((line) => Object.values(line)[0]).join('\n')
    t.match(plan, /Task Count: 1\n/, `${marker}: EXPLAIN shows one task`, { plan })
    t.match(plan, new RegExp(`Node: host=\\S+ port=${worker} `), `${marker}: on the tree's worker (${worker})`, { plan })
  } finally {
    await debugSql.end({ timeout: 1 })
  }
}

t.test('the two reads of the gate\'s rare paths (is a lease still held; a settlement\'s record after a connection cut) go to their tree\'s node only', async (t) => {
  const database = await distributedDatabase(t)
  for (const [worker, org] of await twoTreesOnTwoWorkers(t, database)) {
    const trees = [org.id]
    const lease = randomUUID()
    await createLeaseRepository(database.gateSql).takeLease(lease, org.line, 'USD', 60_000, '1', '0.01')
    await checkRoutedTo(t, database, worker, 'budget_reservations', async (sql) => {
      t.equal(await createLeaseRepository(sql).leaseHeld(lease, trees), true, 'the lease is held')
    })
    const requestId = randomUUID()
    const usageId = randomUUID()
    await createSettlementRepository(database.gateSql).settleLeased([{
      leaseId: lease, budgetIds: [org.id], trees, requestId, actualCost: '0.2', occurredAt: new Date(), source: 'gateway', description: null, metadata: {}, usageId
    }], 60_000)
    await checkRoutedTo(t, database, worker, 'budget_usage_records', async (sql) => {
      t.same(await createSettlementRepository(sql).findSettledRecord({ requestId, budgetIds: [org.id] }, usageId, trees), { usageId, own: true, swept: false }, 'its own record found')
    })
    await createLeaseRepository(database.gateSql).returnLease(lease, trees, '0', true, 1)
    t.equal(await createLeaseRepository(database.gateSql).leaseHeld(lease, trees), false, 'given back, the lease is no longer held')
    t.equal(await createSettlementRepository(database.gateSql).findSettledRecord({ requestId: randomUUID(), budgetIds: [org.id] }, randomUUID(), trees), null, 'no record of another call')
  }
})

t.test('a shadow budget\'s as-if ledger is read on its tree\'s node only', async (t) => {
  const database = await distributedDatabase(t)
  for (const [worker, org] of await twoTreesOnTwoWorkers(t, database)) {
    const changed = await database.app.inject({ method: 'PUT', url: `${PREFIX}/${org.id}`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: { enforcement: 'shadow' } })
    t.equal(changed.statusCode, 200, 'the budget is shadow now')
    const periodStart = org.line[0]!.periodStart
    await database.sql`insert into budget_shadow_windows (budget_id, root_id, period_start, excluded_amount) values (${org.id}, ${org.id}, ${periodStart}, 1.25)`
    await database.sql`insert into budget_shadow_counts (budget_id, root_id, period_start, code, outcome, calls) values (${org.id}, ${org.id}, ${periodStart}, 'BUDGET_EXCEEDED', 'refused', 3)`
    const before = await database.counters()
    const shadow = await createStatusRepository(database.gateSql).readShadow(org.id, org.id, periodStart, '2')
    const after = await database.counters()
    t.same(shadow, { asIfCurrentAmount: '0.75', excludedAmount: '1.25', counts: [{ code: 'BUDGET_EXCEEDED', outcome: 'refused', calls: 3 }] }, 'the ledger read')
    t.same(delta(after, before, database.coordinator), { connections: 1, singleShard: 2, multiShard: 0 }, 'its two reads each went to one shard, on one connection')
    t.same(delta(after, before, database.workers.find((port) => port !== worker)!), { connections: 0, singleShard: 0, multiShard: 0 }, 'the other worker ran nothing')
    const status = await database.app.inject({ method: 'GET', url: `${PREFIX}/${org.id}/status`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
    t.match(status.json(), { shadow: { excludedAmount: '1.25', counts: [{ calls: 3 }] } }, 'the status route reads the same ledger')
  }
})

t.test('a rate take and a give-back run whole on the node of their tree', async (t) => {
  const database = await distributedDatabase(t)
  for (const [worker, org] of await twoTreesOnTwoWorkers(t, database)) {
    const bucket = { budgetId: org.id, rootId: org.id }
    await checkRunsOn(t, database, worker, 'budget_rate_take', async (sql) => {
      const [grant] = await createRateRepository(sql).takeRate([{ ...bucket, needRequests: 1, needTokens: 100, askRequests: 1, askTokens: 100 }])
      t.equal(grant!.grantedRequests, 1, 'a request granted')
    })
    await checkRunsOn(t, database, worker, 'budget_rate_give_back', async (sql) => {
      await createRateRepository(sql).giveBackRate([{ ...bucket, requests: 1, tokens: 100 }])
    })
    const [row] = await database.sql<Array<{ requests: string }>>`
      select requests::text as requests from budget_rate_buckets where root_id = ${org.id} and budget_id = ${org.id}`
    t.ok(Number(row!.requests) > 599, 'the bucket got its requests back')
  }
})

t.test('a line loads whole on the node of its tree, once the trees its scopes name are read', async (t) => {
  const database = await distributedDatabase(t)
  for (const [worker, org] of await twoTreesOnTwoWorkers(t, database)) {
    const call = { scopes: [{ type: 'organization' as const, id: org.line[0]!.name }], model: 'gpt-4o-mini' }
    const named = await createLineRepository(database.gateSql).scopeTrees(call.scopes)
    t.same(named.roots, [org.id], 'the scopes name one tree (a read of every shard: the scopes do not say which)')
    // a new window of the budget, so that the load makes its cache row too
    await database.sql`delete from budget_status_cache where root_id = ${org.id}`
    let loaded: Awaited<ReturnType<ReturnType<typeof createLineRepository>['loadLineIn']>> | undefined
    await checkRunsOn(t, database, worker, 'budget_line_in_trees', async (sql) => {
      loaded = await createLineRepository(sql).loadLineIn(call, 'USD', named)
    })
    t.same(loaded!.line, org.line, 'the same line as loaded from the coordinator')
    t.equal(loaded!.definitionsVersion, named.version, 'stamped with the version read before the trees')
    const [rows] = await database.sql<Array<{ n: number }>>`select count(*)::int as n from budget_status_cache where root_id = ${org.id}`
    t.equal(rows!.n, 1, 'its window row made again, on the tree\'s node')
    const byTree = await createLineRepository(database.gateSql).loadLine(call, 'USD', { byTree: true })
    t.same(byTree.line, org.line, 'the gate\'s load on Citus: the same line')
  }
  const none = await createLineRepository(database.gateSql).loadLine({ scopes: [{ type: 'user', id: 'nobody' }], model: null }, 'USD', { byTree: true })
  t.same(none.line, [], 'a caller no budget names: an empty line, with no call to any tree')
})

t.test('a usage record from the usage API is stored and counted whole on the node of its tree', async (t) => {
  const database = await distributedDatabase(t)
  for (const [worker, org] of await twoTreesOnTwoWorkers(t, database)) {
    const values = {
      budgetId: org.id, amount: '1.25', currency: 'USD', source: 'test', description: null, metadata: { modelId: 'gpt-4o-mini' },
      idempotencyKey: `key-${org.id}`, requestFingerprint: 'fingerprint', occurredAt: new Date()
    }
    // checkRunsOn sends the statement twice (counted, then explained): the second is a retry under the same key
    const answers: Array<Awaited<ReturnType<ReturnType<typeof createUsageRepository>['insertUsage']>>> = []
    await checkRunsOn(t, database, worker, 'budget_record_usage_in_trees', async (sql) => {
      answers.push(await createUsageRepository(sql).insertUsage(values, [org.id]))
    })
    t.match(answers[0], { budgetId: org.id, amount: '1.25' }, 'stored')
    t.equal(answers[1], null, 'the same record again under its key stores nothing')
    const [row] = await database.sql<Array<{ spent: string, calls: number }>>`
      select current_amount::text as spent, usage_count::int as calls from budget_status_cache where root_id = ${org.id} and budget_id = ${org.id}`
    t.same(row, { spent: '1.2500000000', calls: 1 }, 'counted once, on its window row')
  }
  t.same(await findViolations(database.sql), [], 'the windows equal to their allocations')
})

t.test('the sweeper sweeps tree by tree, each tree\'s sweep whole on its node', async (t) => {
  const database = await distributedDatabase(t)
  const orgs = await twoTreesOnTwoWorkers(t, database)
  // a hold in each tree whose process "died": its reservation expires at once
  for (const org of orgs.values()) {
    const [held] = await createHoldRepository(database.gateSql).holdBatch([{ reservationId: randomUUID(), requestId: randomUUID(), amount: '0.25', line: org.line }], 'USD', 1)
    t.ok(held!.reserved, 'held')
  }
  await new Promise((resolve) => setTimeout(resolve, 20))
  const sweeper = createSweeperRepository(database.gateSql)
  t.same(await sweeper.expiredTrees(100), [...orgs.values()].map((org) => org.id).sort(), 'both trees hold an expired reservation (a read of every shard)')
  for (const [worker, org] of orgs) {
    let swept = 0
    await checkRunsOn(t, database, worker, 'budget_sweep_trees', async (sql) => {
      swept += await createSweeperRepository(sql).sweepTree(org.id, 100)
    })
    t.equal(swept, 1, 'its one expired hold swept, once')
    const [usage] = await database.sql<Array<{ records: number, spent: string }>>`
      select count(*)::int as records, sum(amount)::text as spent from budget_usage_records where root_id = ${org.id}`
    t.same(usage, { records: 1, spent: '0.2500000000' }, 'counted as spent at its estimate, in its tree')
  }
  t.equal(await sweeper.sweepExpired(100, { byTree: true }), 0, 'nothing left to sweep')
  t.same(await findViolations(database.sql), [], 'no hold left, the windows equal to their allocations, no hard budget over its limit')

  // the plugin's own sweep on Citus: every tree with expired holds, one call each
  for (const org of orgs.values()) {
    await createHoldRepository(database.gateSql).holdBatch([{ reservationId: randomUUID(), requestId: randomUUID(), amount: '0.5', line: org.line }], 'USD', 1)
  }
  await new Promise((resolve) => setTimeout(resolve, 20))
  t.equal(await sweeper.sweepExpired(100, { byTree: true }), 2, 'one expired hold swept in each tree')
  t.equal(await sweeper.sweepExpired(1, { byTree: true }), 0, 'a limit reached nothing more')
  t.same(await findViolations(database.sql), [], 'the invariants hold after the sweep')
})

t.test('no delegated statement is given a null tree by default: Citus 13.2 crashes on a null distribution argument, so a default is the nil root', async (t) => {
  const { sql } = await createTestSql(t, { max: 1 })
  await migrate(sql)
  await distributeOnCitus(sql)
  const delegated = await sql<Array<{ fn: string, arguments: string, argument: string | null }>>`
    select p.oid::regprocedure::text as fn, pg_get_function_arguments(p.oid) as arguments, (p.proargnames)[o.distribution_argument_index + 1] as argument
    from pg_dist_object o join pg_proc p on p.oid = o.objid
    where o.classid = 'pg_proc'::regclass and o.distribution_argument_index is not null`
  t.same(delegated.map((row) => row.fn.replace(/\(.*/, '')).sort(), ['budget_hold_batch', 'budget_lease_renew', 'budget_lease_return', 'budget_lease_take', 'budget_line_in_trees', 'budget_rate_give_back', 'budget_rate_take', 'budget_record_usage_in_trees', 'budget_settle_batch', 'budget_settle_leased', 'budget_sweep_trees'], 'the gate\'s delegated statements and the usage API\'s record')
  for (const row of delegated) {
    t.equal(row.argument, 'p_root', `${row.fn}: delegated by its tree`)
    // a default, where there is one, is the nil root (the argument lists without defaults are always given one)
    t.ok(row.arguments.includes(`p_root uuid DEFAULT '${NIL_ROOT}'::uuid`) || /p_root uuid(,|$)/.test(row.arguments), `${row.fn}: p_root has no default but the nil root`)
  }
  const [again] = await sql<Array<{ count: number }>>`select count(*)::int as count from pg_dist_object where distribution_argument_index is not null`
  await distributeOnCitus(sql)
  const [after] = await sql<Array<{ count: number }>>`select count(*)::int as count from pg_dist_object where distribution_argument_index is not null`
  t.equal(after!.count, again!.count, 'the step run again delegates nothing twice')
})
