import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Reporter } from '../util/report.js';
import { packSnapshot, type PackOptions, type PackResult } from './pack.js';
import { upload, type TransferResult } from './transfer.js';

export interface PushResult {
  pack: PackResult;
  upload: TransferResult;
}

/** Pack to a temporary file, PUT it to `url`, and remove the temporary file whether or not that worked. */
export async function pushSnapshot(
  opts: Omit<PackOptions, 'out' | 'force'> & { url: string; tmpDir?: string },
  rep: Reporter,
): Promise<PushResult> {
  const tmp = fs.mkdtempSync(path.join(opts.tmpDir ?? os.tmpdir(), 'forkd-push-'));
  try {
    const pack = await packSnapshot(
      { ...opts, out: path.join(tmp, `${opts.tag}.forkd-snapshot.tar.zst`) },
      rep,
    );
    rep.info(
      `packed ${(pack.compressedBytes / 1048576).toFixed(1)} MiB (${pack.ratio.toFixed(1)}× compression) in ${(pack.ms / 1000).toFixed(1)}s`,
    );
    const up = await upload(pack.out, opts.url, rep);
    return { pack, upload: up };
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
