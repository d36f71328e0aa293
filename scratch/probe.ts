import { calcPrice } from '@pydantic/genai-prices'
import { catalogEntry } from '../lib/services/price-catalog.js'
for (const name of process.argv.slice(2)) {
  const f = calcPrice({}, name, { timestamp: new Date() })
  console.log(name, '->', f?.provider.id, f?.model.id, JSON.stringify(f?.model_price), '| entry:', JSON.stringify(catalogEntry(name, new Date())))
}
