// The notification channels as the admin API shows them: the list without secrets, and a test sent through
// one, audited (test-channel) once its outcome is known.
import type { BoundedTransaction } from '../kernel/database/bounded.js'
import { ChannelNotFoundError } from '../kernel/errors.js'
import { createAuditRepository, type AuditContext } from '../audit/index.js'
import type { ChannelInfo, NotificationDeliverer, TestOutcome } from './notifications.js'

export function createChannelTests (notifications: Pick<NotificationDeliverer, 'channels' | 'sendTest'>, inBoundedTransaction: BoundedTransaction, boundMs: number) {
  return {
    list: (): ChannelInfo[] => notifications.channels(),

    /** Sends a test through the channel now; 404 for a name that is no channel. The outcome is the answer, delivered or not. */
    async test (name: string, context: AuditContext): Promise<TestOutcome> {
      const outcome = await notifications.sendTest(name, boundMs)
      if (outcome === null) throw new ChannelNotFoundError(name)
      await inBoundedTransaction(async (tx) => {
        await createAuditRepository(tx).record(null, 'test-channel', context, { after: { channel: name, ...outcome } })
      })
      return outcome
    }
  }
}

export type ChannelTests = ReturnType<typeof createChannelTests>
