// Prompt tokens by the model's own tokenizer (OpenAI's o200k_base and cl100k_base): an upper bound on
// what OpenAI bills for a chat request's prompt, bounded in time. Models without a known tokenizer get
// null, and the estimate keeps counting bytes for them.
import { createRequire } from 'node:module'
import { SCAN_STRIDE, endOfString } from '../kernel/json-limits.js'
import { keep } from '../kernel/kept.js'
import { slices as newSlices, type Slices } from '../kernel/loop-slices.js'
import { WINDOW, regionEndWithin, segmentEnd } from './split-windows.js'
import { formatFunctionDefinitions, type ChatCompletionFunctionDefinition } from 'gpt-tokenizer/functionCalling'

export type EncodingName = 'o200k_base' | 'cl100k_base'

// tiktoken's own model map, by prefix (a dated snapshot shares its model's encoding). Checked in this
// order: gpt-4o and gpt-4.1 would otherwise match cl100k's gpt-4.
const ENCODINGS: Array<[RegExp, EncodingName]> = [
  [/^(?:gpt-4o|chatgpt-4o|gpt-4\.1|gpt-4\.5|gpt-5(?:\.\d+)?|o[134])(?:-|$)/, 'o200k_base'],
  [/^(?:gpt-4|gpt-3\.5-turbo|text-embedding-(?:3-small|3-large|ada-002))(?:-|$)/, 'cl100k_base']
]

// Each model name's encoding once found (every estimate asks for its model's): bounded, emptied when full.
const ENCODING_OF = new Map<string, EncodingName | null>()
const MOST_MODELS_KEPT = 1024

/** The tokenizer OpenAI uses for `model`, or null when it is not one of OpenAI's chat models whose tokenizer is known. */
export function encodingFor (model: string): EncodingName | null {
  const kept = ENCODING_OF.get(model)
  if (kept !== undefined) return kept
  let found: EncodingName | null = null
  for (const [pattern, name] of ENCODINGS) if (pattern.test(model)) { found = name; break }
  // Only names of a model's length: a name is a request's text, and a long one is not kept.
  return model.length <= 64 ? keep(ENCODING_OF, MOST_MODELS_KEPT, model, found) : found
}

interface Encoding {
  countTokens: (text: string, options: { disallowedSpecial: Set<string> }) => number
  setMergeCacheSize: (size: number) => void
}

// Loaded with require, on first use or by preloadTokenizers at registration: an encoding takes 0.1 to
// 0.4 s and 10 to 35 MB to load, which a host that only prices other providers' models never pays.
// Each encoding's own entry, so only the encodings in use load.
const require = createRequire(import.meta.url)
const SPLIT = require('gpt-tokenizer/encodingParams/constants') as Record<'O200K_TOKEN_SPLIT_REGEX' | 'CL100K_TOKEN_SPLIT_REGEX', RegExp>
const SPLIT_REGEX: Record<EncodingName, RegExp> = { o200k_base: SPLIT.O200K_TOKEN_SPLIT_REGEX, cl100k_base: SPLIT.CL100K_TOKEN_SPLIT_REGEX }
const loaded = new Map<EncodingName, Encoding>()
// The library caches the tokens of pieces it has merged (100,000 of them by default), in a Map it keeps
// in LRU order by deleting and re-adding each piece it finds: once the Map holds thousands of pieces
// (a process that has counted a few requests), each such hit costs 5 to 25 us in V8, a hundred times a
// lookup, and a request repeating one short piece ("a's") held the loop 40 ms within its work budget
// (no request may hold the loop past 20 ms). Off: the counter remembers pieces itself (tokenCounter), and a piece new to the
// request is charged its merge.
const MERGE_CACHE_SIZE = 0

// The tokens of pieces counted in this process, by encoding: looked up only (Map.get, no reordering), and
// emptied when full, so that a lookup stays cheap whatever was counted before; pieces are at most
// MAX_PIECE_BYTES long and kept as copies of their own (keep), never as views into a request's text, so
// this holds at most some MB.
const PROCESS_PIECES = 20_000
const pieceCounts = new Map<EncodingName, Map<string, number>>()

// Short texts, as the split pattern cuts them, by encoding: a role ("user", "assistant") is in every message,
// and splitting it again costs more than counting it. Each piece with where it starts, its UTF-8 bytes and
// its tokens, so that a text met again is charged exactly as if it were split again (the charge of a
// piece depends on the request's own pieces). Texts of at most SHORT_TEXT characters only: V8 copies
// such a substring rather than pointing into its parent, so no key keeps a larger text alive.
const SHORT_TEXT = 12
const SPLIT_TEXTS = 4096
interface SplitPiece { piece: string, index: number, bytes: number, tokens: number }
const splitTexts = new Map<EncodingName, Map<string, SplitPiece[]>>()

function encoding (name: EncodingName): Encoding {
  let loadedEncoding = loaded.get(name)
  if (loadedEncoding === undefined) {
    loadedEncoding = require(`gpt-tokenizer/encoding/${name}`) as Encoding
    loadedEncoding.setMergeCacheSize(MERGE_CACHE_SIZE)
    loaded.set(name, loadedEncoding)
    pieceCounts.set(name, new Map())
    splitTexts.set(name, new Map())
  }
  return loadedEncoding
}

/** Forgets the pieces counted so far in this process (benchmarks: the worst case, every piece new). */
export function forgetCountedPieces (): void {
  for (const counts of pieceCounts.values()) counts.clear()
  for (const texts of splitTexts.values()) texts.clear()
}

/** Loads, once, the encodings of the models named (the price table's), so that no call pays for it. */
export function preloadTokenizers (models: Iterable<string>): void {
  for (const model of models) {
    const name = encodingFor(model)
    if (name !== null) encoding(name)
  }
}

// Special-token text in a prompt ("<|endoftext|>") is ordinary text to the API: counted as such, never a throw.
const ORDINARY = { disallowedSpecial: new Set<string>() }

/**
 * The tokens of `text` by `model`'s tokenizer, all of it at once (no work budget, no slices): what the
 * provider bills for it; null when the tokenizer is unknown. For mock upstreams and tests only: it can
 * hold the loop for seconds on a large or adversarial text, so a request's estimate counts with
 * tokenCounter.
 */
export function providerTokens (model: string, text: string): number | null {
  const name = encodingFor(model)
  return name === null ? null : encoding(name).countTokens(text, ORDINARY)
}
// The library's BPE merge is quadratic in a piece's bytes (32 KB of one letter takes 0.1 s, 128 KB 1.5 s)
// and slow on multi-byte text (Chinese about 10 us a character against 0.1 us for English prose). Pieces
// are what the encoding's split pattern makes (a word, a run of punctuation or of spaces): one of more
// than MAX_PIECE_BYTES counts a token a byte, which it can never exceed.
const MAX_PIECE_BYTES = 192
// The work of tokenizing, in units of about 0.1 us. Merging a piece is what costs: NEW_BYTE_WEIGHT
// units a byte (new ASCII words, the costliest ASCII, about 0.4 us a byte) and NON_ASCII_WEIGHT more
// for each byte past a character's first, and NEW_PIECE_WORK for the library call that counts it (its
// own overhead, about 0.6 us a piece). A piece met before in the same request is a lookup in the
// request's own map: it costs PIECE_WORK, what splitting and looking it up take, whatever happened in
// the process before. Each call of the counter costs CALL_WORK (20,000 short messages cost their calls,
// not their bytes), and walking a message MESSAGE_WORK (messageTokens charges it).
// Calibrated on this machine (in a review of the work budget) by the costliest shape of each unit: a piece met
// before costs its split and lookup (prose: 0.2 us), and a run of combining marks (one piece of 51
// characters, 101 bytes) 3.9 us: PIECE_WORK, and SEEN_EXTRA_BYTE_WORK a byte past a character's first,
// bound both.
const NON_ASCII_WEIGHT = 16
const NEW_BYTE_WEIGHT = 4
const PIECE_WORK = 12
const NEW_PIECE_WORK = 8
const SEEN_EXTRA_BYTE_WORK = 1
const CALL_WORK = 16
export const MESSAGE_WORK = 8
const workOf = (text: string, bytes: number): number => NEW_BYTE_WEIGHT * bytes + NON_ASCII_WEIGHT * (bytes - text.length)
/**
 * The work tokenized per request: past it, the rest of a prompt counts a token a byte (a bound). About
 * 20 K characters of new English words (random letters: the costliest), 3,000 of new Chinese or
 * Japanese, 8,000 tokenizer calls, or 11 K pieces met before (prose repeats its words): a prompt of any
 * size up to the body limit costs some ms in all, never the 0.1 s to seconds that tokenizing all of it
 * can take, spent in slices that give the event loop a turn between them (loop-slices.ts,
 * bench/estimate-stall.ts). Past the budget, text counts a token a byte
 * (about 4 a token for English); the corpus's median stays 1.02 (test/estimate-tightness.test.ts).
 */
export const MAX_TOKENIZED_WORK = 131_072

/**
 * Counts the tokens of a string, a token a byte once the request's work is spent. The work left is
 * shared by everything one request counts: `charge` spends some on work that is not a call (walking a
 * message, rendering JSON), `canAfford` tells whether some would still be tokenized.
 */
export interface CountTokens {
  (text: string): Promise<number>
  charge: (work: number) => void
  canAfford: (work: number) => boolean
  /** The request's slices (loop-slices.ts): the counter spends its work there and yields within a text. */
  slices: Slices
  /**
   * JSON texts already serialized for this request (the estimate's, by value): reused, never
   * serialized again. Only values not changed since.
   */
  knownJson?: Map<unknown, string>
}

/**
 * A counter for one request to `model` (with its budget of MAX_TOKENIZED_WORK), or null when the model's
 * tokenizer is unknown. Its work is spent in `slices` (the request's, shared with the rest of its
 * estimate): a text is counted in slices, the loop given a turn between them. `window`: the longest
 * segment split in one match (split-windows.ts; tests make it small).
 */
export function tokenCounter (model: string, slices: Slices = newSlices(), window: number = WINDOW): CountTokens | null {
  const name = encodingFor(model)
  if (name === null) return null
  const { countTokens } = encoding(name)
  const split = SPLIT_REGEX[name]
  const counts = pieceCounts.get(name)!
  // Each distinct piece is charged as new once a request, and remembered here: a piece met again is a
  // lookup in this map, never a call. What a piece is charged depends on this request alone (the same
  // request is estimated the same in any process); whether the library is called for a new piece
  // depends on the process's map (a piece counted by an earlier request is not counted again).
  const pieces = new Map<string, number>()
  const texts = splitTexts.get(name)!
  let left = MAX_TOKENIZED_WORK
  /** A short text split before: its pieces charged and counted as the split below does, with no split. */
  const countSplit = async (text: string, split: SplitPiece[]): Promise<number> => {
    let tokens = 0
    for (const { piece, index, bytes, tokens: counted } of split) {
      const long = bytes > MAX_PIECE_BYTES
      const known = long ? undefined : pieces.get(piece)
      const work = PIECE_WORK + SEEN_EXTRA_BYTE_WORK * (bytes - piece.length) + (known !== undefined || long ? 0 : NEW_PIECE_WORK + workOf(piece, bytes))
      if (work > left) {
        left = 0
        return tokens + Buffer.byteLength(text.slice(index), 'utf8')
      }
      left -= work
      slices.spend(work)
      if (long) tokens += bytes
      else if (known !== undefined) tokens += known
      else {
        pieces.set(piece, counted)
        tokens += counted
      }
      if (slices.due()) await slices.pause()
    }
    return tokens
  }
  const count = async (text: string): Promise<number> => {
    left -= CALL_WORK
    slices.spend(CALL_WORK)
    if (left <= 0) {
      // Past the budget a call is cheap, but a body can make tens of thousands of them (one per tool call
      // or content part): the loop gets its turn here too, not only between pieces.
      left = 0
      if (slices.due()) await slices.pause()
      return Buffer.byteLength(text, 'utf8')
    }
    const short = text.length <= SHORT_TEXT && text.length <= window
    const seen = short ? texts.get(text) : undefined
    if (seen !== undefined) return await countSplit(text, seen)
    // A short text is one segment: its pieces are noted as it is split, kept once all are counted.
    const noting: SplitPiece[] | null = short ? [] : null
    // Piece by piece, by the library's own split pattern. The library merges each piece on its own, so
    // a piece counts alone what it counts in place; a long piece, and everything past the budget, count
    // their bytes. The pattern runs on segments of at most a window (split-windows.ts): one match of it
    // is never longer, and the pieces are the whole text's.
    let tokens = 0
    for (let start = 0; start < text.length;) {
      let end = segmentEnd(text, start, window)
      if (end === null) {
        // A region: no cut within a window, one long piece (or, for runs of digits, pieces whose tokens
        // its bytes bound), charged as a long piece. Its end is found a window at a time.
        for (let from = start + window; end === null; from += window) {
          end = regionEndWithin(text, from, window)
          if (slices.due()) await slices.pause()
        }
        const region = text.slice(start, end)
        const bytes = Buffer.byteLength(region, 'utf8')
        const work = PIECE_WORK + SEEN_EXTRA_BYTE_WORK * (bytes - region.length)
        if (work > left) { left = 0; return tokens + Buffer.byteLength(text.slice(start), 'utf8') }
        left -= work
        slices.spend(work)
        tokens += bytes
      } else {
        for (const match of text.slice(start, end).matchAll(split)) {
          const [piece] = match
          const pieceBytes = Buffer.byteLength(piece, 'utf8')
          const long = pieceBytes > MAX_PIECE_BYTES
          const known = long ? undefined : pieces.get(piece)
          const work = PIECE_WORK + SEEN_EXTRA_BYTE_WORK * (pieceBytes - piece.length) + (known !== undefined || long ? 0 : NEW_PIECE_WORK + workOf(piece, pieceBytes))
          if (work > left) {
            left = 0
            return tokens + Buffer.byteLength(text.slice(start + match.index), 'utf8')
          }
          left -= work
          slices.spend(work)
          if (long) {
            tokens += pieceBytes
            noting?.push({ piece, index: match.index, bytes: pieceBytes, tokens: pieceBytes })
          } else if (known !== undefined) {
            tokens += known
            noting?.push({ piece, index: match.index, bytes: pieceBytes, tokens: known })
          } else {
            const counted = counts.get(piece) ?? keep(counts, PROCESS_PIECES, piece, countTokens(piece, ORDINARY))
            pieces.set(piece, counted)
            tokens += counted
            noting?.push({ piece, index: match.index, bytes: pieceBytes, tokens: counted })
          }
          // The split goes on from `lastIndex` of the iterator's own copy of the pattern: a turn of the loop
          // between two pieces changes nothing in it.
          if (slices.due()) await slices.pause()
        }
      }
      start = end
    }
    if (noting !== null) keep(texts, SPLIT_TEXTS, text, noting)
    return tokens
  }
  return Object.assign(count, {
    charge: (work: number) => { left = Math.max(0, left - work); slices.spend(work) },
    canAfford: (work: number) => left >= work,
    slices
  })
}

// The chat format (OpenAI's documented rule, cookbook "How to count tokens with tiktoken"): each message
// is <|start|>{role}<|message|>{content}<|end|>, 3 tokens and its role's; a name adds its own and 1; the
// reply is primed with 3 more. The rule matches the API's prompt_tokens for these models. For what it
// does not cover, the best-known reconstructions (fitted to the API's usage: hmarr/openai-chat-tokens for
// function definitions, forestwanglin/openai-java for tool calls and results) set the allowances below,
// each at least what the reconstruction adds (test/estimate-tightness.test.ts checks it on a corpus).
const TOKENS_PER_MESSAGE = 3
const TOKENS_PER_NAME = 1
const TOKENS_PER_REPLY = 3
// Content parts are joined in the message: a separator, and the merge of the pieces either side of each join.
const TOKENS_PER_EXTRA_PART = 2
// A tool call costs about its type, its name twice and its arguments, re-rendered one key a line with
// numbers quoted (the larger of that and the arguments as sent is counted); several calls in one
// message are wrapped in a parallel call (about 21 tokens, less one a call).
const TOKENS_PER_TOOL_CALL = 4
const TOKENS_PER_PARALLEL_CALLS = 24
// A tool's result: its role's tokens less one, 3 more when there are several, and perhaps the name of the function it answers.
const TOKENS_PER_TOOL_RESULT = 8
// Tool definitions sit in the system message under a heading (hmarr: 9 tokens, the system message's
// newline and a system message of its own when there is none).
const TOKENS_PER_DEFINITIONS = 16
const TOKENS_PER_TOOL = 4
// tool_choice and function_call other than "auto": 1 token for "none", the function's name and 4 for one function.
const TOKENS_PER_TOOL_CHOICE = 4
// A response_format schema sits under `# Response Formats` / `## NAME`.
const TOKENS_PER_RESPONSE_FORMAT = 12

const jsonOf = (value: unknown, count: CountTokens): string => count.knownJson?.get(value) ?? JSON.stringify(value)
const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value)
const bytesOf = (value: unknown): number => Buffer.byteLength(JSON.stringify(value) ?? '', 'utf8')
const textOf = async (value: unknown, count: CountTokens): Promise<number> => (typeof value === 'string' ? await count(value) : value === undefined || value === null ? 0 : bytesOf(value))

// How OpenAI re-renders a JSON object in a tool call or result (forestwanglin/openai-java, fitted to the
// API): one top-level key a line, strings and numbers quoted, nested objects the same way.
function rendered (value: unknown): string {
  if (isObject(value)) return `{\n${Object.entries(value).map(([key, inner]) => `"${key}":${rendered(inner)}`).join(',\n')}\n}`
  if (Array.isArray(value)) return `[${value.map(rendered).join(',')}]`
  return typeof value === 'string' || typeof value === 'number' ? `"${String(value)}"` : '""'
}

/**
 * Past the work budget, what stands for the tokens of JSON (a message, tool definitions) that the rules
 * here would count: JSON_BOUND_FACTOR tokens a byte of its JSON text. Each rule counts at most a token a
 * byte of what it renders, and no rendering is more than 3 bytes a JSON byte: OpenAI's re-rendering of
 * arguments quotes a one-digit number ("1" for 1) and breaks a line after `{` and `,`; the TypeScript
 * namespace of definitions writes an enum's `,` as ` | `; a message's fixed tokens (3, a name's 1, a
 * tool call's 4 and 24, a result's 8) are fewer than 3 a byte of the keys that carry them ("role":).
 */
const JSON_BOUND_FACTOR = 3
/** Work a byte of JSON serialized, parsed or re-rendered (about 0.01 to 0.05 us a byte: a unit is 0.1 us, so this rounds up). */
const JSON_BYTE_WORK = 1

const OPENS_JSON = /^[ \t\n\r]*[{[]/

/** A JSON text's tokens as sent or as OpenAI re-renders it, whichever is more. */
async function jsonTextTokens (text: unknown, count: CountTokens): Promise<number> {
  if (typeof text !== 'string') return await textOf(text, count)
  // JSON.parse, and the API's re-rendering, take an object or array after any JSON whitespace.
  if (!OPENS_JSON.test(text)) return await count(text)
  // Parsing and re-rendering cost time in proportion too: only within the budget, else the bound.
  const bytes = Buffer.byteLength(text, 'utf8')
  if (!count.canAfford(2 * JSON_BYTE_WORK * bytes)) { count.charge(JSON_BYTE_WORK * bytes); return JSON_BOUND_FACTOR * bytes }
  count.charge(2 * JSON_BYTE_WORK * bytes) // parsing, and re-rendering
  const sent = await count(text)
  let again: string
  try {
    const parsed: unknown = JSON.parse(text)
    if (!isObject(parsed) && !Array.isArray(parsed)) return sent
    again = rendered(parsed)
  } catch {
    return sent // not JSON (or nested too deep to render): the API passes it as sent
  }
  return Math.max(sent, await count(again))
}

async function contentTokens (content: unknown, count: CountTokens, json: boolean): Promise<number> {
  if (!Array.isArray(content)) return json ? await jsonTextTokens(content, count) : await textOf(content, count)
  let tokens = TOKENS_PER_EXTRA_PART * Math.max(0, content.length - 1)
  for (const part of content) {
    if (count.slices.due()) await count.slices.pause()
    if (!isObject(part)) { tokens += bytesOf(part); continue }
    const { type, text, refusal, ...rest } = part
    if (type === 'image_url') continue // counted by the caller at the model's worst case
    tokens += await textOf(type === 'refusal' ? refusal : text, count) + (Object.keys(rest).length === 0 ? 0 : bytesOf(rest))
    if (type === 'refusal' && text !== undefined) tokens += bytesOf(text)
  }
  return tokens
}

async function callTokens (call: unknown, count: CountTokens): Promise<number> {
  const fn = isObject(call) && isObject(call.function) ? call.function : isObject(call) ? call : null
  if (fn === null || typeof fn.name !== 'string' || (fn.arguments !== undefined && typeof fn.arguments !== 'string')) return bytesOf(call)
  return TOKENS_PER_TOOL_CALL + 2 * await count(fn.name) + await jsonTextTokens(fn.arguments, count)
}

// The keys a message's rule counts; any other is counted a token a byte of its JSON.
const MESSAGE_KEYS = new Set(['role', 'content', 'name', 'tool_calls', 'function_call', 'tool_call_id', 'refusal'])

/** Whether `value` has an own enumerable key outside `known` (what an object rest of those keys would hold), without building the rest. */
function hasOtherKeys (value: Record<string, unknown>, known: ReadonlySet<string>): boolean {
  for (const key in value) if (Object.hasOwn(value, key) && !known.has(key)) return true
  return false
}

async function messageTokens (messages: unknown[], count: CountTokens): Promise<number> {
  const callNames = new Map<string, string>()
  let longestName = 0
  for (const message of messages) {
    const calls = isObject(message) ? message.tool_calls : undefined
    if (!Array.isArray(calls)) continue
    for (const call of calls) {
      if (count.slices.due()) await count.slices.pause()
      if (isObject(call) && typeof call.id === 'string' && isObject(call.function) && typeof call.function.name === 'string') {
        callNames.set(call.id, call.function.name)
        longestName = Math.max(longestName, Buffer.byteLength(call.function.name, 'utf8'))
      }
    }
  }
  let tokens = TOKENS_PER_REPLY
  for (const [index, message] of messages.entries()) {
    count.charge(MESSAGE_WORK)
    if (count.slices.due()) await count.slices.pause()
    if (!count.canAfford(1)) {
      // The budget is spent: the rest at the bound of their JSON, each perhaps answering the longest
      // call name (a result counts the name of the call it answers, which its own JSON need not hold).
      return tokens + JSON_BOUND_FACTOR * await restBytes(messages, index, count) + (messages.length - index) * longestName
    }
    if (!isObject(message)) { tokens += bytesOf(message); continue }
    const { role, content, name, tool_calls: toolCalls, function_call: functionCall, tool_call_id: toolCallId, refusal } = message
    tokens += TOKENS_PER_MESSAGE + await textOf(role, count) + await contentTokens(content, count, toolCallId !== undefined) + await textOf(refusal, count)
    if (name !== undefined) tokens += TOKENS_PER_NAME + await textOf(name, count)
    if (Array.isArray(toolCalls)) {
      for (const call of toolCalls) {
        if (count.slices.due()) await count.slices.pause()
        tokens += await callTokens(call, count)
      }
      if (toolCalls.length > 1) tokens += TOKENS_PER_PARALLEL_CALLS
    } else if (toolCalls !== undefined && toolCalls !== null) tokens += bytesOf(toolCalls)
    if (functionCall !== undefined && functionCall !== null) tokens += await callTokens(functionCall, count)
    if (toolCallId !== undefined) {
      const answered = typeof toolCallId === 'string' ? callNames.get(toolCallId) : undefined
      tokens += TOKENS_PER_TOOL_RESULT + (answered === undefined ? await textOf(toolCallId, count) : await count(answered))
    }
    if (hasOtherKeys(message, MESSAGE_KEYS)) {
      const { role: _role, content: _content, name: _name, tool_calls: _calls, function_call: _call, tool_call_id: _id, refusal: _refusal, ...rest } = message
      const restBytes = bytesOf(rest)
      count.charge(JSON_BYTE_WORK * restBytes)
      tokens += restBytes
    }
  }
  return tokens
}

/**
 * The bytes of JSON.stringify(messages.slice(from)), from the messages' JSON text when the estimate
 * has it: its elements from the one at `from` (found by one pass over the text's characters, cheaper
 * than serializing again), in brackets.
 */
async function restBytes (messages: unknown[], from: number, count: CountTokens): Promise<number> {
  const text = count.knownJson?.get(messages)
  if (text === undefined) return bytesOf(messages.slice(from))
  if (from === 0) return Buffer.byteLength(text, 'utf8')
  let element = 0
  let depth = 0
  for (let i = 0, next = SCAN_STRIDE; i < text.length; i++) {
    const code = text.charCodeAt(i)
    if (code === 34) i = endOfString(text, i)
    else if (code === 123 || code === 91) depth++
    else if (code === 125 || code === 93) depth--
    else if (code === 44 && depth === 1 && ++element === from) return 2 + Buffer.byteLength(text.slice(i + 1, text.length - 1), 'utf8')
    if (i >= next) {
      next = i + SCAN_STRIDE
      if (count.slices.due()) await count.slices.pause()
    }
  }
  return bytesOf(messages.slice(from))
}

function asFunctionDefinitions (definitions: unknown[]): ChatCompletionFunctionDefinition[] {
  return definitions.flatMap((definition) => {
    const fn = isObject(definition) && definition.type === 'function' && isObject(definition.function) ? definition.function : definition
    return isObject(fn) && typeof fn.name === 'string' ? [fn as unknown as ChatCompletionFunctionDefinition] : []
  })
}

// OpenAI renders tool definitions in an internal format; the best-known reconstruction is a TypeScript
// namespace (hmarr/openai-chat-tokens, gpt-tokenizer's functionCalling). That drops some of the schema
// (nested descriptions, keywords it does not know), which the real format may keep; their JSON keeps
// all of it, but writes enums more briefly. The bound is the larger of the two, plus the section's
// heading and an allowance a tool.
async function definitionTokens (definitions: unknown, count: CountTokens): Promise<number> {
  if (!Array.isArray(definitions)) return TOKENS_PER_DEFINITIONS + bytesOf(definitions)
  const text = jsonOf(definitions, count)
  const bytes = Buffer.byteLength(text, 'utf8')
  // Rendering the namespace takes time in proportion too (15 to 70 ms for 1 MB, 0.02 to 0.07 us a
  // byte): only within the budget, charged per byte like any JSON walk.
  if (!count.canAfford(2 * JSON_BYTE_WORK * bytes)) {
    count.charge(JSON_BYTE_WORK * bytes)
    return TOKENS_PER_DEFINITIONS + TOKENS_PER_TOOL * definitions.length + JSON_BOUND_FACTOR * bytes
  }
  count.charge(2 * JSON_BYTE_WORK * bytes)
  const json = await count(text)
  let namespace = 0
  let formatted: string | null = null
  try {
    formatted = formatFunctionDefinitions(asFunctionDefinitions(definitions))
  } catch {
    // A schema the reconstruction cannot read (not JSON Schema's shape): the API refuses it, the JSON bounds it.
  }
  if (formatted !== null) namespace = await count(formatted)
  return TOKENS_PER_DEFINITIONS + TOKENS_PER_TOOL * definitions.length + Math.max(json, namespace)
}

/** A parsed value's JSON, counted: its serialization charged a unit a byte, and past the budget a token a byte. */
async function jsonTokens (value: unknown, count: CountTokens): Promise<number> {
  const text = jsonOf(value, count)
  count.charge(JSON_BYTE_WORK * text.length)
  return await count(text)
}

const present = (value: unknown): boolean => value !== undefined && value !== null

/**
 * The prompt tokens of an OpenAI chat request, by the model's tokenizer and the chat format's rule:
 * messages (their image parts left to the caller), tool and function definitions, tool_choice and
 * function_call, and the response_format (its schema is rendered as JSON under a heading). Fields the
 * rule does not know count a token a byte of their JSON.
 */
export async function chatPromptTokens (body: { messages: unknown[], [field: string]: unknown }, count: CountTokens): Promise<number> {
  let tokens = await messageTokens(body.messages, count)
  for (const definitions of [body.tools, body.functions]) if (present(definitions)) tokens += await definitionTokens(definitions, count)
  for (const choice of [body.tool_choice, body.function_call]) if (present(choice) && choice !== 'auto') tokens += TOKENS_PER_TOOL_CHOICE + await jsonTokens(choice, count)
  if (present(body.response_format)) tokens += TOKENS_PER_RESPONSE_FORMAT + await jsonTokens(body.response_format, count)
  return tokens
}
