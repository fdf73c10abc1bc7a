import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { parseImageSource, parseRegistryRef } from '../../src/image/oci/reference.js';
import { resolveImage } from '../../src/image/oci/resolve.js';
import { applyLayer } from '../../src/image/oci/apply-layer.js';
import type { ResolvedImage } from '../../src/image/oci/manifest.js';
import { silentReporter } from '../../src/util/report.js';
import {
  dockerArchive,
  imageOf,
  indexOf,
  ociArchive,
  pushImage,
  startRegistry,
  startTokenService,
  tarOf,
  writeOciLayout,
  type LayerEntry,
} from '../helpers/oci.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-oci-test-'));
const savedCache = process.env.XDG_CACHE_HOME;
before(() => (process.env.XDG_CACHE_HOME = path.join(tmp, 'cache')));
after(() => {
  if (savedCache === undefined) delete process.env.XDG_CACHE_HOME;
  else process.env.XDG_CACHE_HOME = savedCache;
  fs.rmSync(tmp, { recursive: true, force: true });
});

let n = 0;
const dir = (name: string) => {
  const d = path.join(tmp, `${name}-${n++}`);
  fs.mkdirSync(d, { recursive: true });
  return d;
};

async function unpack(img: ResolvedImage): Promise<string> {
  const root = dir('root');
  for (const [i, l] of img.layers.entries())
    await applyLayer(root, l.file, img.config.rootfs.diff_ids[i]!, `layer ${i + 1}`);
  return root;
}

const LOWER: LayerEntry[] = [
  { name: 'etc/', type: 'directory' },
  { name: 'etc/os-release', data: 'ID=test\n' },
  { name: 'etc/gone', data: 'whited out above\n' },
  { name: 'opaque/', type: 'directory' },
  { name: 'opaque/old', data: 'hidden by the opaque marker\n' },
  { name: 'usr/bin/tool', data: '#!/bin/sh\n', mode: 0o4755, uid: 0, gid: 0 },
  { name: 'usr/bin/alias', type: 'link', linkname: 'usr/bin/tool' },
  { name: 'bin', type: 'symlink', linkname: 'usr/bin' },
  { name: 'home/user/', type: 'directory', uid: 1000, gid: 1000, mode: 0o700 },
  { name: 'home/user/own', data: 'mine', uid: 1000, gid: 1000, mode: 0o600 },
  {
    name: 'usr/bin/ping',
    data: 'ELF',
    mode: 0o755,
    pax: {
      'SCHILY.xattr.security.capability': Buffer.from(
        '0100000200200000000000000000000000000000',
        'hex',
      ).toString('latin1'),
    },
  },
  { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
];
const UPPER: LayerEntry[] = [
  { name: 'etc/.wh.gone', data: '' },
  { name: 'opaque/.wh..wh..opq', data: '' },
  { name: 'opaque/new', data: 'from the upper layer\n' },
  { name: 'etc/os-release', data: 'ID=upper\n' },
  // Written through the lower layer's `bin -> usr/bin` symlink, as a container would.
  { name: 'bin/added', data: 'via symlink\n' },
];

/** `salt` makes the image's blobs its own, so the blob cache of an earlier test does not serve them. */
async function twoLayerImage(salt = '') {
  const raw = [
    await tarOf([...LOWER, { name: 'salt', data: salt }]),
    await tarOf([...UPPER, { name: 'salt2', data: salt }]),
  ];
  const img = imageOf(
    [
      { tar: raw[0]!, compression: 'gzip' },
      { tar: raw[1]!, compression: 'zstd' },
    ],
    {
      Env: ['PATH=/usr/local/bin:/usr/bin:/bin', 'GREETING=hi there'],
      WorkingDir: '/srv',
      Cmd: ['sh', '-c', 'echo hi'],
    },
  );
  return { raw, img };
}

function checkTree(root: string): void {
  assert.equal(fs.readFileSync(path.join(root, 'etc/os-release'), 'utf8'), 'ID=upper\n');
  assert.ok(!fs.existsSync(path.join(root, 'etc/gone')), 'whiteout removes the lower file');
  assert.deepEqual(fs.readdirSync(path.join(root, 'opaque')), ['new'], 'opaque dir hides lower entries');
  const tool = fs.statSync(path.join(root, 'usr/bin/tool'));
  assert.equal(tool.mode & 0o7777, 0o4755, 'set-uid kept');
  assert.equal(fs.statSync(path.join(root, 'usr/bin/alias')).ino, tool.ino, 'hard link kept');
  assert.equal(fs.readlinkSync(path.join(root, 'bin')), 'usr/bin');
  assert.equal(fs.readFileSync(path.join(root, 'usr/bin/added'), 'utf8'), 'via symlink\n');
  const own = fs.statSync(path.join(root, 'home/user/own'));
  assert.deepEqual([own.uid, own.gid, own.mode & 0o777], [1000, 1000, 0o600], 'ownership and mode kept');
  const dev = fs.statSync(path.join(root, 'dev/null'));
  assert.ok(dev.isCharacterDevice());
  const cap = spawnSync(
    'getfattr',
    ['-n', 'security.capability', '--only-values', '-e', 'hex', path.join(root, 'usr/bin/ping')],
    { encoding: 'latin1' },
  );
  assert.equal(cap.status, 0, `file capability kept: ${cap.stderr}`);
}

describe('OCI image references', () => {
  it('parses Docker-style references the way Docker does', () => {
    assert.deepEqual(parseRegistryRef('python:3.12-slim'), {
      kind: 'registry',
      registry: 'docker.io',
      repository: 'library/python',
      tag: '3.12-slim',
      digest: null,
    });
    assert.deepEqual(parseRegistryRef('localhost:5000/a/b'), {
      kind: 'registry',
      registry: 'localhost:5000',
      repository: 'a/b',
      tag: 'latest',
      digest: null,
    });
    const d = `sha256:${'a'.repeat(64)}`;
    assert.equal(parseRegistryRef(`ghcr.io/org/img@${d}`).digest, d);
    assert.equal(parseRegistryRef('ghcr.io/org/img@' + d).tag, null);
    for (const bad of ['UPPER/case', 'img@sha256:short', 'a//b', 'img:bad tag'])
      assert.throws(() => parseRegistryRef(bad), /is not an image reference/, bad);
  });
  it('tells files, layouts and prefixed forms apart', () => {
    const layout = dir('layout');
    fs.writeFileSync(path.join(layout, 'index.json'), '{}');
    assert.equal(parseImageSource(layout).kind, 'oci-layout');
    assert.equal(parseImageSource(`oci:${layout}:v1`).kind, 'oci-layout');
    assert.throws(() => parseImageSource('docker-archive:/nonexistent/x.tar'), /does not exist/);
    assert.equal(parseImageSource('docker-daemon:alpine').kind, 'docker-daemon');
  });
});

describe('OCI image sources, without a Docker engine', () => {
  it('an OCI layout: layers, whiteouts, opaque dirs, owners, modes, links, xattrs and devices', async () => {
    const { img } = await twoLayerImage();
    const layout = dir('layout');
    writeOciLayout(layout, img, 'v1');
    const r = await resolveImage(`oci:${layout}:v1`, silentReporter);
    assert.equal(r.manifest_digest, img.manifest.digest);
    assert.equal(r.config.config?.WorkingDir, '/srv');
    checkTree(await unpack(r));
  });

  it('a docker save tarball and an OCI archive give the same image and tree', async () => {
    const { raw, img } = await twoLayerImage();
    const docker = path.join(dir('a'), 'img.tar');
    fs.writeFileSync(docker, await dockerArchive(img, raw));
    const oci = path.join(dir('b'), 'img.oci.tar');
    fs.writeFileSync(oci, await ociArchive(img));
    const a = await resolveImage(docker, silentReporter);
    const b = await resolveImage(`oci-archive:${oci}`, silentReporter);
    assert.equal(a.config_digest, img.config.digest);
    assert.equal(b.config_digest, img.config.digest);
    checkTree(await unpack(a));
    checkTree(await unpack(b));
  });

  it('refuses a blob whose digest does not match, and keeps nothing of it', async () => {
    const { img } = await twoLayerImage('tampered');
    const layout = dir('layout');
    writeOciLayout(layout, img);
    const victim = path.join(layout, 'blobs', 'sha256', img.layers[1]!.digest.slice(7));
    const b = fs.readFileSync(victim);
    b[b.length - 1]! ^= 0xff;
    fs.writeFileSync(victim, b);
    await assert.rejects(resolveImage(layout, silentReporter), /digest mismatch/);
    const cached = path.join(tmp, 'cache', 'forkd', 'oci', 'blobs', 'sha256', img.layers[1]!.digest.slice(7));
    assert.ok(!fs.existsSync(cached), 'the bad blob is not in the cache');
  });

  it("refuses a layer whose content does not hash to the config's diff_id", async () => {
    const raw = await tarOf(LOWER);
    const img = imageOf([{ tar: raw }], {}, { badDiffId: 0 });
    const layout = dir('layout');
    writeOciLayout(layout, img);
    const r = await resolveImage(layout, silentReporter);
    await assert.rejects(unpack(r), /the image config says/);
  });
});

describe('hostile layers are refused by name, and nothing lands outside the root', () => {
  const hostile = async (entries: LayerEntry[]) => {
    const img = imageOf([{ tar: await tarOf(entries) }]);
    const layout = dir('layout');
    writeOciLayout(layout, img);
    return unpack(await resolveImage(layout, silentReporter));
  };
  it('path traversal with ..', async () => {
    await assert.rejects(
      hostile([{ name: '../../escaped', data: 'x' }]),
      /'..\/..\/escaped' climbs out of the image/,
    );
  });
  it('a symlink that climbs above the root, then a file through it', async () => {
    await assert.rejects(
      hostile([
        { name: 'up', type: 'symlink', linkname: '../../../../tmp' },
        { name: 'up/pwned', data: 'x' },
      ]),
      /entry 'up\/pwned' goes through up -> ..\/..\/..\/..\/tmp, which leads outside the image/,
    );
  });
  it('an absolute symlink target stays inside the root', async () => {
    const outside = dir('host-side');
    const root = await hostile([
      { name: 'esc', type: 'symlink', linkname: outside },
      { name: 'esc/pwned', data: 'x' },
    ]);
    assert.deepEqual(fs.readdirSync(outside), [], 'nothing written on the host');
    assert.equal(fs.readFileSync(path.join(root, outside, 'pwned'), 'utf8'), 'x');
  });
  it('a hard link to a file outside the root', async () => {
    await assert.rejects(
      hostile([{ name: 'passwd', type: 'link', linkname: '../../../etc/passwd' }]),
      /climbs out of the image/,
    );
  });
  it('a device node outside /dev', async () => {
    await assert.rejects(
      hostile([{ name: 'usr/sda', type: 'block-device', devmajor: 8, devminor: 0 }]),
      /'usr\/sda' is a device node outside \/dev/,
    );
  });
});

describe('registry pulls behind the token flow (a real registry with token auth)', () => {
  let tokens: Awaited<ReturnType<typeof startTokenService>>;
  let reg: Awaited<ReturnType<typeof startRegistry>>;
  before(async () => {
    tokens = await startTokenService(dir('tokens'), ['forkd/denied']);
    reg = await startRegistry({ tokenAuth: tokens });
  });
  after(async () => {
    await reg?.stop();
    await tokens?.close();
  });

  it('answers the 401 challenge with a bearer token for the pull scope, then pulls', async () => {
    const { img } = await twoLayerImage('token-flow');
    await pushImage(reg.host, 'forkd/private', 'v1', img, undefined, await tokens.tokenFor('forkd/private'));
    const anon = await fetch(`http://${reg.host}/v2/forkd/private/manifests/v1`);
    assert.equal(anon.status, 401, 'the registry wants a token');
    const r = await resolveImage(`${reg.host}/forkd/private:v1`, silentReporter);
    assert.equal(r.manifest_digest, img.manifest.digest);
    checkTree(await unpack(r));
    assert.ok(
      tokens.seen.includes(`${tokens.service} repository:forkd/private:pull`),
      tokens.seen.join('; '),
    );
  });
  it('names a token service that refuses', async () => {
    await assert.rejects(
      resolveImage(`${reg.host}/forkd/denied:v1`, silentReporter),
      /token service .* answered HTTP 403 for forkd\/denied/,
    );
  });
});

describe('registry pulls (distribution API v2, a real registry on loopback)', () => {
  let reg: Awaited<ReturnType<typeof startRegistry>>;
  before(async () => (reg = await startRegistry()));
  after(async () => reg?.stop());

  it('resolves a multi-platform index to linux/amd64 and verifies every digest', async () => {
    const { img } = await twoLayerImage('registry');
    const arm = imageOf([{ tar: await tarOf([{ name: 'arm', data: 'arm64' }]) }], {}, { arch: 'arm64' });
    await pushImage(reg.host, 'forkd/multi', 'arm', arm);
    await pushImage(reg.host, 'forkd/multi', 'v1', img, indexOf(img, arm));
    const r = await resolveImage(`${reg.host}/forkd/multi:v1`, silentReporter);
    assert.equal(r.manifest_digest, img.manifest.digest);
    checkTree(await unpack(r));
    const byDigest = await resolveImage(`${reg.host}/forkd/multi@${img.manifest.digest}`, silentReporter);
    assert.equal(byDigest.config_digest, img.config.digest);
  });
  it('names a missing tag and an unreachable registry', async () => {
    await assert.rejects(resolveImage(`${reg.host}/forkd/multi:nope`, silentReporter), /does not exist/);
    await assert.rejects(
      resolveImage('127.0.0.1:1/forkd/x:v1', silentReporter),
      /cannot reach registry 127.0.0.1:1/,
    );
  });
});
