import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { Transform } from 'node:stream';

/** Streaming sha256 of a file (constant memory). */
export async function sha256File(file: string, onProgress?: (done: number) => void): Promise<string> {
  const h = createHash('sha256');
  let done = 0;
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 4 << 20 })) {
    h.update(chunk as Buffer);
    done += (chunk as Buffer).length;
    onProgress?.(done);
  }
  return h.digest('hex');
}

/** A pass-through stream that sha256-hashes and counts what flows through it. */
export function hashingStream(onBytes?: (chunkBytes: number, totalBytes: number) => void): {
  stream: Transform;
  digest: () => string;
  bytes: () => number;
} {
  const h = createHash('sha256');
  let n = 0;
  const stream = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      h.update(chunk);
      n += chunk.length;
      onBytes?.(chunk.length, n);
      cb(null, chunk);
    },
  });
  return { stream, digest: () => h.digest('hex'), bytes: () => n };
}
