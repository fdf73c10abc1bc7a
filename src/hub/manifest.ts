import { z } from 'zod';
import { parse as parseToml, stringify as stringifyToml } from 'smol-toml';
import { ForkdError } from '../util/errors.js';
import { isValidTag } from '../snapshot/tag.js';
import { MAX_CHAIN_DEPTH } from '../snapshot/assemble.js';

/**
 * manifest.toml: the first entry of every `.forkd-snapshot.tar.zst`. It declares every other entry
 * (name, size, sha256), so an unpacker knows before it writes a byte what may come, how much of it, and
 * what it must hash to. A signature (manifest.sig) covers these bytes and through them every file.
 *
 * Layout of a pack (v2: every chain link, root → head):
 *   manifest.toml
 *   manifest.sig                      (optional)
 *   blobs/<sha256>.ext4               root disk(s), content-addressed: links sharing a base share one entry
 *   <link tag>/snapshot.json, vmstate, disk.qcow2, memory.bin | memory.diff
 */
export const PACK_VERSION = 2;
export const MANIFEST_NAME = 'manifest.toml';
export const SIGNATURE_NAME = 'manifest.sig';
/** A manifest is a few KiB; anything much larger is not one of ours. */
export const MAX_MANIFEST_BYTES = 1 << 20;

/** The only file names a chain link may carry (never used as paths before this check). */
export const LINK_FILES = ['snapshot.json', 'vmstate', 'disk.qcow2', 'memory.bin', 'memory.diff'] as const;
const BLOB_RE = /^blobs\/[0-9a-f]{64}\.ext4$/;
const SHA_RE = /^[0-9a-f]{64}$/;

const Size = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
const PackFile = z.object({
  path: z.string(),
  size: Size,
  sha256: z.string().regex(SHA_RE, 'sha256 must be 64 lowercase hex digits'),
});
const Tag = z.string().refine(isValidTag, 'unsafe or invalid tag');

export const Manifest = z.object({
  forkd_pack_version: z.number().int().positive(),
  tag: Tag,
  description: z.string().max(4096).optional(),
  base_image: z.string().max(1024).optional(),
  created_at: z.string(),
  forkd_version: z.string(),
  parent_tag: Tag.optional(),
  /** What restores it: QEMU version and the accelerator its device state was saved under. */
  vmm: z.string(),
  accelerator: z.enum(['kvm', 'tcg']),
  memory_mib: z.number().int().positive(),
  /** Sum of every entry's size (what unpacking needs on disk at most). */
  uncompressed_bytes: Size,
  blobs: z.array(PackFile.extend({ path: z.string().regex(BLOB_RE, 'blob paths are blobs/<sha256>.ext4') })),
  chain: z
    .array(
      z.object({
        tag: Tag,
        parent_tag: Tag.optional(),
        parent_content_hash: z.string().optional(),
        /** sha256 of the root disk blob under this link's disk layer */
        base_sha256: z.string().regex(SHA_RE),
        files: z.array(PackFile.extend({ path: z.enum(LINK_FILES) })),
      }),
    )
    .min(1)
    .max(MAX_CHAIN_DEPTH + 1),
});
export type Manifest = z.infer<typeof Manifest>;
export type ManifestLink = Manifest['chain'][number];

export function renderManifest(m: Manifest): Buffer {
  const clean = JSON.parse(JSON.stringify(m)) as Record<string, unknown>; // drops undefined keys
  return Buffer.from(stringifyToml(clean) + '\n', 'utf8');
}

/** Parse and check a manifest; every problem is a named `bad_pack` error. */
export function parseManifest(bytes: Buffer): Manifest {
  let raw: unknown;
  try {
    raw = parseToml(bytes.toString('utf8'));
  } catch (e) {
    throw new ForkdError(
      'bad_pack',
      `manifest.toml is not valid TOML: ${(e as Error).message.split('\n')[0]}`,
    );
  }
  const v = (raw as { forkd_pack_version?: unknown }).forkd_pack_version;
  if (typeof v === 'number' && v > PACK_VERSION)
    throw new ForkdError(
      'bad_pack',
      `pack version ${v} is newer than this forkd supports (${PACK_VERSION})`,
      'upgrade forkd on this host',
    );
  if (v === 1)
    throw new ForkdError(
      'bad_pack',
      'pack version 1 holds a Firecracker snapshot, which QEMU cannot restore',
      're-create the snapshot with forkd on a QEMU host and pack it there',
    );
  const r = Manifest.safeParse(raw);
  if (!r.success)
    throw new ForkdError(
      'bad_pack',
      `manifest.toml is invalid: ${r.error.issues
        .slice(0, 5)
        .map((i) => `${i.path.join('.')}: ${i.message}`)
        .join('; ')}`,
      'the pack is damaged or was not made by forkd pack',
    );
  const m = r.data;
  if (m.forkd_pack_version !== PACK_VERSION)
    throw new ForkdError('bad_pack', `unsupported pack version ${m.forkd_pack_version}`);
  checkConsistency(m);
  return m;
}

/** Cross-field rules: links in order, unique names, every base declared, totals add up. */
function checkConsistency(m: Manifest): void {
  const bad = (msg: string) => new ForkdError('bad_pack', `manifest.toml: ${msg}`);
  const tags = new Set<string>();
  const blobs = new Set(m.blobs.map((b) => b.sha256));
  if (blobs.size !== m.blobs.length) throw bad('a blob is declared twice');
  for (const b of m.blobs)
    if (b.path !== `blobs/${b.sha256}.ext4`) throw bad(`blob ${b.path} is not named by its sha256`);
  m.chain.forEach((l, i) => {
    if (tags.has(l.tag)) throw bad(`link '${l.tag}' appears twice`);
    tags.add(l.tag);
    const prev = m.chain[i - 1];
    if ((l.parent_tag ?? null) !== (prev?.tag ?? null))
      throw bad(
        `link '${l.tag}' names parent '${l.parent_tag ?? '(none)'}' but follows '${prev?.tag ?? '(nothing)'}'`,
      );
    if (!blobs.has(l.base_sha256)) throw bad(`link '${l.tag}' needs a root disk that is not in the pack`);
    const names = l.files.map((f) => f.path);
    if (new Set(names).size !== names.length) throw bad(`link '${l.tag}' declares a file twice`);
    for (const need of ['snapshot.json', 'vmstate', 'disk.qcow2'] as const)
      if (!names.includes(need)) throw bad(`link '${l.tag}' has no ${need}`);
    if (names.includes('memory.bin') === names.includes('memory.diff'))
      throw bad(`link '${l.tag}' must carry exactly one of memory.bin / memory.diff`);
    if (i === 0 && !names.includes('memory.bin'))
      throw bad(`root link '${l.tag}' must carry a full memory.bin`);
  });
  if (m.chain[m.chain.length - 1]!.tag !== m.tag) throw bad(`head tag '${m.tag}' is not the last link`);
  const total =
    m.blobs.reduce((s, b) => s + b.size, 0) +
    m.chain.reduce((s, l) => s + l.files.reduce((t, f) => t + f.size, 0), 0);
  if (total !== m.uncompressed_bytes)
    throw bad(`uncompressed_bytes ${m.uncompressed_bytes} ≠ sum of entries ${total}`);
}

/** The snapshot content hash (as metadata.contentHash computes it) of a link, from the manifest alone. */
export function linkContentHash(l: ManifestLink): string {
  const sha = (p: string) => l.files.find((f) => f.path === p)?.sha256 ?? '';
  const mem = sha('memory.bin') || sha('memory.diff');
  return [sha('vmstate'), mem, sha('disk.qcow2'), l.base_sha256].join(':');
}
