// How long one piece of work holds the event loop: a probe re-schedules itself with setImmediate while the
// work runs, and the longest gap between two of its turns is the stretch (bench/estimate-stall.ts,
// bench/cost-import-stall.ts). CPU time counts the process's other threads (the garbage collector's) too.
import { performance } from 'node:perf_hooks'

/** The process's CPU time so far, user and system, in ms. */
export const cpuNow = (): number => { const used = process.cpuUsage(); return (used.user + used.system) / 1000 }

/**
 * One run of `work` under the probe: the longest stretch between two turns of the loop, in CPU ms and
 * in wall ms, the whole run's CPU ms, and the turns the loop got.
 */
export async function probed (work: () => Promise<unknown>): Promise<{ cpu: number, wall: number, total: number, turns: number }> {
  let running = true
  let turns = 0
  let lastCpu = cpuNow()
  let lastWall = performance.now()
  let cpu = 0
  let wall = 0
  const mark = () => {
    const nowCpu = cpuNow()
    const nowWall = performance.now()
    cpu = Math.max(cpu, nowCpu - lastCpu)
    wall = Math.max(wall, nowWall - lastWall)
    lastCpu = nowCpu
    lastWall = nowWall
  }
  const probe = () => {
    if (!running) return
    mark()
    turns++
    setImmediate(probe)
  }
  const startCpu = lastCpu
  setImmediate(probe)
  try {
    await work()
  } finally {
    mark()
    running = false
  }
  return { cpu, wall, total: cpuNow() - startCpu, turns }
}
