import { STARTED } from '../protocol/resync.js';

/**
 * Watches a byte stream from the guest for the STARTED announcement of a restarted agent or Python
 * worker (protocol/resync.ts), including one split across two chunks, without copying the chunks.
 */
export class StartedWatch {
  private tail = Buffer.alloc(0);

  /** True when this chunk (or its seam with the previous one) holds the announcement. */
  seen(d: Buffer): boolean {
    const keep = STARTED.length - 1;
    const seam = Buffer.concat([this.tail, d.subarray(0, keep)]);
    const found = seam.indexOf(STARTED) >= 0 || d.indexOf(STARTED) >= 0;
    this.tail =
      d.length >= keep
        ? Buffer.from(d.subarray(d.length - keep))
        : Buffer.from(seam.subarray(Math.max(0, seam.length - keep)));
    return found;
  }
}
