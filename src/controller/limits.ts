/**
 * Bounds on what a client may send the daemon. Without a token (the loopback default) any local process
 * is a client, so no request may cost the daemon more than a bounded amount of time or memory.
 */

/** JSON bodies: exec stdin and eval code are the largest fields; file content streams separately. */
export const JSON_BODY_LIMIT = 8 << 20;
/** Receiving one whole request (headers and body) may take at most this long. */
export const REQUEST_TIMEOUT_MS = 300_000;
/** A connection silent this long while receiving a request, or idle between requests, is closed. */
export const CONNECTION_TIMEOUT_MS = 120_000;

/** No API field needs more: the longest arrays are argv and extras. */
const MAX_ARRAY = 4096;
const MAX_NODES = 100_000;
const MAX_DEPTH = 32;

/**
 * Why a parsed JSON body is refused before validation, or undefined. Walks at most MAX_NODES values,
 * so a 8 MiB body of a million tiny elements is turned away in milliseconds instead of producing a
 * million validation issues.
 */
export function checkJsonShape(value: unknown): string | undefined {
  let nodes = 0;
  const stack: Array<[unknown, number]> = [[value, 0]];
  while (stack.length) {
    const [v, depth] = stack.pop()!;
    if (++nodes > MAX_NODES) return `request body has more than ${MAX_NODES} JSON values`;
    if (typeof v !== 'object' || v === null) continue;
    if (depth >= MAX_DEPTH) return `request body is nested deeper than ${MAX_DEPTH} levels`;
    if (Array.isArray(v)) {
      if (v.length > MAX_ARRAY)
        return `request body has an array of ${v.length} elements (at most ${MAX_ARRAY})`;
      for (const x of v) stack.push([x, depth + 1]);
    } else for (const x of Object.values(v)) stack.push([x, depth + 1]);
  }
  return undefined;
}
