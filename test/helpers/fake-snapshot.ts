import fs from 'node:fs';
import path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { snapshotsDir } from '../../src/util/paths.js';
import {
  contentHash,
  SNAPSHOT_FORMAT,
  SNAPSHOT_VERSION,
  type SnapshotMeta,
} from '../../src/snapshot/metadata.js';
import { loadSnapshot } from '../../src/snapshot/store.js';

/**
 * A small snapshot directory with the real layout and valid metadata, but no VM behind it: for tests of
 * what handles snapshots as files (packs, lineage) without booting anything. Memory and base are sparse
 * with a little random data, like the real thing.
 */
export function fakeSnapshot(tag: string, opts: { parent?: string; baseFrom?: string } = {}): SnapshotMeta {
  const dir = path.join(snapshotsDir(), tag);
  fs.mkdirSync(dir, { recursive: true });
  const write = (name: string, data: Buffer, logical?: number) => {
    const p = path.join(dir, name);
    const fd = fs.openSync(p, 'w');
    fs.writeSync(fd, data, 0, data.length, 0);
    if (logical) {
      fs.writeSync(fd, randomBytes(4096), 0, 4096, logical / 2);
      fs.ftruncateSync(fd, logical);
    }
    fs.closeSync(fd);
    fs.chmodSync(p, 0o444);
  };
  const memName = opts.parent ? 'memory.diff' : 'memory.bin';
  write('vmstate', randomBytes(8192));
  write(memName, randomBytes(64 << 10), opts.parent ? undefined : 8 << 20);
  write('disk.qcow2', randomBytes(16 << 10));
  if (opts.baseFrom)
    fs.linkSync(path.join(snapshotsDir(), opts.baseFrom, 'base.ext4'), path.join(dir, 'base.ext4'));
  else write('base.ext4', randomBytes(32 << 10), 16 << 20);
  const entry = (name: string) => {
    const p = path.join(dir, name);
    const st = fs.statSync(p);
    return {
      path: name,
      size: st.size,
      sha256: createHash('sha256').update(fs.readFileSync(p)).digest('hex'),
      mtime_ms: Math.trunc(st.mtimeMs),
    };
  };
  const parent = opts.parent ? loadSnapshot(opts.parent).meta : undefined;
  const meta: SnapshotMeta = {
    format: SNAPSHOT_FORMAT,
    version: SNAPSHOT_VERSION,
    tag,
    created_at: new Date().toISOString(),
    forkd_version: '0.0.0-test',
    vmm: { kind: 'qemu', version: '7.2.22' },
    accelerator: 'tcg',
    accelerator_reason: 'test',
    machine: { accel: 'tcg', vcpus: 1, mem_mib: 8, net: 'none' },
    guest: {
      recipe: 'test',
      image_key: null,
      kernel_release: 'test',
      python: null,
      numpy: null,
      node: null,
      warmup: null,
      warmup_eval: null,
    },
    files: {
      vmstate: entry('vmstate'),
      memory: {
        ...entry(memName),
        allocated: fs.statSync(path.join(dir, memName)).blocks * 512,
        kind: opts.parent ? 'diff' : 'full',
        logical_size: 8 << 20,
      },
      disk: { ...entry('disk.qcow2'), backing: opts.parent ? `../${opts.parent}/disk.qcow2` : 'base.ext4' },
      base: entry('base.ext4'),
    },
    origin: {
      kind: 'boot',
      sandbox_id: null,
      source_tag: null,
      mode: opts.parent ? 'diff' : null,
      pause_ms: null,
    },
    lineage: {
      parent_tag: opts.parent ?? null,
      parent_content_hash: parent ? contentHash(parent) : null,
      depth: parent ? parent.lineage.depth + 1 : 0,
    },
    timings: {},
  };
  fs.writeFileSync(path.join(dir, 'snapshot.json'), JSON.stringify(meta, null, 2) + '\n');
  return meta;
}
