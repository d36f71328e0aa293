// OpenAI bills a call that names no service tier, or 'auto', at its project's tier, which may be
// priority (1.7x list): the gate forwards an admitted call to OpenAI's models with 'default' named,
// the tier its estimate priced (issue 20 review rb, finding 1).
import t from 'tap'
import { buildGateway } from './fixtures/gateway.js'

t.test('an admitted call to an OpenAI model is forwarded at the list-price tier unless it names default or flex', async (t) => {
  const seen: Array<Record<string, unknown>> = []
  const gateway = await buildGateway(t, {
    gate: { routes: [], prices: { 'other-model': { input: '1', output: '1', maxOutputTokens: 1000 } } },
    routes: (app) => {
      app.post('/seen/responses', { config: { budgetGate: 'responses' } }, async (request) => {
        seen.push(request.body as Record<string, unknown>)
        return { model: 'gpt-4o-mini', output: [], usage: { input_tokens: 5, output_tokens: 5 } }
      })
      app.post('/seen/chat/completions', { config: { budgetGate: 'chat' } }, async (request) => {
        seen.push(request.body as Record<string, unknown>)
        return { model: 'gpt-4o-mini', choices: [], usage: { prompt_tokens: 5, completion_tokens: 5 } }
      })
    }
  })
  await gateway.createBudget({ scopeId: 'team-a', amount: '10' })
  const call = async (url: string, body: Record<string, unknown>) => {
    const response = await gateway.app.inject({ method: 'POST', url, headers: { 'x-relay-team-id': 'team-a' }, body })
    t.equal(response.statusCode, 200, `${url} ${JSON.stringify(body.service_tier)}: ${response.body.slice(0, 200)}`)
    return seen.at(-1)!.service_tier
  }
  const responses = { model: 'gpt-4o-mini', input: 'Hi', max_output_tokens: 20 }
  t.equal(await call('/seen/responses', responses), 'default', 'Responses, no tier: default named')
  t.equal(await call('/seen/responses', { ...responses, service_tier: 'auto' }), 'default', "Responses, 'auto': default")
  t.equal(await call('/seen/responses', { ...responses, service_tier: 'flex' }), 'flex', 'flex kept (cheaper than list)')
  const chat = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 20 }
  t.equal(await call('/seen/chat/completions', chat), 'default', 'chat to an OpenAI model, no tier: default named')
  t.equal(await call('/seen/chat/completions', { ...chat, service_tier: 'auto' }), 'default')
  t.equal(await call('/seen/chat/completions', { ...chat, model: 'other-model' }), undefined, 'another provider\'s model: the body as sent (it may not know the field)')
  const refused = await gateway.app.inject({ method: 'POST', url: '/seen/responses', headers: { 'x-relay-team-id': 'team-a' }, body: { ...responses, service_tier: 'priority' } })
  t.equal(refused.statusCode, 400, 'priority stays refused')
  await gateway.settled()
})
