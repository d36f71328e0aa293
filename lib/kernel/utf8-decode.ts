// A request body's bytes decoded as strict UTF-8 in slices: decoding a 4 MiB body in one call held the
// event loop some 18 ms. The bytes are decoded a part at a time by one streaming decoder (a character split
// between two parts is joined as it would be in one call), giving the loop a turn between slices.
import { SLICE_WORK, slices as newSlices, type Slices } from './loop-slices.js'

/** Bytes decoded per call. */
export const DECODE_PART = 64 * 1024
/** The work a part counts (loop-slices' units): a slice is 8 parts, 512 KiB, unless the clock ends it first. */
const PART_WORK = SLICE_WORK / 8

/** The bytes as text; throws a TypeError (as TextDecoder's fatal mode does) where they are not UTF-8. */
export async function decodeUtf8InSlices (bytes: Uint8Array, slices: Slices = newSlices(), part = DECODE_PART): Promise<string> {
  // A leading byte order mark is dropped, as one decode of the whole drops it.
  const decoder = new TextDecoder('utf-8', { fatal: true })
  if (bytes.byteLength <= part) return decoder.decode(bytes)
  let text = ''
  for (let at = 0; at < bytes.byteLength; at += part) {
    text += decoder.decode(bytes.subarray(at, at + part), { stream: at + part < bytes.byteLength })
    slices.spend(PART_WORK)
    if (slices.due()) await slices.pause()
  }
  return text
}
