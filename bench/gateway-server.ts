// A minimal gateway for the gate benchmark, run as a process of its own: the plugin as it ships (its build,
// dist/: what a gateway runs, without tsx's per-closure naming), one gated route,
// and the same route ungated, both answering a fixed provider reply (so every admitted call costs the
// same, and the recorded spend can be checked exactly). Prints "listening <address>" when ready.
import { Session } from 'node:inspector/promises'
import Fastify from 'fastify'

export const BENCH_ADMIN_TOKEN = 'bench-admin-token-0123456789'
/** The provider's fixed answer: 10 prompt and 20 completion tokens of gpt-4o-mini. */
export const ANSWER = {
  id: 'chatcmpl-bench',
  object: 'chat.completion',
  created: 0,
  model: 'gpt-4o-mini',
  choices: [{ index: 0, message: { role: 'assistant', content: 'Hello there' }, finish_reason: 'stop', logprobs: null }],
  usage: { prompt_tokens: 10, completion_tokens: 20, total_tokens: 30 }
}

if (process.argv[1] !== undefined && import.meta.url.endsWith(process.argv[1].split('/').pop()!)) {
  // BENCH_PLUGIN: another build's dist/index.js, to set two builds side by side (bench/gate-ab.ts).
  const budgets = (await import(process.env.BENCH_PLUGIN ?? '../dist/index.js')).default as typeof import('../lib/index.js').default
  // BENCH_LOG=1: the gateway's warnings and errors on stderr (what a benchmark run met)
  const app = Fastify(process.env.BENCH_LOG === '1' ? { logger: { level: 'warn', stream: process.stderr } } : {})
  await app.register(budgets, {
    database: process.env.DATABASE_URL!,
    adminToken: BENCH_ADMIN_TOKEN,
    gate: { routes: ['/v1/chat/completions'], sweepIntervalMs: 0 },
    notifications: { intervalMs: 0 },
    // BENCH_DECISIONS=off: the gate without its decision log, to measure what the log costs (bench/gate.ts).
    decisions: { enabled: process.env.BENCH_DECISIONS !== 'off' }
  })
  // Counts the calls the gate admitted, so the benchmark can check the recorded spend against them.
  // And when it admitted the last one, so a benchmark can tell when a change came into force (bench/admin-under-load.ts).
  let admitted = 0
  let lastAdmittedAt = 0
  app.post('/v1/chat/completions', async () => { admitted++; lastAdmittedAt = Date.now(); return ANSWER })
  app.post('/ungated/v1/chat/completions', async () => ANSWER)
  app.get('/bench/admitted', async () => ({ admitted, lastAdmittedAt }))
  // The process's CPU time so far (user + system, microseconds): CPU per call, which load elsewhere on the machine disturbs less than throughput.
  app.get('/bench/cpu', async () => { const { user, system } = process.cpuUsage(); return { micros: user + system } })
  // A CPU profile of what runs between start and stop (bench/gate-profile.ts): the inspector in this process, so loading the modules is not in it.
  const profiler = new Session()
  profiler.connect()
  await profiler.post('Profiler.enable')
  app.post('/bench/profile/start', async () => { await profiler.post('Profiler.start'); return { started: true } })
  app.post('/bench/profile/stop', async () => (await profiler.post('Profiler.stop')).profile)
  // What is allocated, by where (sampled): `promoted` keeps what lived through young collections and died in a full one.
  app.post('/bench/allocations/start', async (request) => {
    const promoted = (request.body as { promoted?: boolean } | null)?.promoted === true
    await profiler.post('HeapProfiler.startSampling', { samplingInterval: 4096, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: !promoted })
    return { started: true }
  })
  app.post('/bench/allocations/stop', async () => (await profiler.post('HeapProfiler.stopSampling')).profile)
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  process.once('SIGTERM', () => { void app.close().then(() => process.exit(0)) })
  process.stdout.write(`listening ${address}\n`)
}
