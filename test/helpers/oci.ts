/**
 * Images the tests build themselves (no Docker engine, nothing downloaded): layers written with
 * tar-stream, stored as an OCI layout, a docker save tarball, an OCI archive, or pushed to a real
 * registry (Debian's docker-registry) on loopback.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import net from 'node:net';
import { createHash, randomUUID, sign } from 'node:crypto';
import { createServer } from 'node:http';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import tar from 'tar-stream';

export interface LayerEntry {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'block-device' | 'fifo';
  data?: string | Buffer;
  linkname?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  devmajor?: number;
  devminor?: number;
  pax?: Record<string, string>;
}

export interface Blob {
  digest: string;
  data: Buffer;
  mediaType: string;
}

export interface TestImage {
  manifest: Blob;
  config: Blob;
  layers: Blob[];
}

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

export async function tarOf(entries: LayerEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = new Promise<void>((resolve, reject) => {
    pack.on('data', (c: unknown) => chunks.push(c as Buffer));
    pack.on('end', resolve);
    pack.on('error', reject);
  });
  for (const e of entries) {
    const type = e.type ?? 'file';
    const data = e.data === undefined ? undefined : Buffer.from(e.data);
    await new Promise<void>((resolve, reject) =>
      pack.entry(
        {
          name: e.name,
          type,
          mode: e.mode ?? (type === 'directory' ? 0o755 : 0o644),
          uid: e.uid ?? 0,
          gid: e.gid ?? 0,
          mtime: new Date(1_700_000_000_000),
          ...(e.linkname !== undefined ? { linkname: e.linkname } : {}),
          ...(e.devmajor !== undefined ? { devmajor: e.devmajor, devminor: e.devminor ?? 0 } : {}),
          ...(e.pax ? { pax: e.pax } : {}),
          ...(type === 'file' ? { size: data?.length ?? 0 } : {}),
        },
        type === 'file' ? (data ?? Buffer.alloc(0)) : Buffer.alloc(0),
        (err) => (err ? reject(err) : resolve()),
      ),
    );
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

export type Compression = 'gzip' | 'zstd' | 'none';

function compress(raw: Buffer, how: Compression): Buffer {
  if (how === 'gzip') return zlib.gzipSync(raw, { level: 1 });
  if (how === 'zstd') {
    const r = spawnSync('zstd', ['-q', '-c'], { input: raw, maxBuffer: 1 << 30 });
    if (r.status !== 0) throw new Error(`zstd failed: ${r.stderr}`);
    return r.stdout;
  }
  return raw;
}

/** An image from layer tarballs (uncompressed tar bytes, compressed here as asked). */
export function imageOf(
  layerTars: Array<{ tar: Buffer; compression?: Compression }>,
  config: { Env?: string[]; Cmd?: string[]; Entrypoint?: string[]; WorkingDir?: string; User?: string } = {},
  opts: { badDiffId?: number; arch?: string } = {},
): TestImage {
  const layers = layerTars.map((l) => {
    const c = l.compression ?? 'gzip';
    const data = compress(l.tar, c);
    const mediaType =
      c === 'gzip'
        ? 'application/vnd.oci.image.layer.v1.tar+gzip'
        : c === 'zstd'
          ? 'application/vnd.oci.image.layer.v1.tar+zstd'
          : 'application/vnd.oci.image.layer.v1.tar';
    return { digest: sha(data), data, mediaType, diffId: sha(l.tar) };
  });
  const diffIds = layers.map((l, i) => (opts.badDiffId === i ? sha(Buffer.from('not this')) : l.diffId));
  const configData = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config,
      rootfs: { type: 'layers', diff_ids: diffIds },
    }),
  );
  const cfg: Blob = {
    digest: sha(configData),
    data: configData,
    mediaType: 'application/vnd.oci.image.config.v1+json',
  };
  const manifestData = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: cfg.mediaType, digest: cfg.digest, size: cfg.data.length },
      layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.data.length })),
    }),
  );
  return {
    manifest: {
      digest: sha(manifestData),
      data: manifestData,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
    },
    config: cfg,
    layers: layers.map(({ digest, data, mediaType }) => ({ digest, data, mediaType })),
  };
}

/** An index naming an arm64 image first and the linux/amd64 one second. */
export function indexOf(img: TestImage, arm64: TestImage): Blob {
  const data = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [
        {
          mediaType: arm64.manifest.mediaType,
          digest: arm64.manifest.digest,
          size: arm64.manifest.data.length,
          platform: { architecture: 'arm64', os: 'linux' },
        },
        {
          mediaType: img.manifest.mediaType,
          digest: img.manifest.digest,
          size: img.manifest.data.length,
          platform: { architecture: 'amd64', os: 'linux' },
        },
      ],
    }),
  );
  return { digest: sha(data), data, mediaType: 'application/vnd.oci.image.index.v1+json' };
}

export function writeOciLayout(dir: string, img: TestImage, refName = 'latest'): void {
  const blobs = path.join(dir, 'blobs', 'sha256');
  fs.mkdirSync(blobs, { recursive: true });
  for (const b of [img.manifest, img.config, ...img.layers])
    fs.writeFileSync(path.join(blobs, b.digest.slice(7)), b.data);
  fs.writeFileSync(path.join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  fs.writeFileSync(
    path.join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: img.manifest.mediaType,
          digest: img.manifest.digest,
          size: img.manifest.data.length,
          annotations: { 'org.opencontainers.image.ref.name': refName },
        },
      ],
    }),
  );
}

/** An OCI layout as one tarball (what skopeo copy oci-archive: writes). */
export async function ociArchive(img: TestImage): Promise<Buffer> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-oci-'));
  try {
    writeOciLayout(dir, img);
    const entries: LayerEntry[] = [];
    for (const f of ['oci-layout', 'index.json'])
      entries.push({ name: f, data: fs.readFileSync(path.join(dir, f)) });
    for (const b of [img.manifest, img.config, ...img.layers])
      entries.push({ name: `blobs/sha256/${b.digest.slice(7)}`, data: b.data });
    return tarOf(entries);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** The classic `docker save` layout: manifest.json, <config hex>.json, <n>/layer.tar (uncompressed). */
export function dockerArchive(img: TestImage, rawLayers: Buffer[], tag = 'test/img:latest'): Promise<Buffer> {
  const layerNames = rawLayers.map((_, i) => `layer${i}/layer.tar`);
  const entries: LayerEntry[] = [
    { name: `${img.config.digest.slice(7)}.json`, data: img.config.data },
    ...rawLayers.map((t, i) => ({ name: layerNames[i]!, data: t })),
    {
      name: 'manifest.json',
      data: JSON.stringify([
        { Config: `${img.config.digest.slice(7)}.json`, RepoTags: [tag], Layers: layerNames },
      ]),
    },
  ];
  return tarOf(entries);
}

const freePort = () =>
  new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });

/** Debian's docker-registry (the CNCF distribution registry), on loopback, installed when missing. */
export async function startRegistry(
  opts: { tokenAuth?: { realm: string; service: string; issuer: string; certFile: string } } = {},
): Promise<{ host: string; stop: () => Promise<void> }> {
  const bin = '/usr/bin/docker-registry';
  if (!fs.existsSync(bin)) {
    const r = spawnSync('apt-get', ['install', '-y', '-q', 'docker-registry'], {
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
      encoding: 'utf8',
    });
    if (r.status !== 0) throw new Error(`apt-get install docker-registry failed: ${r.stderr}`);
  }
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-registry-'));
  const port = await freePort();
  const cfg = path.join(root, 'config.yml');
  fs.writeFileSync(
    cfg,
    `version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: ${root}/data\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:${port}\n` +
      (opts.tokenAuth
        ? `auth:\n  token:\n    realm: ${opts.tokenAuth.realm}\n    service: ${opts.tokenAuth.service}\n    issuer: ${opts.tokenAuth.issuer}\n    rootcertbundle: ${opts.tokenAuth.certFile}\n`
        : ''),
  );
  const proc: ChildProcess = spawn(bin, ['serve', cfg], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  proc.stderr!.on('data', (d) => (log = (log + d).slice(-4000)));
  const host = `127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    const ok = await fetch(`http://${host}/v2/`).then(
      (r) => r.ok || r.status === 401,
      () => false,
    );
    if (ok) break;
    if (i > 100 || proc.exitCode !== null) throw new Error(`docker-registry did not start: ${log}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    host,
    stop: async () => {
      proc.kill('SIGTERM');
      await new Promise((r) => (proc.exitCode !== null ? r(null) : proc.on('exit', r)));
      fs.rmSync(root, { recursive: true, force: true });
    },
  };
}

/** Push blobs (monolithic upload) then the manifest, as a client of the distribution API. */
export async function pushImage(
  host: string,
  repo: string,
  tag: string,
  img: TestImage,
  index?: Blob,
  /** A bearer token, for a registry with token auth. */
  token?: string,
): Promise<void> {
  const auth: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  for (const b of [img.config, ...img.layers]) {
    const start = await fetch(`http://${host}/v2/${repo}/blobs/uploads/`, { method: 'POST', headers: auth });
    if (start.status !== 202) throw new Error(`upload start: ${start.status}`);
    const loc = new URL(start.headers.get('location')!, `http://${host}`);
    loc.searchParams.set('digest', b.digest);
    const put = await fetch(loc, {
      method: 'PUT',
      body: b.data,
      headers: { 'content-type': 'application/octet-stream', ...auth },
    });
    if (put.status !== 201) throw new Error(`upload ${b.digest}: ${put.status} ${await put.text()}`);
  }
  const putManifest = async (ref: string, m: Blob) => {
    const r = await fetch(`http://${host}/v2/${repo}/manifests/${ref}`, {
      method: 'PUT',
      body: m.data,
      headers: { 'content-type': m.mediaType, ...auth },
    });
    if (r.status !== 201) throw new Error(`manifest ${ref}: ${r.status} ${await r.text()}`);
  };
  await putManifest(index ? img.manifest.digest : tag, img.manifest);
  if (index) await putManifest(tag, index);
}

/** A root made of the host's static busybox alone: no libc, no Node, no Python. */
export function busyboxLayer(extra: LayerEntry[] = []): Promise<Buffer> {
  const bb = fs.readFileSync('/bin/busybox');
  const applets = [
    'sh',
    'ls',
    'cat',
    'echo',
    'uname',
    'id',
    'true',
    'false',
    'env',
    'pwd',
    'mkdir',
    'rm',
    'sleep',
    'grep',
    'wc',
    'ps',
  ];
  return tarOf([
    { name: 'bin/', type: 'directory' },
    { name: 'bin/busybox', data: bb, mode: 0o755 },
    ...applets.map((a) => ({ name: `bin/${a}`, type: 'symlink' as const, linkname: 'busybox' })),
    { name: 'etc/', type: 'directory' },
    { name: 'etc/passwd', data: 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' },
    { name: 'etc/group', data: 'root:x:0:\nnogroup:x:65534:\n' },
    ...extra,
  ]);
}

/**
 * An ext4 root filesystem (a recipe's) as one uncompressed layer tarball: dumped without mounting
 * (debugfs rdump), packed with owners and xattrs.
 */
export function layerFromExt4(rootfs: string, work: string): Buffer {
  const tree = fs.mkdtempSync(path.join(work, 'tree-'));
  const layerFile = `${tree}.tar`;
  try {
    execFileSync('debugfs', ['-R', `rdump / ${tree}`, rootfs], { stdio: 'ignore' });
    execFileSync('tar', [
      '--numeric-owner',
      '--xattrs',
      '--exclude=./lost+found',
      '-C',
      tree,
      '-cf',
      layerFile,
      '.',
    ]);
    return fs.readFileSync(layerFile);
  } finally {
    fs.rmSync(tree, { recursive: true, force: true });
    fs.rmSync(layerFile, { force: true });
  }
}

/**
 * A registry token service (the Docker token flow) on loopback: JWTs signed with a self-made RS256
 * key, its certificate in the token's x5c header and in the registry's rootcertbundle. It grants
 * every scope it is asked for, except on repositories named in `deny`.
 */
export async function startTokenService(work: string, deny: string[] = []) {
  const key = path.join(work, 'token.key');
  const certFile = path.join(work, 'token.crt');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      key,
      '-out',
      certFile,
      '-days',
      '1',
      '-subj',
      '/CN=forkd-test-tokens',
    ],
    { stdio: 'ignore' },
  );
  const der = execFileSync('openssl', ['x509', '-in', certFile, '-outform', 'DER']);
  const pem = fs.readFileSync(key, 'utf8');
  const b64u = (b: Buffer | string) => Buffer.from(b).toString('base64url');
  const service = 'forkd-test-registry';
  const issuer = 'forkd-test-issuer';
  const seen: string[] = [];
  const srv = createServer((req, res) => {
    const u = new URL(req.url ?? '/', 'http://x');
    const scope = u.searchParams.get('scope') ?? '';
    seen.push(`${u.searchParams.get('service')} ${scope}`);
    const [, name, actions] = scope.split(':');
    if (!name || deny.includes(name)) return void res.writeHead(403).end('denied');
    const now = Math.floor(Date.now() / 1000);
    const head = b64u(JSON.stringify({ alg: 'RS256', typ: 'JWT', x5c: [der.toString('base64')] }));
    const claims = b64u(
      JSON.stringify({
        iss: issuer,
        sub: 'anonymous',
        aud: service,
        exp: now + 300,
        nbf: now - 10,
        iat: now,
        jti: randomUUID(),
        access: [{ type: 'repository', name, actions: (actions ?? 'pull').split(',') }],
      }),
    );
    const sig = b64u(sign('sha256', Buffer.from(`${head}.${claims}`), pem));
    res
      .writeHead(200, { 'content-type': 'application/json' })
      .end(JSON.stringify({ token: `${head}.${claims}.${sig}` }));
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const realm = `http://127.0.0.1:${(srv.address() as net.AddressInfo).port}/token`;
  return {
    realm,
    service,
    issuer,
    certFile,
    seen,
    /** A token for pushing test images (what `docker push` would fetch). */
    tokenFor: async (repo: string) =>
      (
        (await (await fetch(`${realm}?service=${service}&scope=repository:${repo}:pull,push`)).json()) as {
          token: string;
        }
      ).token,
    close: () => new Promise<void>((r) => srv.close(() => r())),
  };
}
