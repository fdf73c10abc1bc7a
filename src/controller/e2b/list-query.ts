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
