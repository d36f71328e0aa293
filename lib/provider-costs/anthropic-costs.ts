// Anthropic's Admin API cost report (GET /v1/organizations/cost_report, admin key in x-api-key): daily buckets
// grouped by workspace and description, each result with its model, cost type, token type, service tier and
// context window, a page at a time (has_more, next_page). The amount is a decimal string in the currency's
// lowest unit ("123.45" USD is $1.2345): stored divided by 100, exactly.
import { exactDecimal, shiftDecimal } from '../kernel/exact-json.js'
import { AMOUNT_DIGITS, CURRENCY, utcDay, type CostBucket } from './cost-bucket.js'
import type { ReportClient, ReportPage, ReportWindow } from './report-page.js'
import { pageReader } from './report-fields.js'

export interface AnthropicCostsOptions {
  adminKey: string
  /** The account the buckets are stored under ('default' without it): the key names its organization, the report does not. */
  organization?: string
  baseUrl?: string
  /** Buckets (days) per page: 1 to 31 (the API's bounds). */
  pageSize?: number
}

export const ANTHROPIC_VERSION = '2023-06-01'
const DECIMAL = /^-?\d+(\.\d+)?$/

/** How many digits the currency's lowest unit is below its major one: 2 for USD's cents (the only currency the report uses today), 0 for JPY. */
function minorUnitDigits (currency: string): number {
  return new Intl.NumberFormat('en', { style: 'currency', currency }).resolvedOptions().maximumFractionDigits ?? 2
}

export function anthropicCostsClient ({ adminKey, organization, baseUrl = 'https://api.anthropic.com', pageSize = 31 }: AnthropicCostsOptions): ReportClient {
  const account = organization ?? 'default'
  const read = pageReader('anthropic')
  return {
    source: 'anthropic',
    account,
    request (window: ReportWindow, page: string | null) {
      const query = new URLSearchParams({
        starting_at: window.start.toISOString().replace('.000Z', 'Z'),
        ending_at: window.end.toISOString().replace('.000Z', 'Z'),
        bucket_width: '1d',
        limit: String(pageSize)
      })
      query.append('group_by[]', 'workspace_id')
      query.append('group_by[]', 'description')
      if (page !== null) query.set('page', page)
      return {
        url: `${baseUrl.replace(/\/$/, '')}/v1/organizations/cost_report?${query.toString()}`,
        headers: { 'x-api-key': adminKey, 'anthropic-version': ANTHROPIC_VERSION }
      }
    },
    readPage (text: string): ReportPage {
      const page = read.parse(text)
      const buckets: CostBucket[] = []
      for (const [index, item] of read.array(page.data, 'data').entries()) {
        const bucket = read.object(item, `data[${index}]`)
        const startingAt = read.string(bucket.starting_at, `data[${index}].starting_at`)
        const start = new Date(startingAt)
        if (!/^\d{4}-\d{2}-\d{2}T/.test(startingAt) || Number.isNaN(start.getTime()) || start.getTime() % 86_400_000 !== 0) {
          read.malformed(`data[${index}].starting_at`, 'is not an RFC 3339 UTC midnight')
        }
        const date = utcDay(start)
        for (const [position, entry] of read.array(bucket.results, `data[${index}].results`).entries()) {
          const where = `data[${index}].results[${position}]`
          const result = read.object(entry, where)
          const lowestUnits = read.string(result.amount, `${where}.amount`)
          const canonical = DECIMAL.test(lowestUnits) ? exactDecimal(lowestUnits, AMOUNT_DIGITS) : null
          if (canonical === null) read.malformed(`${where}.amount`, `is not a decimal string of at most ${AMOUNT_DIGITS} digits either side of the point`)
          const currency = read.string(result.currency, `${where}.currency`).toUpperCase()
          if (!CURRENCY.test(currency)) read.malformed(`${where}.currency`, 'is not an ISO 4217 code')
          buckets.push({
            source: 'anthropic',
            provider: 'anthropic',
            account,
            date,
            // null: the default workspace.
            project: read.dimension(result.workspace_id, `${where}.workspace_id`, 'project'),
            lineItem: read.dimension(result.description, `${where}.description`, 'lineItem'),
            model: read.dimension(result.model, `${where}.model`, 'model'),
            costType: read.dimension(result.cost_type, `${where}.cost_type`, 'costType'),
            tokenType: read.dimension(result.token_type, `${where}.token_type`, 'tokenType'),
            serviceTier: read.dimension(result.service_tier, `${where}.service_tier`, 'serviceTier'),
            contextWindow: read.dimension(result.context_window, `${where}.context_window`, 'contextWindow'),
            currency,
            amount: shiftDecimal(canonical!, minorUnitDigits(currency))
          })
        }
      }
      return { buckets: read.unique(buckets), nextPage: read.nextPage(page) }
    }
  }
}
