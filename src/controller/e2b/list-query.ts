import { ForkdError } from '../../util/errors.js';

/**
 * The `metadata` filter of E2B's list call. The SDK encodes it twice over: `k=v` pairs joined with `&`,
 * keys and values passed through encodeURIComponent, and that whole string encoded again as one query
 * value. The query parser undid the outer layer; this undoes the form encoding and then each part's.
 */
export function parseMetadataQuery(value: string): [string, string][] {
  const out: [string, string][] = [];
  for (const [k, v] of new URLSearchParams(value)) out.push([decodePart(k), decodePart(v)]);
  return out;
}

function decodePart(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s; // a literal '%' that was never an escape
  }
}

/**
 * One page of a listing: `nextToken` is the position of the page (opaque to the SDK, which only echoes
 * it), `next` the token of the page after, if any.
 */
export function pageOf<T>(
  all: T[],
  q: { limit?: number | undefined; nextToken?: string | undefined },
): { page: T[]; next: string | undefined } {
  const start = q.nextToken ? Number.parseInt(q.nextToken, 10) : 0;
  if (!Number.isInteger(start) || start < 0)
    throw new ForkdError('bad_input', `nextToken '${q.nextToken}' is not one this server gave`);
  const end = q.limit ? start + q.limit : all.length;
  return { page: all.slice(start, end), next: end < all.length ? String(end) : undefined };
}
