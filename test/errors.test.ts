// Which failures are outages (the gate answers them by its failure mode, the admin API with 503) and
// which are bugs or bad input.
import t from 'tap'
import { isDatabaseUnavailable } from '../lib/kernel/errors.js'

t.test('connection failures, resource exhaustion, shutdowns, a read-only server and a database closed to connections are outages', async (t) => {
  for (const code of ['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'CONNECT_TIMEOUT', 'CONNECTION_CLOSED', 'CONNECTION_ENDED', 'CONNECTION_DESTROYED',
    '08006', '08001', '53300', '53200', '53100', '57P01', '57P02', '57P03', '57P04', '58030', '25006', '55000', 'BUDGET_ERR_DATABASE_UNAVAILABLE']) {
    t.ok(isDatabaseUnavailable({ code }), `${code} is an outage`)
  }
})

t.test('bad input, constraint violations, lock timeouts and bugs are not', async (t) => {
  for (const code of ['22P02', '22003', '23505', '23514', '40P01', '55P03', '42P01', 'XX000', 'BUDGET_ERR_VALIDATION', '']) {
    t.notOk(isDatabaseUnavailable({ code }), `${code || 'no code'} is not an outage`)
  }
  t.notOk(isDatabaseUnavailable(null))
  t.notOk(isDatabaseUnavailable(new Error('boom')))
})
