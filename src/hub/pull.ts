import fs from 'node:fs';
import path from 'node:path';
import { snapshotsDir } from '../util/paths.js';
import type { Reporter } from '../util/report.js';
import { resolvePullTarget, type PullTarget } from './registry.js';
import { download, type TransferResult } from './transfer.js';
import { unpackSnapshot, type UnpackOptions, type UnpackResult } from './unpack.js';

export interface PullOptions extends Omit<UnpackOptions, 'file' | 'expectedKeyId'> {
  target: string;
  hub: string;
}

export interface PullResult {
  target: PullTarget;
  download: TransferResult;
  unpack: UnpackResult;
}

/**
 * Pull: resolve (URL or owner/name@version through registry.json), download next to the snapshots (same
 * filesystem, never /tmp on tmpfs), check the registry's sha256 and signer, then unpack. The download is
 * removed whatever happens.
 */
export async function pullSnapshot(opts: PullOptions, rep: Reporter): Promise<PullResult> {
  const target = await resolvePullTarget(opts.target, opts.hub);
  rep.step(`pulling ${target.name ?? target.url}`);
  fs.mkdirSync(snapshotsDir(), { recursive: true });
  const file = path.join(snapshotsDir(), `.download-${process.pid}-${Date.now()}.tar.zst`);
  try {
    const dl = await download(target.url, file, rep, {
      ...(target.sha256 ? { sha256: target.sha256 } : {}),
      ...(target.sizeBytes !== undefined ? { size: target.sizeBytes } : {}),
    });
    rep.ok(`downloaded ${(dl.bytes / 1048576).toFixed(1)} MiB`);
    if (target.sha256) rep.ok(`sha256 verified (${dl.sha256.slice(0, 8)}...)`);
    const unpack = await unpackSnapshot(
      {
        ...opts,
        file,
        ...(opts.tag ? { tag: opts.tag } : {}),
        ...(target.signer ? { expectedKeyId: target.signer } : {}),
      },
      rep,
    );
    return { target, download: dl, unpack };
  } finally {
    fs.rmSync(file, { force: true });
  }
}
