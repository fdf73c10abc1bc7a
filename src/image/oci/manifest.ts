import { z } from 'zod';
import { ForkdError } from '../../util/errors.js';

/** OCI / Docker v2 manifest and config documents: untrusted input, validated before use. */
export const MEDIA = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
} as const;

export const MANIFEST_ACCEPT = [
  MEDIA.ociIndex,
  MEDIA.dockerList,
  MEDIA.ociManifest,
  MEDIA.dockerManifest,
].join(', ');

const Digest = z.string().regex(/^sha256:[0-9a-f]{64}$/, 'a sha256:<64 hex> digest');
const Descriptor = z.object({
  mediaType: z.string().optional(),
  digest: Digest,
  size: z.number().int().nonnegative(),
  platform: z
    .object({ architecture: z.string(), os: z.string(), variant: z.string().optional() })
    .partial()
    .optional(),
  annotations: z.record(z.string(), z.string()).optional(),
});
export type Descriptor = z.infer<typeof Descriptor>;

const IndexDoc = z.object({ mediaType: z.string().optional(), manifests: z.array(Descriptor).max(1024) });
const ManifestDoc = z.object({
  mediaType: z.string().optional(),
  config: Descriptor,
  layers: z.array(Descriptor).max(512),
});
export type ManifestDoc = z.infer<typeof ManifestDoc>;

const StrList = z.array(z.string()).nullish();
export const ImageConfigDoc = z.object({
  architecture: z.string().optional(),
  os: z.string().optional(),
  config: z
    .object({
      Env: StrList,
      WorkingDir: z.string().nullish(),
      User: z.string().nullish(),
      Entrypoint: StrList,
      Cmd: StrList,
    })
    .partial()
    .nullish(),
  rootfs: z.object({ type: z.literal('layers'), diff_ids: z.array(Digest).max(512) }),
});
export type ImageConfigDoc = z.infer<typeof ImageConfigDoc>;

const bad = (what: string, msg: string) =>
  new ForkdError('bad_input', `${what}: ${msg}`, 'the image is damaged or not a Linux container image');

function parse<T>(schema: z.ZodType<T>, text: string, what: string): T {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw bad(what, 'not valid JSON');
  }
  const r = schema.safeParse(json);
  if (!r.success) {
    const i = r.error.issues[0]!;
    throw bad(what, `${i.path.join('.') || 'document'}: ${i.message}`);
  }
  return r.data;
}

/** An index (manifest list) or an image manifest, told apart by shape as registries are lax with types. */
export type AnyManifest =
  { kind: 'index'; doc: z.infer<typeof IndexDoc> } | { kind: 'manifest'; doc: ManifestDoc };

export function parseAnyManifest(text: string, what: string): AnyManifest {
  let json: { manifests?: unknown; schemaVersion?: unknown; fsLayers?: unknown };
  try {
    json = JSON.parse(text) as typeof json;
  } catch {
    throw bad(what, 'not valid JSON');
  }
  if (json && json.schemaVersion === 1)
    throw new ForkdError(
      'bad_input',
      `${what} is a Docker schema 1 manifest, which is obsolete and unsigned`,
      'push the image again with a current Docker or buildah (schema 2 / OCI)',
    );
  if (json && Array.isArray(json.manifests)) return { kind: 'index', doc: parse(IndexDoc, text, what) };
  return { kind: 'manifest', doc: parse(ManifestDoc, text, what) };
}

export function parseImageConfig(text: string, what: string): ImageConfigDoc {
  const c = parse(ImageConfigDoc, text, what);
  if (c.os && c.os !== 'linux')
    throw new ForkdError('bad_input', `${what}: the image is for ${c.os}, not linux`, 'pick a linux image');
  if (c.architecture && c.architecture !== 'amd64')
    throw new ForkdError(
      'bad_input',
      `${what}: the image is for ${c.architecture}, forkd guests are amd64`,
      'pick the linux/amd64 variant of the image',
    );
  return c;
}

/** The linux/amd64 entry of an index; attestation manifests (platform unknown/unknown) never match. */
export function pickPlatform(index: z.infer<typeof IndexDoc>, what: string): Descriptor {
  const m = index.manifests.find((d) => d.platform?.os === 'linux' && d.platform.architecture === 'amd64');
  if (m) return m;
  // An index without platforms (an OCI layout of one image) is taken when it holds exactly one manifest.
  const plain = index.manifests.filter((d) => !d.platform);
  if (plain.length === 1) return plain[0]!;
  const have = index.manifests
    .map((d) => (d.platform ? `${d.platform.os}/${d.platform.architecture}` : '?'))
    .join(', ');
  throw new ForkdError(
    'not_found',
    `${what} has no linux/amd64 image (it has: ${have || 'nothing'})`,
    'pick an image that is built for linux/amd64',
  );
}

/** Where forkd keeps what an image says about how to run it. */
export interface ImageRunConfig {
  env: string[];
  working_dir: string | null;
  user: string | null;
  entrypoint: string[] | null;
  cmd: string[] | null;
}

export function runConfigOf(c: ImageConfigDoc): ImageRunConfig {
  const k = c.config ?? {};
  return {
    env: (k.Env ?? []).filter((e) => /^[A-Za-z_][A-Za-z0-9_]*=/.test(e)),
    working_dir: k.WorkingDir || null,
    user: k.User || null,
    entrypoint: k.Entrypoint?.length ? k.Entrypoint : null,
    cmd: k.Cmd?.length ? k.Cmd : null,
  };
}

/** An image whose config and layers are all in the blob cache, verified, ready to unpack. */
export interface ResolvedImage {
  /** What the user named, for messages. */
  source: string;
  /** The image manifest's digest (registry and OCI forms) or of docker save's manifest entry. */
  manifest_digest: string;
  config_digest: string;
  config: ImageConfigDoc;
  /** In application order; `file` is the (possibly compressed) layer blob. */
  layers: Array<{ digest: string; size: number; file: string }>;
}
