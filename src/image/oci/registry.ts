import fs from 'node:fs';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { ForkdError } from '../../util/errors.js';
import type { Reporter } from '../../util/report.js';
import { haveBlob, putBlob, DigestMismatch } from './blobs.js';
import {
  MANIFEST_ACCEPT,
  parseAnyManifest,
  parseImageConfig,
  pickPlatform,
  type ResolvedImage,
} from './manifest.js';
import { DOCKER_HUB, describeSource, type ImageSource } from './reference.js';

type RegistryRef = Extract<ImageSource, { kind: 'registry' }>;
const MAX_MANIFEST = 4 << 20;

/** Docker Hub's API host; loopback registries (and FORKD_INSECURE_REGISTRIES) speak plain HTTP. */
export function registryBase(registry: string): string {
  if (registry === DOCKER_HUB) return 'https://registry-1.docker.io';
  const host = registry.replace(/:\d+$/, '');
  const insecure = (process.env.FORKD_INSECURE_REGISTRIES ?? '').split(',').map((s) => s.trim());
  const plain =
    host === 'localhost' || /^127\./.test(host) || host === '[::1]' || insecure.includes(registry);
  return `${plain ? 'http' : 'https'}://${registry}`;
}

/** `Bearer realm="…",service="…",scope="…"` → its parameters. */
export function parseChallenge(header: string): { scheme: string; params: Record<string, string> } {
  const m = /^(\w+)\s*(.*)$/.exec(header.trim());
  const params: Record<string, string> = {};
  if (!m) return { scheme: '', params };
  for (const p of m[2]!.matchAll(/(\w+)="([^"]*)"/g)) params[p[1]!] = p[2]!;
  return { scheme: m[1]!.toLowerCase(), params };
}

/**
 * OCI distribution API v2 pulls: anonymous, or with the bearer token a 401 challenge points to (Docker
 * Hub, GHCR, Quay, ...). One client per repository keeps the token for every request of a pull.
 */
export class RegistryClient {
  private token: string | undefined;
  private readonly base: string;

  constructor(private readonly ref: RegistryRef) {
    this.base = registryBase(ref.registry);
  }

  private async fetch(path: string, accept?: string): Promise<Response> {
    const url = `${this.base}/v2/${this.ref.repository}/${path}`;
    const go = () =>
      fetch(url, {
        headers: {
          ...(accept ? { accept } : {}),
          ...(this.token ? { authorization: `Bearer ${this.token}` } : {}),
        },
        redirect: 'follow',
        signal: AbortSignal.timeout(10 * 60_000),
      }).catch((e: Error) => {
        const cause = (e.cause as Error | undefined)?.message ?? e.message;
        throw new ForkdError(
          'remote_failed',
          `cannot reach registry ${this.ref.registry} (${url}): ${cause}`,
          "check the registry name and this host's network (FORKD_INSECURE_REGISTRIES=host:port for a plain-HTTP registry)",
        );
      });
    let res = await go();
    if (res.status === 401 && !this.token) {
      await this.authenticate(res.headers.get('www-authenticate') ?? '');
      res = await go();
    }
    if (res.status === 401 || res.status === 403)
      throw new ForkdError(
        'remote_failed',
        `registry ${this.ref.registry} refused access to ${this.ref.repository} (HTTP ${res.status})`,
        'the repository is private or does not exist; forkd pulls anonymously',
      );
    return res;
  }

  private async authenticate(challenge: string): Promise<void> {
    const { scheme, params } = parseChallenge(challenge);
    if (scheme !== 'bearer' || !params.realm)
      throw new ForkdError(
        'remote_failed',
        `registry ${this.ref.registry} wants '${scheme || 'unknown'}' authentication, which forkd does not do`,
        'use a registry that allows anonymous pulls, or save the image to a tarball and pass docker-archive:FILE',
      );
    const u = new URL(params.realm);
    if (params.service) u.searchParams.set('service', params.service);
    u.searchParams.set('scope', params.scope ?? `repository:${this.ref.repository}:pull`);
    const res = await fetch(u, { signal: AbortSignal.timeout(60_000) }).catch((e: Error) => {
      throw new ForkdError(
        'remote_failed',
        `token service ${u.origin} unreachable: ${e.message}`,
        'check the network',
      );
    });
    if (!res.ok)
      throw new ForkdError(
        'remote_failed',
        `token service ${u.origin} answered HTTP ${res.status} for ${this.ref.repository}`,
        'the repository may be private or misspelt',
      );
    const body = (await res.json().catch(() => ({}))) as { token?: string; access_token?: string };
    this.token = body.token ?? body.access_token;
    if (!this.token)
      throw new ForkdError('remote_failed', `token service ${u.origin} returned no token`, 'try again later');
  }

  /** A manifest by tag or digest: its bytes (bounded) and sha256, checked when asked by digest. */
  async manifest(reference: string): Promise<{ text: string; digest: string }> {
    const res = await this.fetch(`manifests/${reference}`, MANIFEST_ACCEPT);
    if (res.status === 404)
      throw new ForkdError(
        'not_found',
        `${this.ref.registry}/${this.ref.repository}:${reference} does not exist`,
        'check the image name and tag',
      );
    if (!res.ok)
      throw new ForkdError('remote_failed', `manifest ${reference}: HTTP ${res.status}`, 'try again later');
    const buf = Buffer.from(await res.arrayBuffer());
    if (buf.length > MAX_MANIFEST)
      throw new ForkdError(
        'bad_input',
        `manifest ${reference} is larger than 4 MiB`,
        'this is not an image manifest',
      );
    const digest = `sha256:${createHash('sha256').update(buf).digest('hex')}`;
    if (reference.startsWith('sha256:') && digest !== reference)
      throw new DigestMismatch(`manifest of ${this.ref.repository}`, reference, digest.slice(7));
    return { text: buf.toString('utf8'), digest };
  }

  /** A blob into the cache, verified; a cached blob is not fetched again. */
  async blob(digest: string, what: string, onBytes?: (n: number) => void): Promise<string> {
    const have = haveBlob(digest);
    if (have) return have;
    const res = await this.fetch(`blobs/${digest}`);
    if (!res.ok || !res.body)
      throw new ForkdError('remote_failed', `${what} (${digest}): HTTP ${res.status}`, 'try again later');
    return putBlob(Readable.fromWeb(res.body as never), digest, what, onBytes);
  }
}

/** Pull an image's manifest (linux/amd64 of a list), config and layers into the blob cache. */
export async function pullRegistryImage(ref: RegistryRef, rep: Reporter): Promise<ResolvedImage> {
  const name = describeSource(ref);
  const client = new RegistryClient(ref);
  rep.step(`resolving ${name}`);
  let m = await client.manifest(ref.digest ?? ref.tag!);
  let doc = parseAnyManifest(m.text, `manifest of ${name}`);
  if (doc.kind === 'index') {
    const pick = pickPlatform(doc.doc, name);
    m = await client.manifest(pick.digest);
    doc = parseAnyManifest(m.text, `linux/amd64 manifest of ${name}`);
    if (doc.kind === 'index')
      throw new ForkdError('bad_input', `${name}: an index inside an index`, 'this is not a runnable image');
  }
  const manifest = doc.doc;
  const configFile = await client.blob(manifest.config.digest, 'image config');
  const config = parseImageConfig(fs.readFileSync(configFile, 'utf8'), `config of ${name}`);
  if (config.rootfs.diff_ids.length !== manifest.layers.length)
    throw new ForkdError(
      'bad_input',
      `${name}: the manifest has ${manifest.layers.length} layers but the config lists ${config.rootfs.diff_ids.length}`,
      'the image is damaged',
    );
  const total = manifest.layers.reduce((a, l) => a + l.size, 0);
  let before = 0;
  const layers: ResolvedImage['layers'] = [];
  for (const [i, l] of manifest.layers.entries()) {
    const file = await client.blob(l.digest, `layer ${i + 1}/${manifest.layers.length}`, (n) =>
      rep.progress('downloading layers', before + n, total),
    );
    before += l.size;
    rep.progress('downloading layers', before, total);
    layers.push({ digest: l.digest, size: l.size, file });
  }
  return { source: name, manifest_digest: m.digest, config_digest: manifest.config.digest, config, layers };
}
