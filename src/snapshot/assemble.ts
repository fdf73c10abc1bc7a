import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { ForkdError } from '../util/errors.js';
import { runOk } from '../util/proc.js';
import { snapshotsDir } from '../util/paths.js';
import { contentHash } from './metadata.js';
import { checkIntegrity, loadSnapshot, type LoadedSnapshot } from './store.js';
import { applyDiff } from './memdiff.js';
import { createOverlay } from '../vmm/disk.js';

/** Chains deeper than this are refused (a loop in parent_tag, or a runaway chain). */
export const MAX_CHAIN_DEPTH = 32;

/** Where assembled memory images of diff snapshots are cached (one per link content). */
export function assembledDir(): string {
  return path.join(snapshotsDir(), '.assembled');
}

/**
 * The chain from the root snapshot to `s` (inclusive). Every link is checked: it exists, its files
 * are unmodified, and it is the exact parent content its child pinned.
 */
export function resolveChain(s: LoadedSnapshot): LoadedSnapshot[] {
  const chain = [s];
  let cur = s;
  const seen = new Set([s.tag]);
  while (cur.meta.lineage.parent_tag) {
    const ptag = cur.meta.lineage.parent_tag;
    if (seen.has(ptag) || chain.length > MAX_CHAIN_DEPTH)
      throw new ForkdError(
        'corrupt_snapshot',
        `snapshot '${s.tag}' has a parent loop or a chain deeper than ${MAX_CHAIN_DEPTH}`,
      );
    seen.add(ptag);
    let parent: LoadedSnapshot;
    try {
      parent = loadSnapshot(ptag);
    } catch (e) {
      throw new ForkdError(
        'corrupt_snapshot',
        `snapshot '${cur.tag}' needs its parent '${ptag}', which cannot be loaded: ${(e as Error).message}`,
        `re-create '${cur.tag}', or restore '${ptag}' (forkd pull / unpack)`,
      );
    }
    const have = contentHash(parent.meta);
    if (cur.meta.lineage.parent_content_hash !== have)
      throw new ForkdError(
        'corrupt_snapshot',
        `snapshot '${cur.tag}' was made on parent '${ptag}' with content ${short(cur.meta.lineage.parent_content_hash)}, but '${ptag}' now has content ${short(have)} (it was re-created)`,
        `re-create '${cur.tag}' from the current '${ptag}', or delete it: forkd rmi ${cur.tag}`,
      );
    chain.unshift(parent);
    cur = parent;
  }
  for (const link of chain) checkIntegrity(link);
  return chain;
}

function short(h: string | null): string {
  return h ? h.slice(0, 12) : '(none)';
}

/**
 * A cache entry: `out` as is when present; otherwise `build` writes a temporary file, which becomes
 * read-only and is renamed into place, so a half-built entry is never seen under its name.
 */
async function cachedFile(
  out: string,
  build: (tmp: string) => Promise<void>,
  dirMode = 0o755,
): Promise<string> {
  if (fs.existsSync(out)) return out;
  fs.mkdirSync(path.dirname(out), { recursive: true, mode: dirMode });
  const tmp = `${out}.tmp-${process.pid}-${Date.now()}`;
  try {
    await build(tmp);
    fs.chmodSync(tmp, 0o444);
    fs.renameSync(tmp, out);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  return out;
}

function cacheKey(parts: string[], length = 24): string {
  return createHash('sha256').update(parts.join(':')).digest('hex').slice(0, length);
}

/**
 * The memory file children of `s` map. A full snapshot maps its own memory.bin. A diff snapshot maps
 * its parent's image plus its pages, assembled once and cached under a name derived from every link's
 * content, so a changed link never reuses a stale image and spawns do not re-hash or re-copy.
 * `chain` is `resolveChain(s)` when the caller has it already.
 */
export async function memoryImage(s: LoadedSnapshot, chain?: LoadedSnapshot[]): Promise<string> {
  if (s.meta.files.memory.kind === 'full') return path.join(s.dir, s.meta.files.memory.path);
  const links = chain ?? resolveChain(s);
  const out = path.join(
    assembledDir(),
    `${s.tag}-${cacheKey(links.map((l) => l.meta.files.memory.sha256))}.mem`,
  );
  return cachedFile(out, async (tmp) => {
    const parent = links.slice(0, -1);
    const base = await memoryImage(parent[parent.length - 1]!, parent);
    // Sparse copy (and a reflink where the filesystem offers one), then the link's own pages on top.
    await runOk('cp', ['--sparse=always', '--reflink=auto', base, tmp]);
    fs.chmodSync(tmp, 0o644);
    applyDiff(path.join(s.dir, s.meta.files.memory.path), tmp);
  });
}

/**
 * The disk layer children of `s` stack their overlay on. A flat snapshot's own layer; for a chain link,
 * its layer with every ancestor layer folded in (rebased onto the raw root disk), made once per chain
 * content and cached, so a child of a depth-3 link opens the same two-file chain as a child of a flat
 * snapshot instead of one qcow2 per link.
 */
export async function diskImage(s: LoadedSnapshot, chain?: LoadedSnapshot[]): Promise<string> {
  const own = path.join(s.dir, s.meta.files.disk.path);
  if (!s.meta.lineage.parent_tag) return own;
  const links = chain ?? resolveChain(s);
  // s.dir is part of the key: the cached layer names its base by absolute path.
  const key = cacheKey([...links.map((l) => l.meta.files.disk.sha256), s.dir]);
  return cachedFile(path.join(assembledDir(), `${s.tag}-${key}.qcow2`), async (tmp) => {
    fs.copyFileSync(own, tmp);
    fs.chmodSync(tmp, 0o644);
    // The copy's relative backing (../<parent>/disk.qcow2) resolves from the cache dir too: both sit in
    // the snapshots dir. Rebasing onto the raw base copies in whatever the ancestor layers hold.
    const base = path.join(s.dir, s.meta.files.base.path);
    await runOk('qemu-img', ['rebase', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', tmp]);
  });
}

/**
 * An empty qcow2 overlay over `disk` (the snapshot's disk image, by absolute path), made once per disk
 * content and cached. Children copy it (a file copy) instead of running qemu-img each (a process).
 */
export async function overlayTemplate(s: LoadedSnapshot, disk: string): Promise<string> {
  const key = cacheKey([disk, s.meta.files.disk.sha256, String(fs.statSync(disk).mtimeMs)]);
  return cachedFile(path.join(assembledDir(), `${s.tag}-${key}.overlay.qcow2`), (tmp) =>
    createOverlay(tmp, disk, 'qcow2'),
  );
}

/** tmpfs dir for memory images that running sandboxes map (see residentImage). */
export function residentDir(): string {
  return process.env.FORKD_SHM_DIR || '/dev/shm/forkd';
}

/**
 * A copy of a snapshot's memory image on tmpfs, made once per snapshot content. Children mapping a
 * tmpfs file MAP_PRIVATE can be branched live: QEMU's background snapshot needs userfaultfd
 * write-protection, which the kernel offers for anonymous and shmem memory but not for private
 * mappings of files on disk filesystems. The pages are shared by every child either way.
 */
export async function residentImage(s: LoadedSnapshot, chain?: LoadedSnapshot[]): Promise<string> {
  const src = await memoryImage(s, chain);
  const out = path.join(residentDir(), `${s.tag}-${cacheKey([src, s.meta.files.memory.sha256], 16)}.mem`);
  return cachedFile(out, (tmp) => runOk('cp', ['--sparse=always', src, tmp]).then(() => {}), 0o700);
}

/** Drop cached images of a tag (after it is deleted or re-created). */
export function dropAssembled(tag: string): void {
  for (const dir of [assembledDir(), residentDir()]) {
    try {
      for (const f of fs.readdirSync(dir))
        if (f.startsWith(`${tag}-`)) fs.rmSync(path.join(dir, f), { force: true });
    } catch {
      /* no cache */
    }
  }
}
