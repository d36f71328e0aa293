// The spend report's date presets, as UTC days: this week and last week (ISO weeks, which start on Monday),
// this month and last month. The page shows a range as its first and last day, both included; the API's
// `to` is exclusive, so the query's `to` is the midnight after the last day. Pure date arithmetic, no DOM.
export const PRESETS = ['this-week', 'last-week', 'this-month', 'last-month']

const DAY = 86_400_000

/** A UTC day as YYYY-MM-DD. */
function day (time) {
  return new Date(time).toISOString().slice(0, 10)
}

/** The preset's first and last UTC day (both included) around the instant `now`. */
export function presetDays (preset, now = new Date()) {
  const today = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate())
  const year = now.getUTCFullYear()
  const month = now.getUTCMonth()
  // getUTCDay: Sunday 0 … Saturday 6; days since this week's Monday: Monday 0 … Sunday 6.
  const monday = today - ((now.getUTCDay() + 6) % 7) * DAY
  switch (preset) {
    case 'this-week': return { first: day(monday), last: day(monday + 6 * DAY) }
    case 'last-week': return { first: day(monday - 7 * DAY), last: day(monday - DAY) }
    // Date.UTC carries day 0 back to the previous month's last day, and month -1 to last December.
    case 'this-month': return { first: day(Date.UTC(year, month, 1)), last: day(Date.UTC(year, month + 1, 0)) }
    case 'last-month': return { first: day(Date.UTC(year, month - 1, 1)), last: day(Date.UTC(year, month, 0)) }
    default: throw new Error(`not a preset: ${preset}`)
  }
}

/** The query's from/to for days shown as first..last (either may be ''): `to` is the midnight after `last`. */
export function queryRange (first, last) {
  const range = {}
  if (first !== '') range.from = first
  if (last !== '') range.to = day(Date.parse(`${last}T00:00:00Z`) + DAY)
  return range
}
