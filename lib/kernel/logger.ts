// What the domains log through: the host's logger (Fastify's pino instance) as far as they use it, so that
// no domain needs Fastify to say what went wrong.
export interface LogFn {
  (object: object, message?: string): void
  (message: string): void
}

export interface Logger {
  debug: LogFn
  info: LogFn
  warn: LogFn
  error: LogFn
}
