// OpenAI's organization Costs API (GET /v1/organization/costs, admin key): daily buckets of the organization's
// cost, grouped by project and line item, a page at a time (has_more, next_page). amount.value is a JSON
// number: it is read from the page's text, never through a double (lib/kernel/exact-json.ts).
import { exactDecimal } from '../kernel/exact-json.js'
import { AMOUNT_DIGITS, CURRENCY, utcDay, type CostBucket } from './cost-bucket.js'
import type { ReportClient, ReportPage, ReportWindow } from './report-page.js'
import { pageReader } from './report-fields.js'

export interface OpenAiCostsOptions {
  adminKey: string
  /** Sent as OpenAI-Organization, and the account the buckets are stored under ('default' without it). */
  organization?: string
  baseUrl?: string
  /** Buckets (days) per page: 1 to 180 (the API's bounds). */
  pageSize?: number
}

const DAY_SECONDS = 86_400

export function openAiCostsClient ({ adminKey, organization, baseUrl = 'https://api.openai.com', pageSize = 31 }: OpenAiCostsOptions): ReportClient {
  const account = organization ?? 'default'
  const read = pageReader('openai')
  return {
    source: 'openai',
    account,
    request (window: ReportWindow, page: string | null) {
      const query = new URLSearchParams({
        start_time: String(window.start.getTime() / 1000),
        end_time: String(window.end.getTime() / 1000),
        bucket_width: '1d',
        limit: String(pageSize)
      })
      query.append('group_by[]', 'project_id')
      query.append('group_by[]', 'line_item')
      if (page !== null) query.set('page', page)
      return {
        url: `${baseUrl.replace(/\/$/, '')}/v1/organization/costs?${query.toString()}`,
        headers: { authorization: `Bearer ${adminKey}`, ...(organization === undefined ? {} : { 'openai-organization': organization }) }
      }
    },
    readPage (text: string): ReportPage {
      const page = read.parse(text)
      const buckets: CostBucket[] = []
      for (const [index, item] of read.array(page.data, 'data').entries()) {
        const bucket = read.object(item, `data[${index}]`)
        const startText = read.number(bucket.start_time, `data[${index}].start_time`)
        if (!/^\d{1,12}$/.test(startText) || Number(startText) % DAY_SECONDS !== 0) read.malformed(`data[${index}].start_time`, 'is not the unix time of a UTC midnight')
        const date = utcDay(new Date(Number(startText) * 1000))
        for (const [position, entry] of read.array(bucket.results, `data[${index}].results`).entries()) {
          const where = `data[${index}].results[${position}]`
          const result = read.object(entry, where)
          const amount = read.object(result.amount, `${where}.amount`)
          const value = exactDecimal(read.number(amount.value, `${where}.amount.value`), AMOUNT_DIGITS) ?? read.malformed(`${where}.amount.value`, `has more than ${AMOUNT_DIGITS} digits`)
          // The reference shows lower case ("usd"); stored as ISO 4217 writes it.
          const currency = read.string(amount.currency, `${where}.amount.currency`).toUpperCase()
          if (!CURRENCY.test(currency)) read.malformed(`${where}.amount.currency`, 'is not an ISO 4217 code')
          buckets.push({
            source: 'openai',
            provider: 'openai',
            account,
            date,
            project: read.dimension(result.project_id, `${where}.project_id`, 'project'),
            lineItem: read.dimension(result.line_item, `${where}.line_item`, 'lineItem'),
            model: '',
            costType: '',
            tokenType: '',
            serviceTier: '',
            contextWindow: '',
            currency,
            amount: value
          })
        }
      }
      return { buckets: read.unique(buckets), nextPage: read.nextPage(page) }
    }
  }
}
