import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { ForkdError } from '../util/errors.js';
import { forkdVersion } from '../util/project.js';
import { hashingStream } from '../util/hash.js';
import type { Reporter } from '../util/report.js';
import { loadSnapshot, type LoadedSnapshot } from '../snapshot/store.js';
import { resolveChain } from '../snapshot/assemble.js';
import { validateTag } from '../snapshot/tag.js';
import {
  MANIFEST_NAME,
  PACK_VERSION,
  SIGNATURE_NAME,
  renderManifest,
  LINK_FILES,
  type Manifest,
  type ManifestLink,
} from './manifest.js';
import { signManifest, type Signature } from './signing.js';
import { zstdCompressTo } from '../util/zstd.js';

export const PACK_SUFFIX = '.forkd-snapshot.tar.zst';

export interface PackOptions {
  tag: string;
  /** Output path; default ./<tag>.forkd-snapshot.tar.zst */
  out?: string;
  description?: string;
  baseImage?: string;
  /** Path of an Ed25519 private key (PEM) to sign the manifest with. */
  signKey?: string;
  /** Replace an existing output file. */
  force?: boolean;
  /** zstd level (1-19; default 3). */
  level?: number;
}

export interface PackResult {
  out: string;
  tag: string;
  links: string[];
  compressedBytes: number;
  uncompressedBytes: number;
  ratio: number;
  ms: number;
  signedBy?: string;
  manifest: Manifest;
}

interface Entry {
  name: string;
  src: string;
  size: number;
  sha256: string;
}

export function defaultPackPath(tag: string): string {
  return path.resolve(`${tag.replace(/[^A-Za-z0-9._-]/g, '-')}${PACK_SUFFIX}`);
}

/** What goes into the pack, root → head. File hashes come from the metadata and are re-checked while streaming. */
function planEntries(chain: LoadedSnapshot[]): { links: ManifestLink[]; blobs: Entry[]; files: Entry[] } {
  const blobs = new Map<string, Entry>();
  const files: Entry[] = [];
  const links: ManifestLink[] = [];
  for (const s of chain) {
    const m = s.meta;
    const base = m.files.base;
    if (!blobs.has(base.sha256))
      blobs.set(base.sha256, {
        name: `blobs/${base.sha256}.ext4`,
        src: path.join(s.dir, base.path),
        size: base.size,
        sha256: base.sha256,
      });
    const json = fs.readFileSync(path.join(s.dir, 'snapshot.json'));
    const own: Entry[] = [
      { name: 'snapshot.json', src: path.join(s.dir, 'snapshot.json'), size: json.length, sha256: sha(json) },
      ...[m.files.vmstate, m.files.disk, m.files.memory].map((f) => ({
        name: f.path,
        src: path.join(s.dir, f.path),
        size: f.size,
        sha256: f.sha256,
      })),
    ];
    for (const e of own)
      if (!(LINK_FILES as readonly string[]).includes(e.name))
        throw new ForkdError(
          'corrupt_snapshot',
          `snapshot '${s.tag}' has an unexpected file name '${e.name}'`,
        );
    links.push({
      tag: s.tag,
      ...(m.lineage.parent_tag ? { parent_tag: m.lineage.parent_tag } : {}),
      ...(m.lineage.parent_content_hash ? { parent_content_hash: m.lineage.parent_content_hash } : {}),
      base_sha256: base.sha256,
      files: own.map((e) => ({
        path: e.name as ManifestLink['files'][number]['path'],
        size: e.size,
        sha256: e.sha256,
      })),
    });
    files.push(...own.map((e) => ({ ...e, name: `${s.tag}/${e.name}` })));
  }
  return { links, blobs: [...blobs.values()], files };
}

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/**
 * Pack a snapshot (and, for a chain head, every ancestor link) into one .tar.zst. One pass: files are
 * read once, hashed while they stream into tar → zstd, and compared with the hashes recorded when the
 * snapshot was made; memory stays flat whatever the snapshot size. The output appears under its final
 * name only when complete.
 */
export async function packSnapshot(opts: PackOptions, rep: Reporter): Promise<PackResult> {
  const t0 = performance.now();
  const tag = validateTag(opts.tag);
  const head = loadSnapshot(tag);
  if (head.meta.volumes?.length)
    throw new ForkdError(
      'bad_input',
      `snapshot '${tag}' has volumes (${head.meta.volumes.map((v) => v.guest_path).join(', ')}): host files a pack cannot carry`,
      'pack a snapshot made without --volume',
    );
  const chain = resolveChain(head);
  const out = path.resolve(opts.out ?? defaultPackPath(tag));
  if (fs.existsSync(out) && !opts.force)
    throw new ForkdError(
      'exists',
      `${out} already exists`,
      'pass --force to overwrite it, or pick another --out',
    );
  if (fs.existsSync(out) && fs.statSync(out).isDirectory())
    throw new ForkdError(
      'bad_input',
      `--out ${out} is a directory`,
      `e.g. --out ${path.join(out, `${tag}${PACK_SUFFIX}`)}`,
    );
  const level = opts.level ?? 3;
  if (!Number.isInteger(level) || level < 1 || level > 19)
    throw new ForkdError(
      'bad_input',
      `--level must be 1..19 (got ${level})`,
      'e.g. --level 3 (fast) or 19 (smallest)',
    );
  const plan = planEntries(chain);
  const all = [...plan.blobs, ...plan.files];
  const total = all.reduce((s, e) => s + e.size, 0);
  const manifest: Manifest = {
    forkd_pack_version: PACK_VERSION,
    tag,
    ...(opts.description ? { description: opts.description } : {}),
    ...(opts.baseImage ? { base_image: opts.baseImage } : {}),
    created_at: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    forkd_version: forkdVersion(),
    ...(head.meta.lineage.parent_tag ? { parent_tag: head.meta.lineage.parent_tag } : {}),
    vmm: `qemu ${head.meta.vmm.version}`,
    accelerator: head.meta.accelerator,
    memory_mib: head.meta.machine.mem_mib,
    uncompressed_bytes: total,
    blobs: plan.blobs.map((b) => ({ path: b.name, size: b.size, sha256: b.sha256 })),
    chain: plan.links,
  };
  const manifestBytes = renderManifest(manifest);
  let signature: Signature | undefined;
  if (opts.signKey) signature = signManifest(manifestBytes, opts.signKey);

  rep.step(
    `packing snapshot '${tag}'${chain.length > 1 ? ` (${chain.length} chain links: ${chain.map((c) => c.tag).join(' → ')})` : ''} → ${out}`,
  );
  fs.mkdirSync(path.dirname(out), { recursive: true });
  const partial = `${out}.partial-${process.pid}`;
  const fd = fs.openSync(partial, 'w', 0o644);
  const zstd = zstdCompressTo(fd, level);
  const pack = tar.pack();
  const piped = pipeline(pack, zstd.stdin!);
  piped.catch(() => {});
  let done = 0;
  try {
    const mtime = new Date();
    const small = (name: string, body: Buffer) =>
      new Promise<void>((res, rej) =>
        pack.entry({ name, size: body.length, mode: 0o644, mtime }, body, (e) => (e ? rej(e) : res())),
      );
    await small(MANIFEST_NAME, manifestBytes);
    if (signature) await small(SIGNATURE_NAME, Buffer.from(JSON.stringify(signature, null, 2) + '\n'));
    for (const e of all) {
      const tap = hashingStream((n) => {
        done += n;
        rep.progress('packing', done, total);
      });
      const entry = pack.entry({ name: e.name, size: e.size, mode: 0o644, mtime });
      await pipeline(fs.createReadStream(e.src, { highWaterMark: 1 << 20 }), tap.stream, entry);
      if (tap.bytes() !== e.size || tap.digest() !== e.sha256)
        throw new ForkdError(
          'corrupt_snapshot',
          `${e.src} changed since its snapshot was saved (its sha256 no longer matches snapshot.json)`,
          `re-create the snapshot (forkd rmi ${tag} && forkd snapshot --tag ${tag})`,
        );
    }
    pack.finalize();
    await piped;
    await zstd.done;
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fs.renameSync(partial, out);
  } catch (e) {
    pack.destroy();
    zstd.kill();
    try {
      fs.closeSync(fd);
    } catch {
      /* closed */
    }
    fs.rmSync(partial, { force: true });
    if ((e as NodeJS.ErrnoException).code === 'ENOSPC')
      throw new ForkdError(
        'out_of_space',
        `no space left writing ${out}`,
        'free space there or pick another --out',
      );
    throw e;
  }
  const compressed = fs.statSync(out).size;
  return {
    out,
    tag,
    links: chain.map((c) => c.tag),
    compressedBytes: compressed,
    uncompressedBytes: total,
    ratio: compressed ? total / compressed : 0,
    ms: performance.now() - t0,
    ...(signature ? { signedBy: signature.key_id } : {}),
    manifest,
  };
}
