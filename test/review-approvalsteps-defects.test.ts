// Review of the approval steps' notifications (commit 24d5daa): defects found. Each test fails on the code as
// committed, for the reason its name gives.
import t from 'tap'
import type { ApprovalStepEvent, BudgetEvent } from '../lib/index.js'
import { approvalStepEmail } from '../lib/alerts/notifications.js'
import { approvalsGateway } from './fixtures/approvals-gateway.js'

const steps = (events: BudgetEvent[]) => events.filter((event): event is ApprovalStepEvent => event.type === 'budget.approval_step')

// The webhook's `text` is documented as Slack's (a Slack incoming-webhook URL works as it is). Slack reads
// `<!channel>`, `<!here>`, `<@U…>` and `<url|label>` in it as mentions and links, and asks senders to escape
// `&`, `<` and `>` in text they did not write. Approval steps are the first events whose text carries free
// text from any principal whose area holds the budget (a viewer's reason, a decider's comment): here a
// viewer pings the whole approvers' channel and plants a link labelled "Approve here".
t.test('a viewer\'s reason and a decider\'s comment reach the Slack text unescaped: mentions and links', async (t) => {
  const feed: BudgetEvent[] = []
  const g = await approvalsGateway(t, { notifications: { channels: { feed: { deliver: async (event) => { feed.push(event) } } } } }, ['feed'])
  const reason = '<!channel> urgent, <https://evil.example/approve|Approve here> & thanks'
  const request = (await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: '10', reason })).json()
  t.equal((await g.lead('POST', `/${g.team.id}/approval-requests/${request.id}/decisions`, { level: 1, verdict: 'reject', comment: '<!here> see <https://evil.example|the policy>' })).statusCode, 200)
  await g.app.budgetNotifications.deliverDue()
  const [filed, rejected] = steps(feed)
  t.equal(filed!.request.reason, reason, 'the structured field keeps the reason as written')
  for (const event of [filed!, rejected!]) {
    t.notMatch(event.text, /<!(channel|here)>/, `no Slack broadcast mention in the ${event.step} text`)
    t.notMatch(event.text, /<https?:\/\/[^>|]+\|[^>]+>/, `no Slack link markup from user text in the ${event.step} text`)
  }
  t.match(filed!.text, /&lt;!channel&gt; urgent, &lt;https:\/\/evil\.example\/approve\|Approve here&gt; &amp; thanks/, 'escaped as Slack asks')
})

// A reason or comment of '' (the schema allows it: maxLength only) is shown as if it said something.
t.test('an empty reason or comment reads "()" and ": ." in the text, and "Comment: " in the email', async (t) => {
  const feed: BudgetEvent[] = []
  const g = await approvalsGateway(t, { notifications: { channels: { feed: { deliver: async (event) => { feed.push(event) } } } } }, ['feed'])
  const request = (await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: '10', reason: '' })).json()
  t.equal((await g.lead('POST', `/${g.team.id}/approval-requests/${request.id}/decisions`, { level: 1, verdict: 'reject', comment: '' })).statusCode, 200)
  await g.app.budgetNotifications.deliverDue()
  const [filed, rejected] = steps(feed)
  t.equal(filed!.text, 'Budget \'team a\': dev-alice asks approval of 10 USD more; level 1 (team lead) decides first, 1 level in all.')
  t.equal(rejected!.text, 'Budget \'team a\': the request for 10 USD more was rejected at level 1 (team lead) by lead-a.')
  t.notMatch(approvalStepEmail(rejected!).text, /^Comment: $/m)
  t.notMatch(approvalStepEmail(filed!).text, /, ""\./)
})

// deliverWithin turns a notifier's rejection into last_error with String(error): a custom notifier rejecting
// with a value String() cannot convert (a null-prototype object) throws there instead. deliverDue then
// rejects, the rest of its round is dropped, and the row is left claimed with no attempt recorded: it comes
// back at every claim deadline for ever and never becomes failed after maxAttempts.
t.test('a custom notifier rejecting with an unprintable value: deliverDue rejects and the step is never failed', async (t) => {
  const g = await approvalsGateway(t, {
    notifications: { channels: { odd: { deliver: async () => { throw Object.create(null) } } }, maxAttempts: 1, backoffMs: 1 }
  }, ['odd'])
  await g.dev('POST', `/${g.team.id}/approval-requests`, { amount: '10' })
  let outcome: unknown
  try {
    outcome = await g.app.budgetNotifications.deliverDue()
  } catch (error) {
    outcome = `rejected: ${String((error as Error).message)}`
  }
  t.same(outcome, { delivered: 0, failed: 1 }, 'one failed attempt')
  const [row] = await g.sql<Array<{ status: string, attempts: number, claimed: boolean }>>`
    select status, attempts, claim_id is not null as claimed from budget_notification_outbox where approval_request_id is not null`
  t.same(row, { status: 'failed', attempts: 1, claimed: false }, 'failed after its one attempt, not left claimed')
})
