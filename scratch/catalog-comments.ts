import { waitForUpdate } from '@pydantic/genai-prices'
import { assessCatalogModel } from '../lib/services/price-catalog.js'
const providers = (await waitForUpdate())!
for (const provider of providers) {
  if (!['openai','anthropic','google','mistral','deepseek'].includes(provider.id)) continue
  for (const model of provider.models) {
    const variants = Array.isArray(model.prices) ? model.prices.map((c) => c.prices) : [model.prices]
    const v = assessCatalogModel(provider.id, model.id, variants[variants.length-1], model.context_window)
    if (v.price !== null && model.price_comments) console.log('##', provider.id, model.id, '::', model.price_comments)
  }
  if (provider.price_comments) console.log('PROVIDER', provider.id, provider.price_comments)
}
