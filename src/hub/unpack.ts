import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { ForkdError } from '../util/errors.js';
import { snapshotsDir } from '../util/paths.js';
import { freeBytes, linkOrCopy } from '../util/fs.js';
import type { Reporter } from '../util/report.js';
import { writeOwner } from '../host/workdir.js';
import { writeSnapshotMeta } from '../snapshot/writer.js';
import { SnapshotMeta, contentHash } from '../snapshot/metadata.js';
import { listSnapshots, loadSnapshot, snapshotDir } from '../snapshot/store.js';
import { dropAssembled } from '../snapshot/assemble.js';
import { validateTag } from '../snapshot/tag.js';
import {
  MANIFEST_NAME,
  MAX_MANIFEST_BYTES,
  SIGNATURE_NAME,
  linkContentHash,
  parseManifest,
  type Manifest,
} from './manifest.js';
import { trustedKeys, verifyManifest, type SignatureStatus } from './signing.js';
import { zstdDecompressFrom } from '../util/zstd.js';

export interface UnpackOptions {
  file: string;
  /** Restore the head link under this tag instead of the packed one. */
  tag?: string;
  /** Replace existing tags whose content differs. */
  force?: boolean;
  /** Public key files trusted for this unpack, besides the trusted dir. */
  trustedKeyFiles?: string[];
  requireSigned?: boolean;
  /** Refuse unless signed by this key id (a registry entry's `signer`). */
  expectedKeyId?: string;
}

export interface UnpackedLink {
  tag: string;
  packedAs: string;
  dir: string;
  parent: string | null;
  /** An identical snapshot was already here; nothing was replaced. */
  reused: boolean;
  replaced: boolean;
}

export interface UnpackResult {
  head: string;
  links: UnpackedLink[];
  signature: SignatureStatus;
  uncompressedBytes: number;
  ms: number;
  manifest: Manifest;
  /** root disks taken from a local snapshot instead of being written again */
  dedupedBlobs: number;
}

/** Where one declared entry goes: a path inside staging, or nowhere (hash only: we already have it). */
interface Expected {
  size: number;
  sha256: string;
  dest: string | null;
}

const bad = (msg: string, hint = 'the pack is damaged or hostile; do not use it') =>
  new ForkdError('bad_pack', msg, hint);

/** Entry names are declared by the manifest; still, reject anything path-like before looking further. */
function checkEntryName(name: string): void {
  if (!name || name.length > 255) throw bad(`entry with an empty or overlong name`);
  if (name.startsWith('/')) throw bad(`entry '${name}' has an absolute path`);
  if (name.includes('\\') || name.includes('\0')) throw bad(`entry '${name}' has an unsafe name`);
  if (name.split('/').some((p) => p === '..' || p === '.' || p === ''))
    throw bad(`entry '${name}' tries to escape the extraction dir (path traversal)`);
}

const ZERO = Buffer.alloc(1 << 20);
function isZero(b: Buffer): boolean {
  for (let off = 0; off < b.length; off += ZERO.length) {
    const n = Math.min(ZERO.length, b.length - off);
    if (!b.subarray(off, off + n).equals(ZERO.subarray(0, n))) return false;
  }
  return true;
}

async function readSmall(entry: AsyncIterable<unknown>, max: number, what: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c0 of entry) {
    const c = c0 as Buffer;
    n += c.length;
    if (n > max) throw bad(`${what} is larger than ${max} bytes`);
    parts.push(c);
  }
  return Buffer.concat(parts);
}

/** Stream one entry to its staging file (holes for zero runs, so memory images stay sparse), hashing it. */
async function receive(
  entry: AsyncIterable<unknown>,
  name: string,
  exp: Expected,
  onBytes: (n: number) => void,
): Promise<void> {
  const h = createHash('sha256');
  const fd = exp.dest ? fs.openSync(exp.dest, 'wx', 0o644) : -1;
  let pos = 0;
  try {
    for await (const chunk0 of entry) {
      const chunk = chunk0 as Buffer;
      if (pos + chunk.length > exp.size) throw bad(`entry '${name}' is longer than the manifest says`);
      h.update(chunk);
      if (fd >= 0 && !isZero(chunk)) fs.writeSync(fd, chunk, 0, chunk.length, pos);
      pos += chunk.length;
      onBytes(chunk.length);
    }
    if (fd >= 0) fs.ftruncateSync(fd, pos);
  } finally {
    if (fd >= 0) fs.closeSync(fd);
  }
  if (pos !== exp.size) throw bad(`entry '${name}' is truncated (${pos} of ${exp.size} bytes)`);
  const got = h.digest('hex');
  if (got !== exp.sha256)
    throw bad(
      `sha256 mismatch for '${name}': manifest says ${exp.sha256.slice(0, 16)}…, content is ${got.slice(0, 16)}…`,
    );
}

/** A local root disk with this content, to hard-link instead of writing the pack's copy again. */
function localBlob(sha256: string, size: number): string | undefined {
  for (const l of listSnapshots()) {
    const b = l.meta?.files.base;
    if (!b || b.sha256 !== sha256 || b.size !== size) continue;
    const p = path.join(l.dir, b.path);
    try {
      const st = fs.statSync(p);
      if (st.size === b.size && Math.trunc(st.mtimeMs) === b.mtime_ms) return p;
    } catch {
      /* gone */
    }
  }
  return undefined;
}

interface Plan {
  dest: string[];
  reuse: boolean[];
  replace: boolean[];
  expected: Map<string, Expected>;
  blobSource: Map<string, string>;
  need: number;
}

function plan(m: Manifest, opts: UnpackOptions, staging: string): Plan {
  const n = m.chain.length;
  const headTag = opts.tag ? validateTag(opts.tag) : m.tag;
  const dest = m.chain.map((l, i) => (i === n - 1 ? headTag : l.tag));
  if (new Set(dest).size !== dest.length)
    throw new ForkdError(
      'bad_input',
      `--tag '${headTag}' is already the name of a link in this pack`,
      'pick another tag',
    );
  const reuse: boolean[] = [];
  const replace: boolean[] = [];
  m.chain.forEach((l, i) => {
    const dir = snapshotDir(dest[i]!);
    if (!fs.existsSync(dir)) {
      reuse.push(false);
      replace.push(false);
      return;
    }
    let same = false;
    try {
      same = contentHash(loadSnapshot(dest[i]!).meta) === linkContentHash(l);
    } catch {
      /* unreadable: different */
    }
    if (same) {
      reuse.push(true);
      replace.push(false);
      return;
    }
    if (!opts.force)
      throw new ForkdError(
        'exists',
        `snapshot '${dest[i]}' already exists here with different content`,
        i === n - 1
          ? `unpack under another name with --tag NEW, or replace it with --force`
          : `'${dest[i]}' is a chain link of this pack; replace it with --force (snapshots made on the old '${dest[i]}' will then be refused)`,
      );
    reuse.push(false);
    replace.push(true);
  });
  const expected = new Map<string, Expected>();
  const blobSource = new Map<string, string>();
  let need = 0;
  fs.mkdirSync(path.join(staging, 'blobs'));
  for (const b of m.blobs) {
    const local = localBlob(b.sha256, b.size);
    const usedByNew = m.chain.some((l, i) => !reuse[i] && l.base_sha256 === b.sha256);
    const write = usedByNew && !local;
    const p = path.join(staging, 'blobs', `${b.sha256}.ext4`);
    expected.set(b.path, { size: b.size, sha256: b.sha256, dest: write ? p : null });
    if (write) need += b.size;
    if (usedByNew) blobSource.set(b.sha256, local ?? p);
  }
  m.chain.forEach((l, i) => {
    const dir = path.join(staging, 'links', String(i));
    fs.mkdirSync(dir, { recursive: true });
    for (const f of l.files) {
      expected.set(`${l.tag}/${f.path}`, {
        size: f.size,
        sha256: f.sha256,
        dest: reuse[i] ? null : path.join(dir, f.path),
      });
      if (!reuse[i]) need += f.size;
    }
  });
  return { dest, reuse, replace, expected, blobSource, need };
}

/** Check a staged link's snapshot.json against the manifest, then make it restorable here. */
function finishLink(m: Manifest, i: number, p: Plan, staging: string): string {
  const l = m.chain[i]!;
  const dir = path.join(staging, 'links', String(i));
  let meta: SnapshotMeta;
  try {
    meta = SnapshotMeta.parse(JSON.parse(fs.readFileSync(path.join(dir, 'snapshot.json'), 'utf8')));
  } catch (e) {
    throw bad(
      `link '${l.tag}': snapshot.json is not valid forkd metadata (${(e as Error).message.slice(0, 200)})`,
    );
  }
  const declared = new Map(l.files.map((f) => [f.path, f.sha256]));
  const f = meta.files;
  if (
    meta.tag !== l.tag ||
    declared.get(f.vmstate.path as never) !== f.vmstate.sha256 ||
    declared.get(f.memory.path as never) !== f.memory.sha256 ||
    declared.get(f.disk.path as never) !== f.disk.sha256 ||
    f.base.sha256 !== l.base_sha256 ||
    f.base.path !== 'base.ext4' ||
    (meta.lineage.parent_tag ?? undefined) !== l.parent_tag ||
    (meta.lineage.parent_content_hash ?? undefined) !== l.parent_content_hash
  )
    throw bad(`link '${l.tag}': snapshot.json does not match the manifest`);
  if (i > 0 && l.parent_content_hash !== linkContentHash(m.chain[i - 1]!))
    throw bad(`link '${l.tag}' was made on different content than the pack's '${l.parent_tag}'`);
  linkOrCopy(p.blobSource.get(l.base_sha256)!, path.join(dir, 'base.ext4'));
  const mtime = (name: string) => Math.trunc(fs.statSync(path.join(dir, name)).mtimeMs);
  for (const name of [f.vmstate.path, f.memory.path, f.disk.path]) fs.chmodSync(path.join(dir, name), 0o444);
  const out: SnapshotMeta = {
    ...meta,
    tag: p.dest[i]!,
    files: {
      vmstate: { ...f.vmstate, mtime_ms: mtime(f.vmstate.path) },
      memory: {
        ...f.memory,
        mtime_ms: mtime(f.memory.path),
        allocated: fs.statSync(path.join(dir, f.memory.path)).blocks * 512,
      },
      disk: { ...f.disk, mtime_ms: mtime(f.disk.path) },
      base: { ...f.base, mtime_ms: mtime('base.ext4') },
    },
    origin: { ...meta.origin, kind: 'unpack', source_tag: l.tag },
  };
  writeSnapshotMeta(dir, out);
  return dir;
}

/**
 * Unpack a .forkd-snapshot.tar.zst. Everything is written inside a staging dir in the snapshots dir and
 * verified (entry types, names, sizes, sha256 of every byte, signature, metadata consistency) before any
 * link is renamed into place; a failure at any point leaves the snapshots dir as it was.
 */
export async function unpackSnapshot(opts: UnpackOptions, rep: Reporter): Promise<UnpackResult> {
  const t0 = performance.now();
  let st: fs.Stats;
  try {
    st = fs.statSync(opts.file);
  } catch {
    throw new ForkdError('not_found', `no such pack: ${opts.file}`, 'check the path');
  }
  if (!st.isFile())
    throw new ForkdError('bad_input', `${opts.file} is not a file`, 'pass a .forkd-snapshot.tar.zst file');
  if (opts.tag) validateTag(opts.tag);
  const trusted = trustedKeys(opts.trustedKeyFiles ?? []);
  fs.mkdirSync(snapshotsDir(), { recursive: true });
  const staging = fs.mkdtempSync(path.join(snapshotsDir(), '.staging-unpack-'));
  writeOwner(staging, 'parent', 'unpack');
  const fd = fs.openSync(opts.file, 'r');
  const z = zstdDecompressFrom(fd);
  fs.closeSync(fd); // the child holds its own copy
  const extract = tar.extract();
  const piped = pipeline(z.stdout!, extract);
  piped.catch(() => {});
  let manifest: Manifest | undefined;
  let manifestBytes: Buffer | undefined;
  let signature: SignatureStatus | undefined;
  let p: Plan | undefined;
  const received = new Set<string>();
  let done = 0;
  const moved: Array<{ from: string; to: string; trash?: string }> = [];
  try {
    const checkSig = (sig?: Buffer) => {
      signature = verifyManifest(manifestBytes!, sig, {
        trusted,
        ...(opts.requireSigned ? { requireSigned: true } : {}),
        ...(opts.expectedKeyId ? { expectedKeyId: opts.expectedKeyId } : {}),
      });
    };
    let index = 0;
    for await (const entry of extract) {
      const h = entry.header;
      checkEntryName(h.name);
      if (h.type !== 'file')
        throw bad(
          `entry '${h.name}' is a ${h.type ?? 'special entry'}; packs hold regular files only (links and devices are refused)`,
        );
      if (index === 0) {
        if (h.name !== MANIFEST_NAME)
          throw bad(`the first entry is '${h.name}', not ${MANIFEST_NAME}`, 'this is not a forkd pack');
        manifestBytes = await readSmall(entry, MAX_MANIFEST_BYTES, MANIFEST_NAME);
        manifest = parseManifest(manifestBytes);
        p = plan(manifest, opts, staging);
        const free = freeBytes(staging);
        if (p.need + (64 << 20) > free)
          throw new ForkdError(
            'out_of_space',
            `unpacking needs ${gib(p.need)} but only ${gib(free)} is free in ${snapshotsDir()}`,
            'free disk space there, or set XDG_DATA_HOME to a larger filesystem',
          );
        rep.step(
          `unpacking '${manifest.tag}' (${manifest.chain.length} link${manifest.chain.length === 1 ? '' : 's'}, ${gib(manifest.uncompressed_bytes)} uncompressed)`,
        );
      } else if (index === 1 && h.name === SIGNATURE_NAME) {
        checkSig(await readSmall(entry, 64 << 10, SIGNATURE_NAME));
      } else {
        if (!signature) checkSig(undefined);
        const exp = p!.expected.get(h.name);
        if (!exp) throw bad(`entry '${h.name}' is not declared in the manifest`);
        if (received.has(h.name)) throw bad(`entry '${h.name}' appears twice`);
        if (h.size !== exp.size)
          throw bad(`entry '${h.name}' is ${h.size} bytes; the manifest says ${exp.size}`);
        await receive(entry, h.name, exp, (n) => {
          done += n;
          rep.progress('unpacking', done, manifest!.uncompressed_bytes);
        });
        received.add(h.name);
      }
      index++;
    }
    await piped;
    await z.done;
    if (!manifest || !p) throw bad('the pack is empty (no manifest.toml)', 'this is not a forkd pack');
    if (!signature) checkSig(undefined);
    const missing = [...p.expected.keys()].filter((k) => !received.has(k));
    if (missing.length)
      throw bad(
        `the pack is truncated: missing ${missing.slice(0, 3).join(', ')}${missing.length > 3 ? ', …' : ''}`,
      );

    // Everything verified: finish each new link, then rename root → head (rolled back on failure).
    const m = manifest;
    const plan1 = p;
    const dirs = m.chain.map((_, i) => (plan1.reuse[i] ? undefined : finishLink(m, i, plan1, staging)));
    for (let i = 0; i < m.chain.length; i++) {
      const from = dirs[i];
      if (!from) continue;
      const to = snapshotDir(plan1.dest[i]!);
      let trash: string | undefined;
      if (plan1.replace[i]) {
        trash = path.join(snapshotsDir(), `.deleting-${plan1.dest[i]}-${process.pid}-${Date.now()}`);
        fs.renameSync(to, trash);
      }
      try {
        fs.renameSync(from, to);
      } catch (e) {
        if (trash) fs.renameSync(trash, to);
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOTEMPTY' || code === 'EEXIST')
          throw new ForkdError(
            'exists',
            `snapshot '${plan1.dest[i]}' was created by someone else meanwhile`,
            'run unpack again',
          );
        throw e;
      }
      moved.push({ from, to, ...(trash ? { trash } : {}) });
    }
    for (const mv of moved) if (mv.trash) fs.rmSync(mv.trash, { recursive: true, force: true });
    m.chain.forEach((_, i) => plan1.replace[i] && dropAssembled(plan1.dest[i]!));
    return {
      head: plan1.dest[m.chain.length - 1]!,
      links: m.chain.map((l, i) => ({
        tag: plan1.dest[i]!,
        packedAs: l.tag,
        dir: snapshotDir(plan1.dest[i]!),
        parent: i > 0 ? plan1.dest[i - 1]! : null,
        reused: plan1.reuse[i]!,
        replaced: plan1.replace[i]!,
      })),
      signature: signature!,
      uncompressedBytes: m.uncompressed_bytes,
      ms: performance.now() - t0,
      manifest: m,
      dedupedBlobs: m.blobs.filter(
        (b) => p!.expected.get(b.path)?.dest === null && p!.blobSource.has(b.sha256),
      ).length,
    };
  } catch (e) {
    // Undo renames already made (newest first) so no half-unpacked chain remains.
    for (const mv of moved.reverse()) {
      try {
        fs.renameSync(mv.to, mv.from);
        if (mv.trash) fs.renameSync(mv.trash, mv.to);
      } catch {
        /* best effort */
      }
    }
    extract.destroy();
    z.kill();
    if ((e as NodeJS.ErrnoException).code === 'ENOSPC')
      throw new ForkdError(
        'out_of_space',
        `no space left while unpacking into ${snapshotsDir()}`,
        'free disk space and retry',
      );
    if (e instanceof ForkdError) throw e;
    // tar-stream's own errors on malformed or cut-off input
    throw bad(
      `the pack is unreadable: ${(e as Error).message}`,
      'the file is truncated or not a forkd pack; fetch it again',
    );
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
}

function gib(n: number): string {
  return n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(2)} GiB` : `${(n / (1 << 20)).toFixed(1)} MiB`;
}
