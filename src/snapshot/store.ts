import fs from 'node:fs';
import path from 'node:path';
import { snapshotsDir } from '../util/paths.js';
import { ForkdError } from '../util/errors.js';
import { diskUsage, listDir } from '../util/fs.js';
import { SnapshotMeta, SNAPSHOT_FORMAT, SNAPSHOT_VERSION, type SnapshotFile } from './metadata.js';
import { validateTag } from './tag.js';
import type { MachineConfig } from '../vmm/types.js';

export function snapshotDir(tag: string): string {
  return path.join(snapshotsDir(), validateTag(tag));
}

export function snapshotExists(tag: string): boolean {
  return fs.existsSync(path.join(snapshotDir(tag), 'snapshot.json'));
}

export interface LoadedSnapshot {
  tag: string;
  dir: string;
  meta: SnapshotMeta;
}

/** Read and validate a snapshot's metadata. Named errors for unknown tags and unreadable formats. */
/** The machine a snapshot's children (and its branches) must be started as: its parent's device set. */
export function machineOf(s: LoadedSnapshot): MachineConfig {
  const m = s.meta.machine;
  return {
    accel: m.accel,
    vcpus: m.vcpus,
    memMib: m.mem_mib,
    net: m.net,
    ...(m.firmware ? { firmware: path.join(s.dir, m.firmware) } : {}),
    ...(m.python_port ? { pythonPort: true } : {}),
    ...(m.cpu ? { cpu: m.cpu } : {}),
    ...(s.meta.volumes?.length ? { volumes: s.meta.volumes.length } : {}),
  };
}

export function loadSnapshot(tag: string): LoadedSnapshot {
  const dir = snapshotDir(tag);
  const file = path.join(dir, 'snapshot.json');
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT')
      throw new ForkdError(
        'not_found',
        `no snapshot tagged '${tag}' in ${snapshotsDir()}`,
        "list tags with 'forkd images'; create one with 'forkd snapshot --tag NAME'",
      );
    throw new ForkdError(
      'corrupt_snapshot',
      `${file} is not valid JSON`,
      `remove it with 'forkd rmi ${tag}' and re-create it`,
    );
  }
  const r = raw as { format?: unknown; version?: unknown };
  if (r.format !== SNAPSHOT_FORMAT || r.version !== SNAPSHOT_VERSION)
    throw new ForkdError(
      'incompatible_snapshot',
      `snapshot '${tag}' has format ${String(r.format)} v${String(r.version)}; this forkd reads ${SNAPSHOT_FORMAT} v${SNAPSHOT_VERSION}`,
      `re-create it with this forkd ('forkd rmi ${tag}' then 'forkd snapshot --tag ${tag}')`,
    );
  const parsed = SnapshotMeta.safeParse(raw);
  if (!parsed.success)
    throw new ForkdError(
      'corrupt_snapshot',
      `snapshot '${tag}' metadata is invalid: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`,
      `remove it with 'forkd rmi ${tag}'`,
    );
  return { tag, dir, meta: parsed.data };
}

export interface SnapshotListing {
  tag: string;
  dir: string;
  meta?: SnapshotMeta;
  error?: string;
  diskBytes: number;
}

/** All snapshots, newest first. Broken entries are listed with their error rather than hidden. */
export function listSnapshots(): SnapshotListing[] {
  const out: SnapshotListing[] = [];
  for (const name of listDir(snapshotsDir())) {
    if (name.startsWith('.')) continue; // staging / deleting dirs
    const dir = path.join(snapshotsDir(), name);
    if (!fs.statSync(dir).isDirectory()) continue;
    try {
      const s = loadSnapshot(name);
      out.push({ tag: name, dir, meta: s.meta, diskBytes: diskUsage(dir) });
    } catch (e) {
      out.push({ tag: name, dir, error: (e as Error).message, diskBytes: diskUsage(dir) });
    }
  }
  const time = (l: SnapshotListing) => (l.meta ? Date.parse(l.meta.created_at) : 0);
  return out.sort((a, b) => time(b) - time(a));
}

/** Remove a snapshot: rename out of the namespace first (atomic), then delete. */
export function removeSnapshot(tag: string): void {
  const dir = snapshotDir(tag);
  if (!fs.existsSync(dir))
    throw new ForkdError('not_found', `no snapshot tagged '${tag}'`, "list tags with 'forkd images'");
  const trash = path.join(snapshotsDir(), `.deleting-${tag}-${process.pid}-${Date.now()}`);
  fs.renameSync(dir, trash);
  fs.rmSync(trash, { recursive: true, force: true });
}

function recreateHint(s: LoadedSnapshot): string {
  const parent = s.meta.lineage.parent_tag;
  return parent
    ? `re-create the link: forkd rmi --cascade ${s.tag} && forkd snapshot-diff --from ${parent} --tag ${s.tag} --exec ..., or unpack/pull it again`
    : `re-create it: forkd rmi ${s.tag} && forkd snapshot --tag ${s.tag}, or unpack/pull it again`;
}

/**
 * Cheap integrity check before a fork: every file still has the size and mtime it had when saved. A
 * write to memory.bin would silently change every child (they map it MAP_PRIVATE), so refuse instead.
 */
export function checkIntegrity(s: LoadedSnapshot): void {
  const files: Array<[string, SnapshotFile]> = Object.entries(s.meta.files);
  for (const [name, f] of files) {
    const p = path.join(s.dir, f.path);
    let st: fs.Stats;
    try {
      st = fs.statSync(p);
    } catch {
      throw new ForkdError(
        'corrupt_snapshot',
        `snapshot '${s.tag}' is missing its ${name} file (${p})`,
        recreateHint(s),
      );
    }
    if (st.size !== f.size || Math.trunc(st.mtimeMs) !== f.mtime_ms)
      throw new ForkdError(
        'corrupt_snapshot',
        `snapshot '${s.tag}': ${f.path} was modified after the snapshot was saved (size ${st.size} vs ${f.size}, mtime changed); children would see corrupted memory or disk`,
        recreateHint(s),
      );
  }
}
