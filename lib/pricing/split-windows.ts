// The tokenizer's split pattern, run on windows of a text rather than on all of it. One native match of
// the pattern cannot be sliced, and a run of letters is one match however long: a 1 MiB message of
// Chinese held the event loop 28 ms in that one match. So the text is cut into segments of at most a
// window, each split on its own, at cuts where the whole-text split has a piece boundary and where
// nothing on either side of the cut depends on the other side: the pieces of the segments are the pieces
// of the whole text (test/split-windows.test.ts checks it against the whole-text split on arbitrary
// strings, both encodings). A stretch longer than a window with no cut in it (one long piece: a run of
// letters, punctuation or spaces) is a region, counted as its bytes, which is what its one long piece
// counts; should it hold several pieces (a long run of digits), its bytes are still at least their tokens.

/**
 * The cuts, each right after the character the pattern matches. At each, a piece of both encodings'
 * split patterns ends and the next begins, and no alternative of the pattern, tried at any place before
 * the cut, reads past the character after it, nor finds that character different from the end of the
 * text:
 * - after a letter, before a character that is no letter, no combining mark and no apostrophe: a piece
 *   holding a letter is a run of letters and marks, perhaps with one leading non-letter and, in o200k, a
 *   trailing contraction ('s, 't ...);
 * - after a digit, before a character that is not one: digits are matched 1 to 3 at a time, alone;
 * - after a character that is no space, letter or digit, before a space or tab (not CR or LF): no piece
 *   runs on from punctuation into a space (o200k's punctuation takes trailing CR, LF and '/', cl100k's
 *   CR and LF).
 * None leaves the segment before it ending in a space, so cl100k's `\s+$` matches at the end of a segment
 * only where it matches at the end of the text.
 */
const CUT = /\p{L}(?=[^\p{L}\p{M}'])|\p{N}(?=\P{N})|[^\s\p{L}\p{N}](?=[^\S\r\n])/gu

/** The longest segment split in one go: a match of the pattern scans at most this many characters. */
export const WINDOW = 32_768

/**
 * The cuts in text between `from` (exclusive) and `to` (inclusive), by one pass of CUT over that stretch
 * and the two characters after it (so that the character after a cut is whole, even as a surrogate
 * pair): the last one when `last`, else the first; null when there is none.
 */
function cutBetween (text: string, from: number, to: number, last: boolean): number | null {
  // From the character before `from`: a cut right at `from + 1`'s start needs it (a lone half of a
  // surrogate pair there is no letter, digit or mark, and only hides a cut).
  const start = Math.max(0, from - 1)
  const stretch = text.slice(start, Math.min(text.length, to + 2))
  CUT.lastIndex = 0
  let found: number | null = null
  for (let match = CUT.exec(stretch); match !== null; match = CUT.exec(stretch)) {
    const cut = start + match.index + match[0].length
    if (cut > to) break
    if (cut <= from) continue
    found = cut
    if (!last) break
  }
  return found
}

/**
 * Where the segment that starts at `from` (a cut, or 0) ends: the text's end when it is at most `window`
 * away, else the last cut within `window`; null when there is none (a region: see regionEnd).
 */
export function segmentEnd (text: string, from: number, window: number = WINDOW): number | null {
  if (text.length - from <= window) return text.length
  // The window's last eighth first: in most text it holds a cut, and the rest need not be searched.
  const tail = from + window - Math.ceil(window / 8)
  return cutBetween(text, tail, from + window, true) ?? cutBetween(text, from, tail, true)
}

/**
 * One window's step of finding where a region ends: the first cut after `from` and at most `window`
 * past it, the text's end when that is within `window`, or null to go on from `from + window`.
 */
export function regionEndWithin (text: string, from: number, window: number = WINDOW): number | null {
  const to = Math.min(text.length, from + window)
  return cutBetween(text, from, to, false) ?? (to === text.length ? to : null)
}

/**
 * The text's segments, in order, all at once (tests, and what the counter does in slices): `exact` when
 * the segment is split by the pattern, false for a region counted as its bytes.
 */
export function segments (text: string, window: number = WINDOW): Array<{ start: number, end: number, exact: boolean }> {
  const found: Array<{ start: number, end: number, exact: boolean }> = []
  for (let start = 0; start < text.length;) {
    let end = segmentEnd(text, start, window)
    const exact = end !== null
    for (let from = start + window; end === null; from += window) end = regionEndWithin(text, from, window)
    found.push({ start, end, exact })
    start = end
  }
  return found
}
