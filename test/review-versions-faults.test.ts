// Review of the definitions' versions: the version poll of another process, its connections
// terminated, neither hands out a stale line nor answers a 500. A call whose statement's connection is
// terminated under it is a database fault: 503 budget_unavailable, as the gate answers any (CI met one).
import t from 'tap'
import { VERSION_FRESH_MS } from '../lib/gate/budget-lines.js'
import { buildGateway } from './fixtures/gateway.js'
import { secondProcess } from './fixtures/second-process.js'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }
const sleep = async (ms: number) => await new Promise((resolve) => setTimeout(resolve, ms))

t.test('the other process\'s connections terminated: a change is still in force there within the bound, and no call is a 500', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const { call } = await secondProcess(t, gateway.url, 'review-other')
  const team = await gateway.createBudget({ name: 'team', scopeId: 'platform', amount: '100' })
  const caller = { team: 'platform' }
  const leaseHeld = async () => (await gateway.sql`select count(*)::int as n from budget_reservations where lease`)[0]!.n > 0
  for (let i = 0; i < 40 && !await leaseHeld(); i++) t.equal((await call(caller)).statusCode, 200)
  t.ok(await leaseHeld(), 'a lease')
  let killed = 0
  const kill = async () => { killed += (await gateway.sql`select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'review-other'`).length }
  // calls on the other process while its connections are terminated again and again
  const answers: string[] = []
  for (let i = 0; i < 30; i++) {
    if (i % 3 === 0) await kill()
    const response = await call(caller)
    answers.push(response.statusCode === 200 ? '200' : `${response.statusCode} ${response.json().error?.code as string}`)
    await sleep(15)
  }
  t.ok(killed > 0, `${killed} backends of the other process terminated`)
  t.same(answers.filter((answer) => answer !== '200' && answer !== '503 budget_unavailable'), [], `every call served, or 503 when its connection was terminated: ${JSON.stringify(answers)}`)
  t.ok(answers.filter((answer) => answer === '200').length >= 10, 'the process goes on serving')
  await kill()
  const changed = await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/${team.id}`, headers: AUTH, body: { amount: '0.0001' } })
  t.equal(changed.statusCode, 200, changed.body)
  await kill()
  await sleep(VERSION_FRESH_MS * 3)
  let after = await call(caller)
  // a call that met a terminated connection is 503; the next one meets the change
  for (let i = 0; i < 3 && after.statusCode === 503; i++) after = await call(caller)
  t.equal(after.statusCode, 402, after.body)
})
