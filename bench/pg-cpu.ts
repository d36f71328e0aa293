// PostgreSQL's CPU time while a benchmark runs, read from /proc (the server must run on this machine: a
// DATABASE_URL on 127.0.0.1, or the embedded fallback). The server's CPU is the postmaster's own
// utime+stime+cutime+cstime plus utime+stime of its live children: a backend that exits is reaped by the
// postmaster and its time moves to the postmaster's cutime/cstime, so it still counts. On a server that other
// work shares (another test run), that figure holds the other work too, and its short-lived backends cannot be
// told apart once reaped: so the same samples also follow, process by process, the benchmark's own backends
// (by the database in their process title) and the server's background processes (WAL writer, checkpointer,
// autovacuum of the benchmark's databases), which is what the benchmark cost.
import { execFileSync } from 'node:child_process'
import { readFile, readdir } from 'node:fs/promises'
import type { Sql } from 'postgres'

const TICKS_PER_SECOND = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim())
const MICROS_PER_TICK = 1e6 / TICKS_PER_SECOND
// Often enough that a process that exits between two samples loses little of its time (the benchmark's
// backends live as long as their gateway's pool).
const SAMPLE_MS = 200

/** What the server spent over a measure, in microseconds of CPU. */
export interface ServerCpu {
  /** The whole server: every backend and background process, those that exited included. */
  server: number
  /** The benchmark's databases' backends and the background processes, followed one by one (one that exits: to its last sample). */
  benchmark: number
}

export interface ServerCpuMeter {
  /** Starts a measure: samples the server now and every SAMPLE_MS until `stop`. */
  start: () => Promise<{ stop: () => Promise<ServerCpu> }>
  postmasterPid: number
}

/** A process's CPU ticks, from /proc/PID/stat: utime+stime, and with its reaped children's cutime+cstime. */
async function ticks (pid: number): Promise<{ own: number, withReaped: number } | null> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
    // The command name (field 2) may hold spaces: fields 3 on follow its closing parenthesis.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    const [utime, stime, cutime, cstime] = [11, 12, 13, 14].map((index) => Number(fields[index])) as [number, number, number, number]
    return { own: utime + stime, withReaped: utime + stime + cutime + cstime }
  } catch {
    return null // exited between the listing and the read
  }
}

/** The database a server process works for, from its title ("postgres: [cluster: ]user database host(port) state"), or null (a background process). */
async function databaseOf (pid: number): Promise<string | null> {
  try {
    const title = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).replace(/\0/g, ' ')
    return /\s\S+\s(\S+)\s(?:\S+\(\d+\)|\[local\])(?:\s|$)/.exec(title)?.[1] ?? /autovacuum worker (\S+)/.exec(title)?.[1] ?? null
  } catch {
    return null
  }
}

async function childrenOf (pid: number): Promise<number[]> {
  try {
    return (await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8')).trim().split(/\s+/).filter(Boolean).map(Number)
  } catch {
    // Kernels without CONFIG_PROC_CHILDREN: every process whose parent (field 4) is the postmaster.
    const found: number[] = []
    for (const entry of await readdir('/proc')) {
      if (!/^\d+$/.test(entry)) continue
      try {
        const stat = await readFile(`/proc/${entry}/stat`, 'utf8')
        if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) found.push(Number(entry))
      } catch {}
    }
    return found
  }
}

/**
 * A meter on the server behind `sql`, or null with the reason when its processes are not on this machine.
 * `ours` says which databases are the benchmark's.
 */
export async function serverCpuMeter (sql: Sql, ours: (database: string) => boolean): Promise<ServerCpuMeter | string> {
  const [row] = await sql<Array<{ directory: string }>>`select current_setting('data_directory') as directory`
  let postmasterPid: number
  try {
    postmasterPid = Number((await readFile(`${row!.directory}/postmaster.pid`, 'utf8')).split('\n')[0])
  } catch (error) {
    return `PostgreSQL's postmaster.pid is not readable here (${(error as Error).message}): its CPU is not measured`
  }
  if ((await ticks(postmasterPid)) === null) return `PostgreSQL's postmaster (pid ${postmasterPid}) is not a process on this machine: its CPU is not measured`

  /** The server's ticks now, and the ticks of each live process that works for the benchmark (the postmaster's own under its pid). */
  async function sample (): Promise<{ server: number, benchmark: Map<number, number> }> {
    const postmaster = await ticks(postmasterPid)
    let server = postmaster?.withReaped ?? 0
    const benchmark = new Map<number, number>([[postmasterPid, postmaster?.own ?? 0]])
    for (const pid of await childrenOf(postmasterPid)) {
      const child = await ticks(pid)
      if (child === null) continue
      server += child.own
      const database = await databaseOf(pid)
      if (database === null || ours(database)) benchmark.set(pid, child.own)
    }
    return { server, benchmark }
  }

  return {
    postmasterPid,
    async start () {
      const first = await sample()
      // The benchmark's processes: ticks when first seen (0 for one born during the measure) and when last seen.
      const seen = new Map<number, { from: number, to: number }>()
      for (const [pid, value] of first.benchmark) seen.set(pid, { from: value, to: value })
      const note = (processes: Map<number, number>) => {
        for (const [pid, value] of processes) {
          const known = seen.get(pid)
          if (known === undefined) seen.set(pid, { from: 0, to: value })
          else known.to = value
        }
      }
      let sampling = Promise.resolve()
      const timer = setInterval(() => { sampling = sampling.then(async () => note((await sample()).benchmark)) }, SAMPLE_MS)
      return {
        async stop () {
          clearInterval(timer)
          await sampling
          const last = await sample()
          note(last.benchmark)
          let benchmarkTicks = 0
          for (const { from, to } of seen.values()) benchmarkTicks += to - from
          return { server: (last.server - first.server) * MICROS_PER_TICK, benchmark: benchmarkTicks * MICROS_PER_TICK }
        }
      }
    }
  }
}
