// OpenAI bills a request that names no service tier, or 'auto', at the tier its project is set to
// ("Unless otherwise configured, the Project will use 'default'"), and a project may be set to
// priority: 1.7x list for gpt-4o. The estimate assumes list price, so such a request is forwarded with
// 'default' named; 'default' and 'flex' (cheaper) are kept, other tiers are refused by the estimate.
export function atListPriceTier (body: Record<string, unknown>): Record<string, unknown> {
  const tier = body.service_tier
  return tier === undefined || tier === null || tier === 'auto' ? { ...body, service_tier: 'default' } : body
}
