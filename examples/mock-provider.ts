// A deterministic stand-in for an OpenAI-compatible provider: the same request always gets the same
// reply and usage. Prompt tokens are counted as OpenAI counts them (the model's tokenizer, the one the
// gate loaded, and the chat format's 3 tokens a message and 3 for the reply; about four bytes a token
// for other models), completion tokens follow from max_tokens.
import { encodingFor, providerTokens } from '../lib/pricing/tokens.js'

export interface ChatMessage {
  role: string
  content: string | Array<{ type: string, text?: string }> | null
}

export interface ChatRequest {
  model: string
  messages: ChatMessage[]
  max_tokens?: number
  max_completion_tokens?: number
  stream?: boolean
}

export interface ChatUsage {
  prompt_tokens: number
  completion_tokens: number
  total_tokens: number
}

const WORDS = ['budget', 'gateway', 'token', 'model', 'relay', 'cost', 'limit', 'period']

function messageText (message: ChatMessage): string {
  if (typeof message.content === 'string') return message.content
  return (message.content ?? []).map((part) => part.text ?? '').join('')
}

/** Usage as a provider would report it: the prompt's tokens; as many output tokens as asked, at most 8 + the prompt's. */
export function mockUsage (request: ChatRequest): ChatUsage {
  // As a provider reports it: four bytes a token would exceed the gate's estimate of a long English prompt.
  const count = (text: string): number => providerTokens(request.model, text)!
  const promptTokens = encodingFor(request.model) === null
    ? Math.max(1, Math.ceil(Buffer.byteLength(request.messages.map(messageText).join('\n'), 'utf8') / 4))
    : 3 + request.messages.reduce((sum, message) => sum + 3 + count(message.role) + count(messageText(message)), 0)
  const limit = request.max_completion_tokens ?? request.max_tokens ?? 256
  const completionTokens = Math.max(1, Math.min(limit, 8 + promptTokens))
  return { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens }
}

/** The reply's tokens, one word each. */
export function mockTokens (request: ChatRequest): string[] {
  return Array.from({ length: mockUsage(request).completion_tokens }, (_, i) => (i === 0 ? '' : ' ') + WORDS[i % WORDS.length]!)
}

export function mockCompletion (request: ChatRequest, id: string, created: number) {
  return {
    id,
    object: 'chat.completion',
    created,
    model: request.model,
    choices: [{ index: 0, message: { role: 'assistant', content: mockTokens(request).join('') }, finish_reason: 'stop', logprobs: null }],
    usage: mockUsage(request)
  }
}
