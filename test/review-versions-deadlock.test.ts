// Review of the definitions' versions: crossings bump one row per tree at commit. Two transactions that
// each record action crossings in two trees, in opposite orders, deadlocked on each other's tree rows (each
// bumped its trees in the order it crossed them); they now bump them in one pass, in the order of their roots
// (sql/functions/definitions.sql), and queue.
import t from 'tap'
import postgres from 'postgres'
import { buildGateway } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }

t.test('two usage batches crossing block-all thresholds in two trees in opposite orders both commit', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const blocking = { amount: '100', alerts: [{ threshold: 50, actions: ['block-all'] }] }
  // two trees (roots without alerts), three children each with a block-all alert. Each batch records in its
  // own window (last month, this month), so they share no window row, only the two trees' version rows;
  // the crossings are recorded in budget-id order, so batch A is chosen to bump r1 then r2, batch B r2 then r1.
  const r1 = await gateway.createBudget({ name: 'r1', scopeId: 'r1', amount: '10000' })
  const r2 = await gateway.createBudget({ name: 'r2', scopeId: 'r2', amount: '10000' })
  const child = async (root: { id: string }, name: string) =>
    (await gateway.createBudget({ name, scopeType: 'project', scopeId: name, parentId: root.id, ...blocking })).id
  // children until each tree has one whose id is below one of the other's (ids are random): p < q and r < s
  const c1 = [await child(r1, 'a0')]
  const c2 = [await child(r2, 'b0')]
  while (!(c2.some((id) => id > c1.reduce((x, y) => x < y ? x : y)) && c1.some((id) => id > c2.reduce((x, y) => x < y ? x : y)))) {
    c1.push(await child(r1, `a${c1.length}`))
    c2.push(await child(r2, `b${c2.length}`))
  }
  c1.sort()
  c2.sort()
  const p = c1[0]!
  const q = c2.find((id) => id > p)!
  const r = c2[0]!
  const s = c1.find((id) => id > r)!
  const now = new Date()
  const lastMonth = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 1, 15)).toISOString()
  const record = (budgetId: string, occurredAt?: string) => ({ budgetId, amount: '60', currency: 'USD', source: 'batch', ...(occurredAt === undefined ? {} : { occurredAt }) })
  // Another session holds tree r1's version row, so both batches reach their commits' bumps together.
  const holder = postgres(gateway.url, { max: 1, onnotice: () => {} })
  t.teardown(async () => await holder.end())
  let release!: () => void
  const released = new Promise<void>((resolve) => { release = resolve })
  let locked!: () => void
  const lockTaken = new Promise<void>((resolve) => { locked = resolve })
  const holding = holder.begin(async (tx) => {
    await tx`select version from budget_tree_versions where root_id = ${r1.id} for update`
    locked()
    await released
  })
  await lockTaken
  const deadlocks = async () => Number((await gateway.sql`select deadlocks from pg_stat_database where datname = current_database()`)[0]!.deadlocks)
  const deadlocksBefore = await deadlocks()
  const waiting = async (n: number) => {
    for (let i = 0; i < 200; i++) {
      const [row] = await gateway.sql`select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`
      if (row!.n >= n) return
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
    throw new Error(`not ${n} waiting`)
  }
  // batch A: r1 then r2; batch B: r2 then r1
  const a = gateway.app.inject({ method: 'POST', url: `${PREFIX}/usage/batch`, headers: AUTH, body: { records: [record(p, lastMonth), record(q, lastMonth)] } })
  await waiting(1)
  const b = gateway.app.inject({ method: 'POST', url: `${PREFIX}/usage/batch`, headers: AUTH, body: { records: [record(r), record(s)] } })
  await waiting(2)
  release()
  await holding
  const [answerA, answerB] = await Promise.all([a, b])
  t.equal(answerA.statusCode, 200, answerA.body)
  t.equal(answerB.statusCode, 200, answerB.body)
  await new Promise((resolve) => setTimeout(resolve, 700)) // the statistics are reported with a delay
  t.equal(await deadlocks() - deadlocksBefore, 0, 'no deadlock on the trees\' version rows (pg_stat_database.deadlocks)')
  await checkInvariants(t, gateway.sql)
})
