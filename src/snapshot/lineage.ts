import fs from 'node:fs';
import path from 'node:path';
import { ForkdError } from '../util/errors.js';
import { diskUsage } from '../util/fs.js';
import { listSnapshots, loadSnapshot, removeSnapshot, snapshotDir, type LoadedSnapshot } from './store.js';
import { dropAssembled, MAX_CHAIN_DEPTH } from './assemble.js';

/** Tags whose data parent is `tag` (direct children in the diff chain). */
export function dependentsOf(tag: string): string[] {
  return listSnapshots()
    .filter((l) => l.meta?.lineage.parent_tag === tag)
    .map((l) => l.tag)
    .sort();
}

/** Ancestors root → direct parent (names only; missing links are named as they are recorded). */
export function ancestorsOf(s: LoadedSnapshot): string[] {
  const out: string[] = [];
  let cur = s.meta.lineage.parent_tag;
  while (cur && out.length <= MAX_CHAIN_DEPTH && !out.includes(cur)) {
    out.unshift(cur);
    try {
      cur = loadSnapshot(cur).meta.lineage.parent_tag;
    } catch {
      break;
    }
  }
  return out;
}

export interface SnapshotDetail {
  tag: string;
  dir: string;
  created_at: string;
  created_at_unix: number;
  accelerator: string;
  memory_kind: 'full' | 'diff';
  memory_logical_bytes: number;
  memory_physical_bytes: number;
  vmstate_bytes: number;
  disk_bytes: number;
  /** everything in the snapshot dir, the root disk included */
  on_disk_bytes: number;
  /** what this snapshot alone costs: its dir without a root disk it shares (hard link) with others */
  own_bytes: number;
  /** the raw root disk (logical size); shared between snapshots made on the same image */
  base_bytes: number;
  parent_tag: string | null;
  parent_content_hash: string | null;
  chain_depth: number;
  ancestors: string[];
  dependents: string[];
  origin: LoadedSnapshot['meta']['origin'];
}

export function snapshotDetail(tag: string): SnapshotDetail {
  const s = loadSnapshot(tag);
  const m = s.meta;
  const memPath = path.join(s.dir, m.files.memory.path);
  return {
    tag,
    dir: s.dir,
    created_at: m.created_at,
    created_at_unix: Math.floor(Date.parse(m.created_at) / 1000),
    accelerator: m.accelerator,
    memory_kind: m.files.memory.kind,
    memory_logical_bytes: m.files.memory.logical_size ?? m.machine.mem_mib * 1048576,
    memory_physical_bytes: statBlocks(memPath),
    vmstate_bytes: m.files.vmstate.size,
    disk_bytes: statBlocks(path.join(s.dir, m.files.disk.path)),
    on_disk_bytes: diskUsage(s.dir),
    own_bytes: ownBytes(s.dir),
    base_bytes: m.files.base.size,
    parent_tag: m.lineage.parent_tag,
    parent_content_hash: m.lineage.parent_content_hash,
    chain_depth: m.lineage.depth,
    ancestors: ancestorsOf(s),
    dependents: dependentsOf(tag),
    origin: m.origin,
  };
}

/** Allocated bytes of a snapshot dir, leaving out a root disk that is hard-linked elsewhere too. */
export function ownBytes(dir: string): number {
  let total = 0;
  for (const name of fs.readdirSync(dir)) {
    const st = fs.lstatSync(path.join(dir, name));
    if (name === 'base.ext4' && st.nlink > 1) continue;
    total += st.isDirectory() ? diskUsage(path.join(dir, name)) : st.blocks * 512;
  }
  return total;
}

function statBlocks(p: string): number {
  try {
    return fs.statSync(p).blocks * 512;
  } catch {
    return 0;
  }
}

/**
 * Delete a snapshot. With dependents: refuse (naming them), or `cascade` (the whole subtree, leaves
 * first), or `force` (orphan them). Every target is checked before anything is removed, so an error
 * leaves nothing half-deleted.
 */
export function deleteSnapshot(tag: string, opts: { cascade?: boolean; force?: boolean } = {}): string[] {
  if (opts.cascade && opts.force)
    throw new ForkdError(
      'bad_input',
      '--cascade and --force cannot be combined',
      'pick one: --cascade deletes dependents, --force orphans them',
    );
  if (!fs.existsSync(snapshotDir(tag)))
    throw new ForkdError('not_found', `no snapshot tagged '${tag}'`, "list tags with 'forkd images'");
  const deps = dependentsOf(tag);
  let order = [tag];
  if (deps.length && !opts.force) {
    if (!opts.cascade)
      throw new ForkdError(
        'conflict',
        `snapshot '${tag}' has dependents: ${deps.join(', ')}; deleting it would orphan them`,
        `delete them too with --cascade (?cascade=true), or orphan them with --force (?force=true)`,
      );
    order = subtreeLeavesFirst(tag);
  }
  for (const t of order) {
    removeSnapshot(t);
    dropAssembled(t);
  }
  return order;
}

function subtreeLeavesFirst(root: string): string[] {
  const out: string[] = [];
  const visit = (t: string, depth: number) => {
    if (depth > MAX_CHAIN_DEPTH * 4) return;
    for (const d of dependentsOf(t)) visit(d, depth + 1);
    out.push(t);
  };
  visit(root, 0);
  return out;
}
