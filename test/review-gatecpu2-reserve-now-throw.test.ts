// Review of 20cf715: reserveCallNow is documented (docs/gate.md) as reserveCall "answered without a promise
// when it can answer at once ..., and with reserveCall's promise otherwise". For a request id PostgreSQL could
// not store, reserveCall rejects (InvalidFieldError); reserveCallNow throws synchronously instead, out of a
// library caller's `.then/.catch` (or `instanceof Promise`) handling, as the gate's own hold() does it.
import t from 'tap'
import { buildGateway } from './fixtures/gateway.js'

t.test('reserveCallNow with an invalid requestId: a rejected promise as reserveCall, not a synchronous throw', async (t) => {
  const { app, createBudget } = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  await createBudget({ scopeId: 'team-a', amount: '10' })
  const integration = app.budgetIntegration
  for (const [what, caller] of [['no scopes', {}], ['a budgeted team', { team: 'team-a' }]] as const) {
    for (const requestId of ['', 'a\u0000b', 'x'.repeat(201)]) {
      const rejected = integration.reserveCall(caller, '0.01', { requestId })
      t.ok(rejected instanceof Promise, `${what}: reserveCall gives a promise`)
      t.rejects(rejected, `${what}: reserveCall rejects (${JSON.stringify(requestId.slice(0, 5))})`)
      // A library caller written to docs/gate.md: a promise is handled as reserveCall's, anything else is the reservation.
      let outcome: string
      try {
        const answered = integration.reserveCallNow(caller, '0.01', { requestId })
        outcome = answered instanceof Promise ? await answered.then(() => 'resolved', () => 'rejected') : 'answered'
      } catch {
        outcome = 'threw synchronously'
      }
      t.equal(outcome, 'rejected', `${what}: reserveCallNow as reserveCall (${JSON.stringify(requestId.slice(0, 5))})`)
    }
  }
})
