// Prompt tokens a provider adds to a call on its own: billed as input, absent from the request's bytes.
// The estimate adds them so that it stays an upper bound of the bill.

type Choice = 'auto' | 'forced'

/**
 * Anthropic's tool-use system prompt: with tools, Claude gets a system prompt of its own, whose size
 * depends on the model and on tool_choice ("auto"/"none" against "any"/"tool"). Published counts, from
 * https://docs.anthropic.com/en/docs/tool-use-pricing-and-tokens (section "Pricing", table "Tool use
 * system prompt token count"): Claude 3 Opus 530 (auto) / 281 (any, tool); Claude 3 Sonnet 159 / 235;
 * Claude 3 Haiku 264 / 340. The page lists later models (Claude 3.5 to 4.x: 346 / 313) below the
 * highest of these; any Claude model not matched here gets the highest published count of each
 * column, so a model the page has yet to list, or a tokenizer that counts the same prompt higher, is
 * still bounded (at most some hundreds of tokens over).
 */
const ANTHROPIC_TOOL_PROMPT: Array<[RegExp, Record<Choice, number>]> = [
  [/claude-3-opus/, { auto: 530, forced: 281 }],
  [/claude-3-sonnet/, { auto: 159, forced: 235 }],
  [/claude-3-haiku/, { auto: 264, forced: 340 }]
]
const ANTHROPIC_TOOL_PROMPT_MOST: Record<Choice, number> = { auto: 530, forced: 340 }
const CLAUDE = /claude/i

const AUTO_CHOICES = new Set(['auto', 'none'])
const FORCED_CHOICES = new Set(['required', 'any', 'tool', 'function'])

/**
 * How a request's tool_choice (or function_call) maps to Anthropic's prompts: "auto" and "none" share
 * one, "any" and a named tool ("required", {type:'tool'}, {type:'function'}) the other, whether given as
 * a string (OpenAI's) or an object ({type:'auto'}, Anthropic's). A choice of neither shape gets both
 * (the larger prompt is counted): never below what the provider adds.
 */
function choicesOf (body: Record<string, unknown>): Choice[] {
  const choice = body.tool_choice ?? body.function_call
  if (choice === undefined || choice === null) return ['auto']
  const type = typeof choice === 'string' ? choice : typeof choice === 'object' && !Array.isArray(choice) ? (choice as { type?: unknown }).type : undefined
  if (typeof type === 'string' && AUTO_CHOICES.has(type)) return ['auto']
  if (typeof type === 'string' && FORCED_CHOICES.has(type)) return ['forced']
  // OpenAI's legacy function_call names a function as { name }: forced.
  if (typeof choice === 'object' && type === undefined && typeof (choice as { name?: unknown }).name === 'string') return ['forced']
  return ['auto', 'forced']
}

const hasTools = (body: Record<string, unknown>): boolean =>
  [body.tools, body.functions].some((definitions) => definitions !== undefined && definitions !== null && !(Array.isArray(definitions) && definitions.length === 0))

/**
 * The prompt tokens the provider of `models` (the priced name and the one asked for) adds to this
 * request: Anthropic's tool-use system prompt when it has tools; 0 for the rest (OpenAI's own tool
 * rendering is counted by tokens.ts).
 */
export function injectedPromptTokens (body: Record<string, unknown>, models: unknown[]): number {
  if (!hasTools(body)) return 0
  const names = models.filter((model): model is string => typeof model === 'string')
  if (!names.some((name) => CLAUDE.test(name))) return 0
  const known = ANTHROPIC_TOOL_PROMPT.find(([pattern]) => names.some((name) => pattern.test(name)))
  const prompts = known?.[1] ?? ANTHROPIC_TOOL_PROMPT_MOST
  return Math.max(...choicesOf(body).map((choice) => prompts[choice]))
}
