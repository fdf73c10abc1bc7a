import fs from 'node:fs';
import path from 'node:path';
import { ForkdError } from '../util/errors.js';
import { createOverlay } from '../vmm/disk.js';
import type { VolumeDrive } from '../vmm/qemu-argv.js';
import { WRITER_LOCK_SUFFIX } from '../host/records.js';
import type { LoadedSnapshot } from '../snapshot/store.js';
import { checkUnchanged, volumeSerial, type VolumeMeta, type VolumeSpec } from '../snapshot/volumes.js';

/** A snapshot's volume as its children start from it: the layer each child's own goes over. */
export interface SourceVolume {
  meta: VolumeMeta;
  lower: string;
  lowerFormat: 'raw' | 'qcow2';
}

/** What a sandbox mounts after its restore. */
export interface VolumeMount {
  serial: string;
  path: string;
  readonly: boolean;
}

/** The snapshot's volumes, each checked against the file the snapshot saw. */
export function sourceVolumes(s: LoadedSnapshot): SourceVolume[] {
  return (s.meta.volumes ?? []).map((meta) => {
    checkUnchanged(meta, s.tag);
    return meta.overlay
      ? { meta, lower: path.join(s.dir, meta.overlay), lowerFormat: 'qcow2' as const }
      : { meta, lower: meta.host_path, lowerFormat: 'raw' as const };
  });
}

/**
 * One child's volume drives. A spawn may give another file (and mode) for a guest path the snapshot
 * declared: the device set is fixed by the snapshot, and the guest knows each device's size from it,
 * so the file must be the same size. `cow` gets an overlay in the child's dir; `shared` takes the
 * file's single-writer lock (a second sandbox on it is refused until the first is gone).
 */
export async function childVolumes(
  vols: SourceVolume[],
  overrides: VolumeSpec[],
  workDir: string,
  tag: string,
  locks: string[],
): Promise<{ drives: VolumeDrive[]; mounts: VolumeMount[] }> {
  checkOverrides(vols, overrides, tag);
  const drives: VolumeDrive[] = [];
  const mounts: VolumeMount[] = [];
  for (const [i, v] of vols.entries()) {
    const o = overrides.find((x) => x.guest_path === v.meta.guest_path);
    const mode = o?.mode ?? v.meta.mode;
    const host = o?.host_path ?? v.meta.host_path;
    const serial = volumeSerial(i);
    if (mode === 'cow') {
      const overlay = path.join(workDir, `vol-${i}.qcow2`);
      await createOverlay(overlay, o ? host : v.lower, o ? 'raw' : v.lowerFormat);
      drives.push({ file: overlay, format: 'qcow2', readOnly: false, serial });
    } else {
      if (mode === 'shared') locks.push(takeWriterLock(host, workDir));
      drives.push({ file: host, format: 'raw', readOnly: mode === 'ro', serial });
    }
    mounts.push({ serial, path: v.meta.guest_path, readonly: mode === 'ro' });
  }
  return { drives, mounts };
}

/** A spawn's volumes fit the snapshot's: each names a declared guest path, with a file of its size. */
export function checkOverrides(vols: SourceVolume[], overrides: VolumeSpec[], tag: string): void {
  for (const o of overrides) {
    const v = vols.find((x) => x.meta.guest_path === o.guest_path);
    if (!v)
      throw new ForkdError(
        'bad_input',
        `snapshot '${tag}' has no volume at ${o.guest_path} (it has: ${vols.map((x) => x.meta.guest_path).join(', ') || 'none'})`,
        'a sandbox can only swap the file of a volume its snapshot declared: add --volume when making the snapshot',
      );
    const size = fs.statSync(o.host_path).size;
    if (size !== v.meta.bytes)
      throw new ForkdError(
        'bad_input',
        `volume ${o.guest_path}: ${o.host_path} is ${size} bytes, but the snapshot's is ${v.meta.bytes}`,
        'give a file of the same size (truncate -s, then resize2fs) for a snapshot volume',
      );
  }
}

/** Exclusive create; a lock whose holder's work dir is gone (it ended, or crashed and was swept) is stale. */
function takeWriterLock(file: string, workDir: string): string {
  const lock = `${file}${WRITER_LOCK_SUFFIX}`;
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(lock, workDir, { flag: 'wx', mode: 0o600 });
      return lock;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const holder = fs.readFileSync(lock, 'utf8');
      if (holder && fs.existsSync(holder))
        throw new ForkdError(
          'busy',
          `${file} is a shared volume already written by the sandbox in ${holder}`,
          'kill that sandbox first, or give this one the volume without :shared (its own copy-on-write layer)',
        );
      fs.rmSync(lock, { force: true });
    }
  }
  throw new ForkdError('busy', `cannot take the writer lock ${lock}`, 'try again');
}

/** Drop the writer locks a child held (only those still naming its own work dir). */
export function releaseWriterLocks(locks: string[], workDir: string): void {
  for (const l of locks)
    try {
      if (fs.readFileSync(l, 'utf8') === workDir) fs.rmSync(l, { force: true });
    } catch {
      /* already gone */
    }
}
