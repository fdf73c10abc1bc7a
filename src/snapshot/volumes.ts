import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { ForkdError } from '../util/errors.js';

/**
 * Volumes: ext4 image files on the host, attached to a guest as block devices and mounted by the agent.
 * A snapshot declares them; every sandbox mounts them after its restore (the parent mounts them for its
 * warm-up and unmounts them before the snapshot, so no child starts with another's cached view).
 *  - `ro`: the file itself, read-only, shared by every child.
 *  - `cow` (the default for writable): each child writes its own copy-on-write layer over the snapshot's;
 *    a child's writes are invisible to its siblings and never reach the file.
 *  - `shared`: the file itself, read-write, for a single writer: a second sandbox using it is refused.
 */
export type VolumeMode = 'ro' | 'cow' | 'shared';
export const MAX_VOLUMES = 24;

export interface VolumeSpec {
  host_path: string;
  guest_path: string;
  mode: VolumeMode;
}

export const VolumeMetaSchema = z.object({
  guest_path: z.string(),
  host_path: z.string(),
  mode: z.enum(['ro', 'cow', 'shared']),
  /** The file as it was when the snapshot was made: a `ro`/`cow` file that changed is refused. */
  bytes: z.number().int().nonnegative(),
  mtime_ms: z.number(),
  /** `cow`: the snapshot's own layer over the file (a name in the snapshot dir). */
  overlay: z.string().nullable(),
});
export type VolumeMeta = z.infer<typeof VolumeMetaSchema>;

/** What the guest sees: the block device's serial, by which the agent finds it. */
export const volumeSerial = (i: number) => `forkd-vol${i}`;

const bad = (msg: string, hint: string) => new ForkdError('bad_input', msg, hint);
const FORM = 'use --volume HOST_FILE:/GUEST/PATH[:ro|:shared]';

/** Guest mount points forkd or the kernel own. */
const RESERVED = ['/proc', '/sys', '/dev', '/run', '/opt/forkd', '/opt/forkd-runtime', '/tmp'];

/** `HOST:GUEST[:ro|:shared|:cow]`, as the CLI and the REST API take it. */
export function parseVolume(text: string): VolumeSpec {
  const parts = text.split(':');
  if (parts.length < 2 || parts.length > 3 || !parts[0] || !parts[1])
    throw bad(`'${text}' is not a volume (host paths with ':' are not supported)`, FORM);
  const mode = parts[2] ?? 'cow';
  if (mode !== 'ro' && mode !== 'shared' && mode !== 'cow')
    throw bad(
      `volume '${text}': '${mode}' is not a mode`,
      'the modes are ro, shared (single writer) or none (copy-on-write per child)',
    );
  return { host_path: parts[0], guest_path: parts[1], mode };
}

/** An ext4 image has its superblock magic 0xEF53 at byte 1080. */
function isExt4(file: string): boolean {
  const fd = fs.openSync(file, 'r');
  try {
    const b = Buffer.alloc(2);
    return fs.readSync(fd, b, 0, 2, 1080) === 2 && b.readUInt16LE(0) === 0xef53;
  } finally {
    fs.closeSync(fd);
  }
}

export function checkGuestPath(p: string, what: string): string {
  if (!p.startsWith('/') || p.length > 1024 || p.includes('\0'))
    throw bad(`${what}: guest path '${p}' is not absolute`, FORM);
  if (
    p.split('/').some((c) => c === '..' || c === '.') ||
    path.posix.normalize(p) !== p ||
    p === '/' ||
    p.endsWith('/')
  )
    throw bad(
      `${what}: guest path '${p}' is not a plain absolute path`,
      'e.g. /data (no "..", ".", trailing slash, or /)',
    );
  for (const r of RESERVED)
    if (p === r || p.startsWith(`${r}/`))
      throw bad(`${what}: ${r} belongs to the guest system`, 'mount it elsewhere, e.g. /data');
  return p;
}

/** Check volumes before anything is started: every problem named, with its fix. */
export function validateVolumes(specs: VolumeSpec[]): VolumeSpec[] {
  if (specs.length > MAX_VOLUMES)
    throw bad(`${specs.length} volumes given; at most ${MAX_VOLUMES}`, 'put data in fewer image files');
  const seen = new Set<string>();
  return specs.map((v) => {
    const what = `volume ${v.host_path}:${v.guest_path}`;
    const host = path.resolve(v.host_path);
    const st = fs.statSync(host, { throwIfNoEntry: false });
    if (!st)
      throw new ForkdError(
        'not_found',
        `${what}: ${host} does not exist`,
        `make one: mkfs.ext4 -q ${host} 1G`,
      );
    if (st.isDirectory())
      throw bad(
        `${what}: ${host} is a directory; volumes are ext4 image files`,
        `make one from it: mkfs.ext4 -d ${host} IMAGE 1G`,
      );
    if (!st.isFile()) throw bad(`${what}: ${host} is not a regular file`, 'pass an ext4 image file');
    if (!isExt4(host)) throw bad(`${what}: ${host} is not an ext4 image`, `format it: mkfs.ext4 -q ${host}`);
    checkGuestPath(v.guest_path, what);
    if (seen.has(v.guest_path))
      throw bad(`${what}: ${v.guest_path} is given twice`, 'one volume per guest path');
    seen.add(v.guest_path);
    return { ...v, host_path: host };
  });
}

/** A `ro`/`cow` volume's file must be what the snapshot saw: children read it as their lower layer. */
export function checkUnchanged(v: VolumeMeta, tag: string): void {
  if (v.mode === 'shared') return;
  const st = fs.statSync(v.host_path, { throwIfNoEntry: false });
  if (!st)
    throw new ForkdError(
      'not_found',
      `volume ${v.guest_path} of '${tag}': ${v.host_path} is gone`,
      'put the file back, or make the snapshot again',
    );
  if (st.size !== v.bytes || Math.abs(st.mtimeMs - v.mtime_ms) > 1)
    throw new ForkdError(
      'incompatible_snapshot',
      `volume ${v.guest_path} of '${tag}': ${v.host_path} changed since the snapshot (its children read it as their base)`,
      'restore the file, or make the snapshot again; use :shared for a file that changes',
    );
}
