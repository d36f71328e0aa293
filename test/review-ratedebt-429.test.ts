// Review of a5cec52: the 429 a call gets while its process's allowance is in debt (an estimate without
// tokens reserves one; the call's use is counted when it ends). The refused call's need is its one token
// plus the debt, which the bucket must hold before it is admitted; the 429 should say when that is.
import t from 'tap'
import { noTokens, teamAChat } from './fixtures/rate-buckets.js'
import { buildGateway } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'

t.test('refused while its allowance is in debt: a call retried after retry-after-ms is admitted', async (t) => {
  const gateway = await buildGateway(t, { gate: noTokens })
  await gateway.createBudget({ scopeId: 'team-a', amount: '100', rateLimits: { tokensPerMinute: 90 } })
  const used: number[] = []
  let refused: Awaited<ReturnType<typeof teamAChat>> | null = null
  for (let i = 0; i < 20 && refused === null; i++) {
    const answer = await teamAChat(gateway.app)
    if (answer.statusCode === 429) refused = answer
    else used.push(answer.json().usage.total_tokens as number)
    // A moment for the call's end (its use counted): not gateway.settled(), which waits for a hot line's
    // lease to go back (idle 2 s), and with it this process's allowance and its debt.
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  t.ok(refused !== null, `refused after ${used.length} calls of ${used.join(', ')} tokens`)
  const retryMs = Number(refused!.headers['retry-after-ms'])
  const remaining = Number(refused!.headers['x-ratelimit-remaining-tokens'])
  // What the 429 says: `remaining` tokens left, come back in `retryMs`. The call needs one token and its
  // process's debt (its last call's use past the token it took) made good: a refusal that names at least a
  // token left and a wait of 1 ms contradicts itself.
  const lastUse = used[used.length - 1]!
  t.notOk(remaining >= 1 && retryMs <= 1,
    `retry-after-ms ${retryMs} with x-ratelimit-remaining-tokens ${remaining}: the call needs its 1 token and, made good, the ${lastUse - 1} its process owes after its last call`)
  await new Promise((resolve) => setTimeout(resolve, retryMs + 50))
  const again = await teamAChat(gateway.app)
  t.equal(again.statusCode, 200, `retried ${retryMs + 50} ms later as told: ${again.statusCode} ${again.statusCode === 429 ? `(retry-after-ms now ${again.headers['retry-after-ms'] as string}, remaining ${again.headers['x-ratelimit-remaining-tokens'] as string})` : ''}`)
  await gateway.settled()
  await checkInvariants(t, gateway.sql)
})
