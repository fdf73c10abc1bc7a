import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { ForkdError } from '../../util/errors.js';
import type { Reporter } from '../../util/report.js';
import { hashingStream } from '../../util/hash.js';
import { blobPath, blobsDir, haveBlob, putBlob, DigestMismatch } from './blobs.js';
import {
  parseAnyManifest,
  parseImageConfig,
  pickPlatform,
  type Descriptor,
  type ResolvedImage,
} from './manifest.js';
import { sniffArchive } from './reference.js';

const MAX_JSON = 4 << 20;

/** One regular file of an image tarball, staged under the blob dir by its content hash. */
interface Staged {
  sha256: string;
  size: number;
  file: string;
  /** Small JSON documents are also kept in memory. */
  text?: string;
}

/**
 * Read an image tarball once: every regular entry is hashed and staged (by index, never by its own
 * name, so a hostile name cannot place a file anywhere); symlinks between entries (older docker save)
 * are resolved inside the archive. Returns the entries by normalised name.
 */
async function stageTarball(
  input: Readable,
  what: string,
  rep: Reporter,
  total?: number,
): Promise<{ entries: Map<string, Staged>; stageDir: string }> {
  fs.mkdirSync(blobsDir(), { recursive: true });
  const stageDir = fs.mkdtempSync(path.join(blobsDir(), '..', 'import-'));
  const entries = new Map<string, Staged>();
  const links = new Map<string, string>();
  const ex = tar.extract();
  let n = 0;
  let read = 0;
  ex.on('entry', (h, stream, next) => {
    const name = path.posix.normalize(h.name.replace(/^\.?\//, ''));
    if (h.type === 'symlink' || h.type === 'link') {
      const target =
        h.type === 'link' ? (h.linkname ?? '') : path.posix.join(path.posix.dirname(name), h.linkname ?? '');
      links.set(name, path.posix.normalize(target));
      stream.resume();
      return stream.on('end', next);
    }
    if (h.type !== 'file' && h.type !== 'contiguous-file') {
      stream.resume();
      return stream.on('end', next);
    }
    const file = path.join(stageDir, String(n++));
    const hs = hashingStream((c) => rep.progress(`reading ${what}`, (read += c), total));
    const keep = name.endsWith('.json') && (h.size ?? 0) <= MAX_JSON;
    const chunks: Buffer[] = [];
    if (keep) hs.stream.on('data', (c: Buffer) => chunks.push(c));
    pipeline(stream, hs.stream, fs.createWriteStream(file))
      .then(() => {
        entries.set(name, {
          sha256: hs.digest(),
          size: hs.bytes(),
          file,
          ...(keep ? { text: Buffer.concat(chunks).toString('utf8') } : {}),
        });
        next();
      })
      .catch(next);
  });
  try {
    await pipeline(input, ex);
  } catch (e) {
    fs.rmSync(stageDir, { recursive: true, force: true });
    throw new ForkdError(
      'bad_input',
      `${what} is not a readable tar archive: ${(e as Error).message}`,
      'pass a docker save / OCI archive tarball (uncompressed .tar)',
    );
  }
  // A link may name another link: chains resolve over a few rounds (a loop never does).
  for (let round = 0; round < 8; round++)
    for (const [name, target] of links) {
      const t = entries.get(target);
      if (t && !entries.has(name)) entries.set(name, t);
    }
  return { entries, stageDir };
}

/** Move a staged entry into the blob cache under its own digest (it was hashed while staged). */
function adopt(s: Staged): string {
  const digest = `sha256:${s.sha256}`;
  const have = haveBlob(digest);
  if (have) return have;
  const dst = blobPath(digest);
  try {
    fs.linkSync(s.file, dst);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') fs.copyFileSync(s.file, dst);
  }
  fs.chmodSync(dst, 0o444);
  return dst;
}

const missing = (what: string, name: string) =>
  new ForkdError(
    'bad_input',
    `${what} names '${name}', which is not in it`,
    'the archive is incomplete or damaged',
  );

/** docker save: manifest.json lists each image's config file and layer files. */
function fromDockerManifest(entries: Map<string, Staged>, what: string): ResolvedImage {
  const m = entries.get('manifest.json')!;
  let list: Array<{ Config?: unknown; Layers?: unknown; RepoTags?: unknown }>;
  try {
    list = JSON.parse(m.text ?? '') as typeof list;
  } catch {
    throw new ForkdError('bad_input', `${what}: manifest.json is not valid JSON`, 'the archive is damaged');
  }
  const img = Array.isArray(list) ? list[0] : undefined;
  if (!img || typeof img.Config !== 'string' || !Array.isArray(img.Layers))
    throw new ForkdError('bad_input', `${what}: manifest.json lists no image`, 'the archive is damaged');
  if (list.length > 1)
    throw new ForkdError(
      'bad_input',
      `${what} holds ${list.length} images; forkd takes one`,
      'docker save one image per tarball',
    );
  const cfgName = path.posix.normalize(img.Config);
  const cfg = entries.get(cfgName);
  if (!cfg?.text) throw missing(what, cfgName);
  // The config's file name is its digest (docker save); a different hash means it was altered.
  const named = /([0-9a-f]{64})(?:\.json)?$/.exec(cfgName)?.[1];
  if (named && named !== cfg.sha256)
    throw new DigestMismatch(`${what}: config ${cfgName}`, `sha256:${named}`, cfg.sha256);
  const config = parseImageConfig(cfg.text, `${what}: config`);
  const layers = (img.Layers as unknown[]).map((l) => {
    const name = path.posix.normalize(String(l));
    const e = entries.get(name);
    if (!e) throw missing(what, name);
    const namedL = /blobs\/sha256\/([0-9a-f]{64})$/.exec(name)?.[1];
    if (namedL && namedL !== e.sha256)
      throw new DigestMismatch(`${what}: layer ${name}`, `sha256:${namedL}`, e.sha256);
    return { digest: `sha256:${e.sha256}`, size: e.size, file: adopt(e) };
  });
  if (config.rootfs.diff_ids.length !== layers.length)
    throw new ForkdError(
      'bad_input',
      `${what}: ${layers.length} layers but the config lists ${config.rootfs.diff_ids.length}`,
      'the archive is damaged',
    );
  adopt(cfg);
  return {
    source: what,
    manifest_digest: `sha256:${m.sha256}`,
    config_digest: `sha256:${cfg.sha256}`,
    config,
    layers,
  };
}

/**
 * An OCI index (layout or archive) down to one image. `ref` picks a manifest by its
 * `org.opencontainers.image.ref.name`; an index entry may itself be an index (multi-platform).
 */
async function fromOciIndex(
  indexText: string,
  getBlob: (d: Descriptor, what: string) => Promise<string>,
  ref: string | null,
  what: string,
): Promise<ResolvedImage> {
  let doc = parseAnyManifest(indexText, `${what}: index.json`);
  if (doc.kind !== 'index')
    throw new ForkdError('bad_input', `${what}: index.json is not an index`, 'the layout is damaged');
  let pick: Descriptor;
  if (ref) {
    const found = doc.doc.manifests.find((d) => d.annotations?.['org.opencontainers.image.ref.name'] === ref);
    if (!found)
      throw new ForkdError(
        'not_found',
        `${what} has no image named '${ref}'`,
        'check the name after the colon',
      );
    pick = found;
  } else pick = doc.doc.manifests.length === 1 ? doc.doc.manifests[0]! : pickPlatform(doc.doc, what);
  for (let depth = 0; ; depth++) {
    const file = await getBlob(pick, 'manifest');
    const text = fs.readFileSync(file, 'utf8');
    doc = parseAnyManifest(text, `${what}: manifest ${pick.digest}`);
    if (doc.kind === 'manifest') break;
    if (depth > 2)
      throw new ForkdError('bad_input', `${what}: indexes nested too deep`, 'the layout is damaged');
    pick = pickPlatform(doc.doc, what);
  }
  const manifest = doc.doc;
  const cfgFile = await getBlob(manifest.config, 'config');
  const config = parseImageConfig(fs.readFileSync(cfgFile, 'utf8'), `${what}: config`);
  if (config.rootfs.diff_ids.length !== manifest.layers.length)
    throw new ForkdError(
      'bad_input',
      `${what}: layer count differs from the config's`,
      'the image is damaged',
    );
  const layers: ResolvedImage['layers'] = [];
  for (const [i, l] of manifest.layers.entries())
    layers.push({ digest: l.digest, size: l.size, file: await getBlob(l, `layer ${i + 1}`) });
  return {
    source: what,
    manifest_digest: pick.digest,
    config_digest: manifest.config.digest,
    config,
    layers,
  };
}

/** A docker save or OCI archive tarball, from a file or a stream (a Docker engine's image export). */
export async function importTarball(
  input: Readable,
  what: string,
  ref: string | null,
  rep: Reporter,
  total?: number,
): Promise<ResolvedImage> {
  rep.step(`reading ${what}`);
  const { entries, stageDir } = await stageTarball(input, what, rep, total);
  try {
    const kind = sniffArchive(new Set(entries.keys()));
    if (kind === 'docker-archive') return fromDockerManifest(entries, what);
    if (kind === 'oci-archive') {
      const get = async (d: Descriptor, w: string): Promise<string> => {
        const e = entries.get(`blobs/sha256/${d.digest.slice(7)}`);
        if (!e) throw missing(what, `${w} ${d.digest}`);
        if (e.sha256 !== d.digest.slice(7)) throw new DigestMismatch(`${what}: ${w}`, d.digest, e.sha256);
        return adopt(e);
      };
      return await fromOciIndex(entries.get('index.json')!.text ?? '', get, ref, what);
    }
    throw new ForkdError(
      'bad_input',
      `${what} has neither manifest.json (docker save) nor index.json (OCI archive)`,
      'pass an image tarball made by docker save, skopeo or buildah',
    );
  } finally {
    fs.rmSync(stageDir, { recursive: true, force: true });
  }
}

export function importArchiveFile(file: string, ref: string | null, rep: Reporter): Promise<ResolvedImage> {
  return importTarball(fs.createReadStream(file), `archive ${file}`, ref, rep, fs.statSync(file).size);
}

/** An OCI image layout directory: blobs are copied into the cache and verified on the way. */
export function importOciLayout(dir: string, ref: string | null, rep: Reporter): Promise<ResolvedImage> {
  const what = `oci layout ${dir}`;
  rep.step(`reading ${what}`);
  const get = async (d: Descriptor, w: string): Promise<string> => {
    const have = haveBlob(d.digest);
    if (have) return have;
    const src = path.join(dir, 'blobs', 'sha256', d.digest.slice(7));
    if (!fs.existsSync(src)) throw missing(what, `${w} ${d.digest}`);
    return putBlob(fs.createReadStream(src), d.digest, `${what}: ${w}`, (n) =>
      rep.progress(`copying ${w}`, n, d.size),
    );
  };
  let index: string;
  try {
    index = fs.readFileSync(path.join(dir, 'index.json'), 'utf8');
  } catch {
    throw new ForkdError('bad_input', `${dir} has no index.json`, 'pass an OCI image layout directory');
  }
  return fromOciIndex(index, get, ref, what);
}

/** An image from a local Docker engine (`docker save` over its socket), when one is running. */
export async function importFromDockerDaemon(name: string, rep: Reporter): Promise<ResolvedImage> {
  const socketPath = process.env.DOCKER_HOST?.startsWith('unix://')
    ? process.env.DOCKER_HOST.slice(7)
    : '/var/run/docker.sock';
  if (!fs.existsSync(socketPath))
    throw new ForkdError(
      'not_found',
      `no Docker engine here (${socketPath} does not exist)`,
      'forkd needs no Docker engine: pass a registry reference, docker-archive:FILE or oci:DIR instead',
    );
  const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
    const req = http.get({ socketPath, path: `/images/${encodeURIComponent(name)}/get` }, resolve);
    req.on('error', (e) =>
      reject(
        new ForkdError(
          'remote_failed',
          `Docker engine at ${socketPath}: ${e.message}`,
          'is dockerd running?',
        ),
      ),
    );
  });
  if (res.statusCode !== 200) {
    res.resume();
    throw new ForkdError(
      res.statusCode === 404 ? 'not_found' : 'remote_failed',
      `the Docker engine has no image '${name}' (HTTP ${res.statusCode})`,
      `docker pull ${name} first, or pass a registry reference`,
    );
  }
  return importTarball(res, `docker engine image ${name}`, null, rep);
}
