import fs from 'node:fs';
import { z } from 'zod';
import { ForkdError } from '../util/errors.js';

/**
 * The hub index: a registry.json mapping `owner/name` → versions → pack URL + sha256 (schema of the
 * reference, §7.3), plus an optional `signer` key id that pins who must have signed the pack.
 */
export const DEFAULT_HUB_URL = 'https://raw.githubusercontent.com/deeplethe/forkd/main/registry.json';

const Version = z.object({
  url: z.string().min(1),
  sha256: z
    .string()
    .regex(/^[0-9a-fA-F]{64}$/)
    .optional(),
  size_bytes: z.number().int().nonnegative().optional(),
  memory_mib: z.number().int().positive().optional(),
  base_image: z.string().optional(),
  recipe_path: z.string().optional(),
  created_at: z.string().optional(),
  release_tag: z.string().optional(),
  signer: z
    .string()
    .regex(/^[0-9a-f]{16}$/)
    .optional(),
});
export const Registry = z.object({
  schema_version: z.literal(1),
  packages: z.record(
    z.string(),
    z.object({ description: z.string().optional(), versions: z.record(z.string(), Version) }),
  ),
});
export type Registry = z.infer<typeof Registry>;
export type RegistryVersion = z.infer<typeof Version>;

export interface PullTarget {
  url: string;
  /** owner/name@version when resolved through a registry */
  name?: string;
  /** default tag for the unpacked head: the package name */
  suggestedTag?: string;
  sha256?: string;
  sizeBytes?: number;
  signer?: string;
}

const NAME_RE = /^([A-Za-z0-9_.-]+)\/([A-Za-z0-9_.-]+)(?:@([A-Za-z0-9_.-]+))?$/;

export function isUrl(s: string): boolean {
  return /^https?:\/\//i.test(s);
}

/** Read registry.json from a URL or a local path. */
export async function fetchRegistry(hub: string): Promise<Registry> {
  let text: string;
  if (isUrl(hub)) {
    let res: Response;
    try {
      res = await fetch(hub, { signal: AbortSignal.timeout(30_000) });
    } catch (e) {
      throw new ForkdError(
        'remote_failed',
        `cannot reach the hub registry ${hub}: ${(e as Error).message}`,
        'check the URL (--hub / FORKD_HUB_URL) and your network',
      );
    }
    if (!res.ok)
      throw new ForkdError(
        'remote_failed',
        `hub registry ${hub} answered HTTP ${res.status}`,
        'check --hub / FORKD_HUB_URL',
      );
    text = await res.text();
  } else {
    try {
      text = fs.readFileSync(hub, 'utf8');
    } catch {
      throw new ForkdError(
        'not_found',
        `cannot read the hub registry ${hub}`,
        'pass a registry.json URL or path with --hub',
      );
    }
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new ForkdError(
      'remote_failed',
      `hub registry ${hub} is not JSON`,
      'check --hub: it must point at registry.json',
    );
  }
  const r = Registry.safeParse(raw);
  if (!r.success)
    throw new ForkdError(
      'remote_failed',
      `hub registry ${hub} does not follow schema_version 1: ${r.error.issues
        .slice(0, 3)
        .map((i) => `${i.path.join('.')}: ${i.message}`)
        .join('; ')}`,
    );
  return r.data;
}

/** `https://…` as is, or `owner/name[@version]` (default `latest`) through the registry. */
export async function resolvePullTarget(target: string, hub: string): Promise<PullTarget> {
  if (isUrl(target)) return { url: target };
  const m = NAME_RE.exec(target);
  if (!m)
    throw new ForkdError(
      'bad_input',
      `'${target}' is neither a URL nor owner/name[@version]`,
      'e.g. forkd pull deeplethe/python-numpy@v1, or forkd pull https://host/x.forkd-snapshot.tar.zst',
    );
  const [, owner, name, version = 'latest'] = m;
  const reg = await fetchRegistry(hub);
  const pkg = reg.packages[`${owner}/${name}`];
  if (!pkg)
    throw new ForkdError(
      'not_found',
      `'${owner}/${name}' is not in the hub registry ${hub}`,
      `available: ${Object.keys(reg.packages).slice(0, 10).join(', ') || '(none)'}`,
    );
  const v = pkg.versions[version];
  if (!v)
    throw new ForkdError(
      'not_found',
      `'${owner}/${name}' has no version '${version}'`,
      `available: ${Object.keys(pkg.versions).join(', ')}`,
    );
  const url = isUrl(v.url) ? v.url : new URL(v.url, isUrl(hub) ? hub : `file://${hub}`).toString();
  return {
    url,
    name: `${owner}/${name}@${version}`,
    suggestedTag: name!,
    ...(v.sha256 ? { sha256: v.sha256.toLowerCase() } : {}),
    ...(v.size_bytes !== undefined ? { sizeBytes: v.size_bytes } : {}),
    ...(v.signer ? { signer: v.signer } : {}),
  };
}
