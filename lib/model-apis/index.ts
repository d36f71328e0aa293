// The model APIs the gate knows, and which one a route speaks when its path says so.
import { chatApi } from './chat.js'
import { embeddingsApi } from './embeddings.js'
import { messagesApi } from './messages.js'
import { responsesApi } from './responses.js'
import type { ApiName, ModelApi } from './model-api.js'

export type { ApiName, ModelApi } from './model-api.js'

/** One line per API the gate can guard. */
export const MODEL_APIS: Record<ApiName, ModelApi> = {
  chat: chatApi,
  responses: responsesApi,
  messages: messagesApi,
  embeddings: embeddingsApi
}

// The path's last segments name the API, behind any prefix (/v1, /openai/v1, ...); a sub-path such as
// /v1/responses/:id (retrieving a stored response) is another endpoint, never inferred.
const PATH_ENDINGS: Array<[RegExp, ApiName]> = [
  [/\/chat\/completions$/, 'chat'],
  [/\/responses$/, 'responses'],
  [/\/messages$/, 'messages'],
  [/\/embeddings$/, 'embeddings']
]

/** The API a route's URL names by its end, or null when it names none. */
export function apiForUrl (url: string): ApiName | null {
  const path = url.split('?')[0]!.replace(/\/+$/, '')
  return PATH_ENDINGS.find(([ending]) => ending.test(path))?.[1] ?? null
}

/** Whether `name` is an API the gate has a module for. */
export function isModelApiName (name: unknown): name is ApiName {
  return typeof name === 'string' && Object.hasOwn(MODEL_APIS, name)
}
export { withOutputLimit } from './chat.js'
export type { Refusal, StreamUsageReader } from './model-api.js'
