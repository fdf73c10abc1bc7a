import fs from 'node:fs';
import path from 'node:path';
import { ForkdError } from '../util/errors.js';
import { linkOrCopy } from '../util/fs.js';
import { runOk } from '../util/proc.js';
import { forkdVersion } from '../util/project.js';
import { memoryImage, resolveChain } from './assemble.js';
import { fileEntry } from './create.js';
import type { SnapshotMeta } from './metadata.js';
import { loadSnapshot, snapshotDir } from './store.js';
import { validateTag } from './tag.js';
import { stageSnapshot } from './writer.js';

/**
 * Flatten a chain head into a self-contained snapshot: the assembled memory image, the head's device
 * state, and its disk layer rebased onto the raw base (every ancestor layer folded in).
 */
export async function compactSnapshot(fromTag: string, toTag: string): Promise<SnapshotMeta> {
  const from = validateTag(fromTag);
  const to = validateTag(toTag);
  if (from === to)
    throw new ForkdError('bad_input', '--from and --to must differ', 'pick a new tag for the flat copy');
  const s = loadSnapshot(from);
  const chain = resolveChain(s);
  if (fs.existsSync(snapshotDir(to)))
    throw new ForkdError(
      'exists',
      `snapshot '${to}' already exists`,
      `pick another tag, or delete it: forkd rmi ${to}`,
    );
  const mem = await memoryImage(s, chain);
  const staged = stageSnapshot(to);
  const staging = staged.dir;
  try {
    const t0 = performance.now();
    await runOk('cp', ['--sparse=always', '--reflink=auto', mem, path.join(staging, 'memory.bin')]);
    fs.copyFileSync(path.join(s.dir, s.meta.files.vmstate.path), path.join(staging, 'vmstate'));
    linkOrCopy(path.join(s.dir, s.meta.files.base.path), path.join(staging, 'base.ext4'));
    fs.copyFileSync(path.join(s.dir, s.meta.files.disk.path), path.join(staging, 'disk.qcow2'));
    fs.chmodSync(path.join(staging, 'disk.qcow2'), 0o644);
    // The copied layer's relative backing resolves from staging too (both sit in the snapshots dir);
    // rebasing onto the raw base folds every ancestor layer into it.
    await runOk('qemu-img', ['rebase', '-q', '-f', 'qcow2', '-b', 'base.ext4', '-F', 'raw', 'disk.qcow2'], {
      cwd: staging,
    });
    fs.chmodSync(path.join(staging, 'memory.bin'), 0o644);
    const memEntry = await fileEntry(staging, 'memory.bin');
    const meta: SnapshotMeta = {
      ...s.meta,
      tag: to,
      created_at: new Date().toISOString(),
      forkd_version: forkdVersion(),
      files: {
        vmstate: await fileEntry(staging, 'vmstate'),
        memory: {
          ...memEntry,
          allocated: fs.statSync(path.join(staging, 'memory.bin')).blocks * 512,
          kind: 'full',
          logical_size: memEntry.size,
        },
        disk: { ...(await fileEntry(staging, 'disk.qcow2')), backing: 'base.ext4' },
        base: {
          ...s.meta.files.base,
          mtime_ms: Math.trunc(fs.statSync(path.join(staging, 'base.ext4')).mtimeMs),
        },
      },
      origin: { kind: 'compact', sandbox_id: null, source_tag: from, mode: null, pause_ms: null },
      lineage: { parent_tag: null, parent_content_hash: null, depth: 0 },
      timings: { compact_ms: Math.round(performance.now() - t0) },
    };
    staged.commit(meta);
    return meta;
  } catch (e) {
    staged.abort();
    throw e;
  }
}
