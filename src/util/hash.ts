import { createHash } from 'node:crypto';
import fs from 'node:fs';

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
