// The dashboard: a static page under {prefix}/ui that reads the admin API from the browser. The page and
// its scripts show no money and need no authorization; every number it shows comes from the admin API,
// called with the token the operator types into the page (kept in the tab's sessionStorage only).
import { readdirSync, readFileSync } from 'node:fs'
import { extname } from 'node:path'
import { createRequire } from 'node:module'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import type { FastifyReply } from 'fastify'
import { RouteNotFoundError } from '../kernel/errors.js'
import { handleError } from './error-handler.js'

// @fastify/swagger's flag, declared here too so the build does not need swagger's types.
declare module 'fastify' {
  interface FastifySchema { hide?: boolean }
}

const UI_DIR = new URL('../../ui/', import.meta.url)
const require = createRequire(import.meta.url)

interface Asset { type: string, body: Buffer }

const TYPES: Record<string, string> = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8' }

/**
 * The page's files, read once at registration: every page file of ui/ and uPlot's two. A request names a key of
 * this map, never a path on disk; a module the page adds to ui/ is served without a list to keep.
 */
function loadAssets (): Map<string, Asset> {
  const own = readdirSync(UI_DIR).filter((name) => TYPES[extname(name)] !== undefined)
    .map((name): [string, Asset] => [name, { type: TYPES[extname(name)]!, body: readFileSync(new URL(name, UI_DIR)) }])
  const chart = (name: string): [string, Asset] => [name, { type: TYPES[extname(name)]!, body: readFileSync(require.resolve(`uplot/dist/${name}`)) }]
  return new Map([...own, chart('uPlot.iife.min.js'), chart('uPlot.min.css')])
}

// Scripts and styles from this origin only, no inline script, no framing, and the API on the same origin.
const SECURITY_HEADERS = {
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-cache'
}

export interface DashboardOptions {
  /** The admin API's prefix, written into the page so it finds its files and the API wherever it is served. */
  apiPrefix: string
}

export const dashboardRoutes: FastifyPluginAsyncTypebox<DashboardOptions> = async (app, { apiPrefix }) => {
  const assets = loadAssets()
  // The page names its files and the API by absolute paths, so it works at {prefix}/ui and {prefix}/ui/ alike
  // (no redirect to build from a request's URL, and nothing to clash with a host's ignoreTrailingSlash).
  const page = { ...assets.get('index.html')!, body: Buffer.from(assets.get('index.html')!.body.toString('utf8').replaceAll('{{prefix}}', escapeAttribute(apiPrefix))) }
  app.setErrorHandler(handleError)
  // Not part of the admin API: kept out of the OpenAPI document.
  const schema = { hide: true }

  app.get('/ui', { schema }, async (_request, reply) => await send(reply, page))
  const { ignoreTrailingSlash } = { ...app.initialConfig, ...(app.initialConfig as { routerOptions?: { ignoreTrailingSlash?: boolean } }).routerOptions }
  if (ignoreTrailingSlash !== true) app.get('/ui/', { schema }, async (_request, reply) => await send(reply, page))

  app.get('/ui/:file', { schema: { ...schema, params: Type.Object({ file: Type.String() }) } }, async (request, reply) => {
    const asset = request.params.file === 'index.html' ? page : assets.get(request.params.file)
    if (asset === undefined) throw new RouteNotFoundError('GET', request.url.split('?')[0]!)
    return await send(reply, asset)
  })
}

function escapeAttribute (text: string): string {
  return text.replace(/[&"<>]/g, (character) => `&#${character.charCodeAt(0)};`)
}

async function send (reply: FastifyReply, asset: Asset) {
  return await reply.headers(SECURITY_HEADERS).type(asset.type).send(asset.body)
}
