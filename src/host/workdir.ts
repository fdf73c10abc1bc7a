import fs from 'node:fs';
import path from 'node:path';
import { runDir } from '../util/paths.js';
import { randomBytes } from 'node:crypto';
import { processIdentity, sameProcessAlive } from '../util/proc.js';
import { ForkdError } from '../util/errors.js';

/** Work dirs are named forkd-<kind>-<tag>-<pid>; `owner.json` says who created them. */
export type WorkKind = 'fork' | 'parent' | 'branch';
export const WORK_PREFIXES = ['forkd-fork-', 'forkd-parent-', 'forkd-branch-'];

export interface OwnerRecord {
  kind: WorkKind;
  tag: string;
  owner: { pid: number; start?: number | undefined };
  created_at: string;
}

/** Longest path we put under a work dir: `c1000/agent.sock`. Unix socket paths are limited to 107 bytes. */
const LONGEST_SUFFIX = '/c1000/agent.sock'.length;

export function createWorkDir(kind: WorkKind, tag: string): string {
  // Unique per call (one process may run several forks); the tag is cut short to keep socket paths short.
  const dir = path.join(
    runDir(),
    `forkd-${kind}-${tag.slice(0, 16)}-${process.pid}-${randomBytes(2).toString('hex')}`,
  );
  if (Buffer.byteLength(dir) + LONGEST_SUFFIX > 107)
    throw new ForkdError(
      'bad_input',
      `the work dir ${dir} is too long for unix socket paths (limit 107 bytes)`,
      'set FORKD_RUN_DIR to a shorter directory, e.g. /tmp',
    );
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
