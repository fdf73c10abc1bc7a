import fs from 'node:fs';
import path from 'node:path';
import { ForkdError } from '../../util/errors.js';

/** Where an image comes from. Every form ends as the same resolved image (oci/resolve.ts). */
export type ImageSource =
  | { kind: 'registry'; registry: string; repository: string; tag: string | null; digest: string | null }
  | { kind: 'docker-archive'; file: string }
  | { kind: 'oci-archive'; file: string; ref: string | null }
  | { kind: 'oci-layout'; dir: string; ref: string | null }
  | { kind: 'docker-daemon'; name: string };

export const DOCKER_HUB = 'docker.io';
const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;

const badRef = (ref: string, why: string) =>
  new ForkdError(
    'bad_input',
    `'${ref}' is not an image reference: ${why}`,
    'use NAME[:TAG|@sha256:DIGEST] (python:3.12-slim, ghcr.io/org/img:1), docker-archive:FILE, oci-archive:FILE, oci:DIR or docker-daemon:NAME',
  );

/**
 * Parse a Docker-style reference: `[host[:port]/]path[:tag][@sha256:…]`. The first component is a host
 * when it has a dot or a port or is `localhost` (Docker's rule); Docker Hub's one-part names live under
 * `library/`.
 */
export function parseRegistryRef(ref: string): Extract<ImageSource, { kind: 'registry' }> {
  if (!ref || ref.length > 512) throw badRef(ref, 'empty or longer than 512 characters');
  let rest = ref;
  let digest: string | null = null;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST_RE.test(digest)) throw badRef(ref, `'${digest}' is not a sha256:<64 hex> digest`);
  }
  const parts = rest.split('/');
  let registry = DOCKER_HUB;
  if (parts.length > 1 && (/[.:]/.test(parts[0]!) || parts[0] === 'localhost')) registry = parts.shift()!;
  let last = parts.pop() ?? '';
  let tag: string | null = null;
  const colon = last.indexOf(':');
  if (colon >= 0) {
    tag = last.slice(colon + 1);
    last = last.slice(0, colon);
    if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/.test(tag)) throw badRef(ref, `'${tag}' is not a valid tag`);
  }
  parts.push(last);
  for (const p of parts)
    if (!/^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/.test(p))
      throw badRef(ref, `'${p}' is not a valid name component (lower-case letters, digits, . _ -)`);
  if (registry === DOCKER_HUB && parts.length === 1) parts.unshift('library');
  if (!tag && !digest) tag = 'latest';
  return { kind: 'registry', registry, repository: parts.join('/'), tag, digest };
}

/** `oci:DIR:REF` style: the part after the last colon is a ref name when what is before it exists. */
function splitRef(spec: string): { p: string; ref: string | null } {
  if (fs.existsSync(spec)) return { p: spec, ref: null };
  const i = spec.lastIndexOf(':');
  if (i > 0 && fs.existsSync(spec.slice(0, i))) return { p: spec.slice(0, i), ref: spec.slice(i + 1) };
  return { p: spec, ref: null };
}

function mustExist(p: string, what: string, ref: string): string {
  const abs = path.resolve(p);
  if (!fs.existsSync(abs))
    throw new ForkdError('not_found', `${what} ${abs} does not exist (from '${ref}')`, 'check the path');
  return abs;
}

/** What a tarball holds: `docker save` writes manifest.json, an OCI archive an index.json + oci-layout. */
export function sniffArchive(names: Set<string>): 'docker-archive' | 'oci-archive' | undefined {
  if (names.has('manifest.json')) return 'docker-archive';
  if (names.has('index.json')) return 'oci-archive';
  return undefined;
}

/**
 * Every form `forkd from-image` takes. A bare path that exists is a tarball or an OCI layout directory
 * (told apart by what is in it); anything else is a registry reference.
 */
export function parseImageSource(ref: string): ImageSource {
  const pre = /^(docker-archive|oci-archive|oci|docker-daemon|docker):(.*)$/.exec(ref);
  if (pre) {
    const [, kind, spec] = pre as unknown as [string, string, string];
    if (!spec) throw badRef(ref, `nothing after '${kind}:'`);
    if (kind === 'docker') return parseRegistryRef(spec.replace(/^\/\//, ''));
    if (kind === 'docker-daemon') return { kind: 'docker-daemon', name: spec };
    if (kind === 'docker-archive') return { kind: 'docker-archive', file: mustExist(spec, 'archive', ref) };
    const { p, ref: r } = splitRef(spec);
    if (kind === 'oci-archive') return { kind: 'oci-archive', file: mustExist(p, 'archive', ref), ref: r };
    return { kind: 'oci-layout', dir: mustExist(p, 'OCI layout', ref), ref: r };
  }
  if (ref.startsWith('/') || ref.startsWith('./') || ref.startsWith('../') || fs.existsSync(ref)) {
    const abs = mustExist(ref, 'image file', ref);
    if (fs.statSync(abs).isDirectory()) {
      if (!fs.existsSync(path.join(abs, 'index.json')))
        throw new ForkdError(
          'bad_input',
          `${abs} is a directory without an index.json: not an OCI image layout`,
          'pass an OCI layout directory, a docker save tarball or an OCI archive',
        );
      return { kind: 'oci-layout', dir: abs, ref: null };
    }
    // Told apart once its entries are read (oci/archive.ts).
    return { kind: 'docker-archive', file: abs };
  }
  return parseRegistryRef(ref);
}

export function describeSource(s: ImageSource): string {
  switch (s.kind) {
    case 'registry':
      return `${s.registry}/${s.repository}${s.tag ? `:${s.tag}` : ''}${s.digest ? `@${s.digest}` : ''}`;
    case 'docker-archive':
      return `archive ${s.file}`;
    case 'oci-archive':
      return `oci-archive ${s.file}${s.ref ? `:${s.ref}` : ''}`;
    case 'oci-layout':
      return `oci layout ${s.dir}${s.ref ? `:${s.ref}` : ''}`;
    case 'docker-daemon':
      return `docker engine image ${s.name}`;
  }
}
