import { waitForUpdate, calcPrice } from '@pydantic/genai-prices'
import { assessCatalogModel, catalogEntry } from '../lib/services/price-catalog.js'
const providers = (await waitForUpdate())!
for (const provider of providers) {
  for (const model of provider.models) {
    const variants = Array.isArray(model.prices) ? model.prices.map((c) => c.prices) : [model.prices]
    for (const rates of variants) {
      const v = assessCatalogModel(provider.id, model.id, rates, model.context_window)
      if (v.price !== null) console.log('PRICED', provider.id, model.id, JSON.stringify(Object.keys(rates).filter(k => rates[k] !== undefined)), 'maxOut', v.price.maxOutputTokens, 'ctx', model.context_window, 'reason', v.price.reasoningBeyondLimitTokens ?? 0, '|', (model.price_comments ?? '').slice(0, 150), '|', JSON.stringify(model.match).slice(0, 200))
    }
  }
}
