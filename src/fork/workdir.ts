import fs from 'node:fs';
import path from 'node:path';
import { runDir } from '../util/paths.js';
import { processIdentity, sameProcessAlive } from '../util/proc.js';

/** Work dirs are named forkd-<kind>-<tag>-<pid>; `owner.json` says who created them. */
export type WorkKind = 'fork' | 'parent';
export const WORK_PREFIXES = ['forkd-fork-', 'forkd-parent-'];

export interface OwnerRecord {
  kind: WorkKind;
  tag: string;
  owner: { pid: number; start?: number | undefined };
  created_at: string;
}

export function createWorkDir(kind: WorkKind, tag: string): string {
  const dir = path.join(runDir(), `forkd-${kind}-${tag}-${process.pid}`);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeOwner(dir, kind, tag);
  return dir;
}

export function writeOwner(dir: string, kind: WorkKind, tag: string): void {
  const rec: OwnerRecord = {
    kind,
    tag,
    owner: processIdentity(process.pid),
    created_at: new Date().toISOString(),
  };
  fs.writeFileSync(path.join(dir, 'owner.json'), JSON.stringify(rec, null, 2));
}

export function readOwner(dir: string): OwnerRecord | undefined {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, 'owner.json'), 'utf8')) as OwnerRecord;
  } catch {
    return undefined;
  }
}

/** A work dir is live while its owning forkd process runs. */
export function ownerAlive(rec: OwnerRecord | undefined): boolean {
  return rec !== undefined && sameProcessAlive(rec.owner);
}
