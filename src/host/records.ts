import fs from 'node:fs';
import path from 'node:path';

/**
 * The persisted record of what a VM holds on the host beyond its work dir (tap, network namespace,
 * cgroup), written next to it as child.json the moment each resource exists. Whoever finds the dir
 * later (destroy, the daemon after a crash, `forkd cleanup`) frees exactly what the record names.
 */
export const CHILD_RECORD = 'child.json';

/** What a child (or a branch's normalizing VM) holds on the host. Persisted as child.json; the daemon's sandbox record carries it too. */
export interface ChildResources {
  id: string;
  work_dir: string;
  tap: string | null;
  netns: string | null;
  net_index: number | null;
  cgroup: string | null;
  /** Single-writer locks it holds on `:shared` volume files (engine/volumes.ts). */
  volume_locks?: string[];
}

/** A `:shared` volume's single-writer lock is this file next to it, holding the writer's work dir. */
export const WRITER_LOCK_SUFFIX = '.forkd-writer';

export function writeChildRecord(res: ChildResources): void {
  const tmp = path.join(res.work_dir, `${CHILD_RECORD}.tmp`);
  fs.writeFileSync(tmp, JSON.stringify({ ...res, owner_pid: process.pid }, null, 2));
  fs.renameSync(tmp, path.join(res.work_dir, CHILD_RECORD));
}

export function readChildRecord(dir: string): ChildResources | undefined {
  try {
    const r = JSON.parse(fs.readFileSync(path.join(dir, CHILD_RECORD), 'utf8')) as Partial<ChildResources>;
    if (typeof r.id !== 'string' || typeof r.work_dir !== 'string') return undefined;
    return {
      id: r.id,
      work_dir: r.work_dir,
      tap: typeof r.tap === 'string' ? r.tap : null,
      netns: typeof r.netns === 'string' ? r.netns : null,
      net_index: typeof r.net_index === 'number' ? r.net_index : null,
      cgroup: typeof r.cgroup === 'string' ? r.cgroup : null,
      ...(Array.isArray(r.volume_locks)
        ? {
            volume_locks: r.volume_locks.filter(
              (l): l is string => typeof l === 'string' && l.endsWith(WRITER_LOCK_SUFFIX),
            ),
          }
        : {}),
    };
  } catch {
    return undefined;
  }
}
