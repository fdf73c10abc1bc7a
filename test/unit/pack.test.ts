/**
 * Packs without VMs: a fake 3-link chain (real layout, valid metadata) is packed and unpacked, then
 * hostile variants of the pack are fed to unpack. Each must be refused with nothing left behind.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import tar from 'tar-stream';
import { isolatedDirs } from '../helpers/env.js';
import { fakeSnapshot } from '../helpers/fake-snapshot.js';
import { snapshotsDir } from '../../src/util/paths.js';
import { silentReporter } from '../../src/util/report.js';
import { ForkdError } from '../../src/util/errors.js';
import { loadSnapshot } from '../../src/snapshot/store.js';
import { resolveChain } from '../../src/snapshot/assemble.js';
import { packSnapshot } from '../../src/hub/pack.js';
import { unpackSnapshot, type UnpackOptions } from '../../src/hub/unpack.js';
import { parseManifest, renderManifest } from '../../src/hub/manifest.js';
import { generateKey, untrustKey } from '../../src/hub/signing.js';
import { sha256File } from '../../src/util/hash.js';

interface RawEntry {
  name: string;
  body: Buffer;
  type?: tar.Header['type'];
  linkname?: string;
  size?: number;
}

let dirs: ReturnType<typeof isolatedDirs>;
let work: string;
const srcData = () => dirs.data;

/** Point forkd at a fresh, empty data dir (as on another host). */
function freshDataDir(name: string): string {
  const d = path.join(work, name);
  fs.mkdirSync(d, { recursive: true });
  process.env.XDG_DATA_HOME = d;
  return d;
}

async function readEntries(file: string): Promise<RawEntry[]> {
  const raw = execFileSync('zstd', ['-dc', file], { maxBuffer: 1 << 30 });
  const out: RawEntry[] = [];
  const ex = tar.extract();
  ex.end(raw);
  for await (const entry of ex) {
    const parts: Buffer[] = [];
    for await (const d of entry) parts.push(d as Buffer);
    out.push({ name: entry.header.name, body: Buffer.concat(parts) });
  }
  return out;
}

async function craft(entries: RawEntry[], file: string): Promise<string> {
  const p = tar.pack();
  const chunks: Buffer[] = [];
  p.on('data', (d: unknown) => chunks.push(d as Buffer));
  const ended = new Promise<void>((r) => p.on('end', () => r()));
  for (const e of entries) {
    if (e.type && e.type !== 'file')
      p.entry({ name: e.name, type: e.type, ...(e.linkname ? { linkname: e.linkname } : {}), size: 0 });
    else p.entry({ name: e.name, size: e.body.length }, e.body);
  }
  p.finalize();
  await ended;
  execFileSync('zstd', ['-q', '-f', '-o', file], { input: Buffer.concat(chunks) });
  return file;
}

/** Unpack must fail with `code`, leaving the snapshots dir exactly as it was. */
async function refused(
  file: string,
  code: string,
  match: RegExp,
  opts: Partial<UnpackOptions> = {},
): Promise<void> {
  const before = fs.existsSync(snapshotsDir()) ? fs.readdirSync(snapshotsDir()).sort() : [];
  await assert.rejects(
    () => unpackSnapshot({ file, ...opts }, silentReporter),
    (e: unknown) => {
      assert.ok(e instanceof ForkdError, String(e));
      assert.equal(e.code, code, e.message);
      assert.match(e.message, match);
      return true;
    },
  );
  const after = fs.existsSync(snapshotsDir()) ? fs.readdirSync(snapshotsDir()).sort() : [];
  assert.deepEqual(after, before, 'unpack left something behind');
}

describe('snapshot packs', () => {
  let chainPack: string;
  let rootPack: string;

  before(async () => {
    dirs = isolatedDirs('pack');
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-packwork-'));
    process.env.XDG_CONFIG_HOME = path.join(work, 'config');
    fakeSnapshot('root');
    fakeSnapshot('mid', { parent: 'root', baseFrom: 'root' });
    fakeSnapshot('head', { parent: 'mid', baseFrom: 'root' });
    chainPack = (
      await packSnapshot({ tag: 'head', out: path.join(work, 'head.forkd-snapshot.tar.zst') }, silentReporter)
    ).out;
    rootPack = (
      await packSnapshot({ tag: 'root', out: path.join(work, 'root.forkd-snapshot.tar.zst') }, silentReporter)
    ).out;
  });

  after(() => {
    dirs.cleanup();
    fs.rmSync(work, { recursive: true, force: true });
    delete process.env.XDG_CONFIG_HOME;
  });

  it('writes manifest.toml first, bundling every chain link and the shared root disk once', async () => {
    const entries = await readEntries(chainPack);
    assert.equal(entries[0]!.name, 'manifest.toml');
    const m = parseManifest(entries[0]!.body);
    assert.equal(m.forkd_pack_version, 2);
    assert.equal(m.tag, 'head');
    assert.deepEqual(
      m.chain.map((l) => l.tag),
      ['root', 'mid', 'head'],
    );
    assert.equal(m.blobs.length, 1, 'three links share one base: it travels once');
    assert.equal(entries.filter((e) => e.name.startsWith('blobs/')).length, 1);
    assert.deepEqual(m.chain[2]!.files.map((f) => f.path).sort(), [
      'disk.qcow2',
      'memory.diff',
      'snapshot.json',
      'vmstate',
    ]);
    assert.equal(
      m.uncompressed_bytes,
      entries.slice(1).reduce((s, e) => s + e.body.length, 0),
    );
  });

  it('refuses to overwrite an existing output without --force', async () => {
    await assert.rejects(
      () => packSnapshot({ tag: 'root', out: rootPack }, silentReporter),
      /already exists/,
    );
  });

  it('unpacks on a fresh data dir: identical files, sparse memory, a chain that resolves', async () => {
    const origin = srcData();
    freshDataDir('fresh1');
    const r = await unpackSnapshot({ file: chainPack }, silentReporter);
    assert.equal(r.head, 'head');
    assert.deepEqual(
      r.links.map((l) => [l.tag, l.reused]),
      [
        ['root', false],
        ['mid', false],
        ['head', false],
      ],
    );
    for (const tag of ['root', 'mid', 'head']) {
      const s = loadSnapshot(tag);
      for (const f of Object.values(s.meta.files)) {
        const here = path.join(s.dir, f.path);
        assert.equal(await sha256File(here), f.sha256, `${tag}/${f.path}`);
        assert.equal(await sha256File(path.join(origin, 'forkd', 'snapshots', tag, f.path)), f.sha256);
      }
      assert.equal(s.meta.origin.kind, 'unpack');
    }
    const head = loadSnapshot('head');
    assert.deepEqual(
      resolveChain(head).map((l) => l.tag),
      ['root', 'mid', 'head'],
      'mtimes were re-recorded, hashes still pin each parent',
    );
    const mem = fs.statSync(path.join(snapshotsDir(), 'root', 'memory.bin'));
    assert.ok(
      mem.blocks * 512 < mem.size / 2,
      `memory.bin stays sparse (${mem.blocks * 512} of ${mem.size})`,
    );
    const inode = (t: string) => fs.statSync(path.join(snapshotsDir(), t, 'base.ext4')).ino;
    assert.equal(inode('root'), inode('head'), 'links share one root disk on disk too');
    assert.deepEqual(
      fs.readdirSync(snapshotsDir()).filter((n) => n.startsWith('.')),
      [],
      'no staging left',
    );
  });

  it('reuses identical links, renames the head with --tag, and dedupes a root disk it already has', async () => {
    const again = await unpackSnapshot({ file: chainPack }, silentReporter);
    assert.ok(again.links.every((l) => l.reused));
    const renamed = await unpackSnapshot({ file: chainPack, tag: 'head2' }, silentReporter);
    assert.deepEqual(
      renamed.links.map((l) => [l.tag, l.reused]),
      [
        ['root', true],
        ['mid', true],
        ['head2', false],
      ],
    );
    assert.deepEqual(
      resolveChain(loadSnapshot('head2')).map((l) => l.tag),
      ['root', 'mid', 'head2'],
    );
    const other = await unpackSnapshot({ file: rootPack, tag: 'root-copy' }, silentReporter);
    assert.equal(other.dedupedBlobs, 1);
    assert.equal(
      fs.statSync(path.join(snapshotsDir(), 'root-copy', 'base.ext4')).ino,
      fs.statSync(path.join(snapshotsDir(), 'root', 'base.ext4')).ino,
    );
  });

  it('refuses a tag that exists with different content unless --force', async () => {
    freshDataDir('fresh-conflict');
    fakeSnapshot('root');
    await refused(rootPack, 'exists', /already exists here with different content/);
    const r = await unpackSnapshot({ file: rootPack, force: true }, silentReporter);
    assert.equal(r.links[0]!.replaced, true);
    assert.equal(loadSnapshot('root').meta.origin.kind, 'unpack');
  });

  describe('hostile packs are refused with nothing written outside staging', () => {
    let good: RawEntry[];
    const evil = path.join(os.tmpdir(), `forkd-evil-${randomBytes(4).toString('hex')}`);
    before(async () => {
      good = await readEntries(rootPack);
      freshDataDir('hostile');
    });
    const file = (n: string) => path.join(work, `${n}.tar.zst`);
    const replaceBody = (name: string, body: Buffer) =>
      good.map((e) => (e.name === name ? { ...e, body } : e));
    const withManifest = (edit: (m: ReturnType<typeof parseManifest>) => void) => {
      const m = parseManifest(good[0]!.body);
      edit(m);
      return [{ name: 'manifest.toml', body: renderManifest(m) }, ...good.slice(1)];
    };

    it('path traversal', async () => {
      await refused(
        await craft([...good, { name: '../../evil', body: Buffer.from('x') }], file('trav')),
        'bad_pack',
        /path traversal/,
      );
      await refused(
        await craft([good[0]!, { name: 'root/../../evil', body: Buffer.from('x') }], file('trav2')),
        'bad_pack',
        /traversal/,
      );
      assert.equal(fs.existsSync(path.join(snapshotsDir(), '..', 'evil')), false);
    });
    it('absolute path', async () => {
      await refused(
        await craft([...good, { name: evil, body: Buffer.from('x') }], file('abs')),
        'bad_pack',
        /absolute/,
      );
      assert.equal(fs.existsSync(evil), false);
    });
    it('symlink, hard link and device entries', async () => {
      const swap = (type: tar.Header['type'], linkname?: string) =>
        good.map((e) =>
          e.name === 'root/vmstate'
            ? { name: e.name, body: Buffer.alloc(0), type, ...(linkname ? { linkname } : {}) }
            : e,
        );
      await refused(await craft(swap('symlink', '/etc/passwd'), file('sym')), 'bad_pack', /symlink/);
      await refused(await craft(swap('link', 'root/memory.bin'), file('hard')), 'bad_pack', /is a link/);
      await refused(await craft(swap('character-device'), file('dev')), 'bad_pack', /character-device/);
    });
    it('content that does not match its sha256', async () => {
      const vm = good.find((e) => e.name === 'root/vmstate')!;
      const flipped = Buffer.from(vm.body);
      flipped[100] = flipped[100]! ^ 0xff;
      await refused(
        await craft(replaceBody('root/vmstate', flipped), file('sha')),
        'bad_pack',
        /sha256 mismatch for 'root\/vmstate'/,
      );
    });
    it('an entry whose size differs from the manifest', async () => {
      const vm = good.find((e) => e.name === 'root/vmstate')!;
      await refused(
        await craft(replaceBody('root/vmstate', vm.body.subarray(0, 100)), file('size')),
        'bad_pack',
        /the manifest says/,
      );
    });
    it('a truncated pack', async () => {
      const whole = fs.readFileSync(rootPack);
      fs.writeFileSync(file('cut'), whole.subarray(0, Math.floor(whole.length * 0.6)));
      await refused(file('cut'), 'bad_pack', /truncated|unreadable|decompress/);
      await refused(await craft(good.slice(0, -1), file('missing')), 'bad_pack', /truncated: missing/);
    });
    it('a pack larger than the free disk', async () => {
      const huge = withManifest((m) => {
        m.blobs[0]!.size = 2 ** 50;
        m.uncompressed_bytes = m.blobs[0]!.size + m.chain[0]!.files.reduce((s, f) => s + f.size, 0);
      });
      await refused(await craft(huge, file('huge')), 'out_of_space', /only .* is free/);
    });
    it('unsafe tags, undeclared or duplicate entries, no manifest', async () => {
      const unsafe = parseManifest(good[0]!.body);
      const text = renderManifest(unsafe).toString().replaceAll('"root"', '"../root"');
      await refused(
        await craft([{ name: 'manifest.toml', body: Buffer.from(text) }, ...good.slice(1)], file('tag')),
        'bad_pack',
        /unsafe or invalid tag/,
      );
      await refused(
        await craft([...good, { name: 'root/extra', body: Buffer.from('x') }], file('undecl')),
        'bad_pack',
        /not declared/,
      );
      await refused(await craft([...good, good[2]!], file('dup')), 'bad_pack', /appears twice/);
      await refused(await craft(good.slice(1), file('nomani')), 'bad_pack', /not manifest.toml/);
    });
    it('metadata inside that contradicts the manifest', async () => {
      const sj = good.find((e) => e.name === 'root/snapshot.json')!;
      const meta = JSON.parse(sj.body.toString());
      meta.tag = 'other';
      const body = Buffer.from(JSON.stringify(meta));
      const m = parseManifest(good[0]!.body);
      const f = m.chain[0]!.files.find((x) => x.path === 'snapshot.json')!;
      f.size = body.length;
      f.sha256 = (await import('node:crypto')).createHash('sha256').update(body).digest('hex');
      m.uncompressed_bytes = m.blobs[0]!.size + m.chain[0]!.files.reduce((s, x) => s + x.size, 0);
      const entries = [
        { name: 'manifest.toml', body: renderManifest(m) },
        ...replaceBody('root/snapshot.json', body).slice(1),
      ];
      await refused(await craft(entries, file('meta')), 'bad_pack', /does not match the manifest/);
    });
  });

  describe('signatures', () => {
    let signed: string;
    let keyId: string;
    before(async () => {
      process.env.XDG_DATA_HOME = srcData();
      const k = generateKey('release');
      keyId = k.keyId;
      signed = (
        await packSnapshot(
          { tag: 'root', out: path.join(work, 'signed.tar.zst'), signKey: k.privatePath },
          silentReporter,
        )
      ).out;
      freshDataDir('signed');
    });

    it('verifies a signed pack from a trusted key, and refuses unsigned ones when asked', async () => {
      const entries = await readEntries(signed);
      assert.equal(entries[1]!.name, 'manifest.sig');
      const r = await unpackSnapshot({ file: signed, requireSigned: true }, silentReporter);
      assert.deepEqual(r.signature, { state: 'trusted', keyId });
      await refused(rootPack, 'untrusted', /not signed/, { requireSigned: true, tag: 'x1' });
    });

    it('detects a tampered manifest (signature no longer verifies), even without --require-signed', async () => {
      const entries = await readEntries(signed);
      const m = parseManifest(entries[0]!.body);
      m.description = 'innocent change';
      const tampered = [{ name: 'manifest.toml', body: renderManifest(m) }, ...entries.slice(1)];
      await refused(
        await craft(tampered, path.join(work, 'tampered.tar.zst')),
        'untrusted',
        /modified after it was signed/,
        { tag: 'x2' },
      );
    });

    it('refuses a valid signature from a key that is not trusted when signatures are required', async () => {
      untrustKey(keyId);
      await refused(signed, 'untrusted', /not trusted here/, { requireSigned: true, tag: 'x3' });
      const ok = await unpackSnapshot({ file: signed, tag: 'x4' }, silentReporter);
      assert.deepEqual(ok.signature, { state: 'untrusted', keyId });
      await refused(signed, 'untrusted', /registry entry names signer/, {
        expectedKeyId: '0123456789abcdef',
        tag: 'x5',
      });
    });
  });
});
