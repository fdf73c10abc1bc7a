import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { cacheDir } from '../../util/paths.js';
import { ForkdError } from '../../util/errors.js';
import { hashingStream } from '../../util/hash.js';

/**
 * Content-addressed blob cache (`~/.cache/forkd/oci/blobs/sha256/<hex>`). A blob enters only through
 * `putBlob`, which checks its digest while writing, so a file here is always what its name says.
 */
export function blobsDir(): string {
  return path.join(cacheDir(), 'oci', 'blobs', 'sha256');
}

export function blobPath(digest: string): string {
  return path.join(blobsDir(), digest.slice('sha256:'.length));
}

export function haveBlob(digest: string): string | undefined {
  const p = blobPath(digest);
  return fs.existsSync(p) ? p : undefined;
}

export class DigestMismatch extends ForkdError {
  constructor(what: string, want: string, got: string) {
    super(
      'bad_input',
      `${what}: digest mismatch (expected ${want}, got sha256:${got}); nothing was kept`,
      'the source changed or is corrupt or hostile: check it, then try again',
    );
  }
}

/** Stream `src` into the store as `digest`; on a mismatch nothing is kept. Returns the blob's path. */
export async function putBlob(
  src: Readable | AsyncIterable<Uint8Array>,
  digest: string,
  what: string,
  onBytes?: (n: number) => void,
): Promise<string> {
  const final = blobPath(digest);
  fs.mkdirSync(blobsDir(), { recursive: true });
  const tmp = `${final}.part-${process.pid}-${Math.random().toString(36).slice(2)}`;
  const h = hashingStream((_, total) => onBytes?.(total));
  try {
    await pipeline(Readable.from(src), h.stream, fs.createWriteStream(tmp, { mode: 0o444 }));
    const got = h.digest();
    if (`sha256:${got}` !== digest) throw new DigestMismatch(what, digest, got);
    fs.renameSync(tmp, final);
    return final;
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}
