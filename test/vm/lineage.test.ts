/**
 * Snapshot lineage and portability on real VMs: a 3-link diff chain built with `snapshot-diff`, what
 * each link's children see, compaction, refusal of a changed parent, rmi, and packs moved to a fresh
 * data dir directly and through an HTTP store on loopback (push, registry.json, pull).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { execFileSync } from 'node:child_process';
import { cli, isolatedDirs } from '../helpers/env.js';
import { createSnapshot } from '../../src/snapshot/create.js';
import { loadSnapshot } from '../../src/snapshot/store.js';
import { memoryImage } from '../../src/snapshot/assemble.js';
import { fork } from '../../src/fork/fork.js';
import { sha256File } from '../../src/util/hash.js';
import { silentReporter, stderrReporter } from '../../src/util/report.js';
import { snapshotsDir } from '../../src/util/paths.js';

let dirs: ReturnType<typeof isolatedDirs>;
let work: string;
const VARS = "sorted(n for n in ('L1', 'L2', 'L3') if n in globals())";
/** What a child of each link must see: files under /root named l<N>, and the warm interpreter's vars. */
const EXPECT: Record<string, { files: string[]; vars: string[] }> = {
  c0: { files: [], vars: [] },
  c1: { files: ['l1'], vars: ['L1'] },
  c2: { files: ['l2'], vars: ['L1', 'L2'] },
  c3: { files: ['l2', 'l3'], vars: ['L1', 'L2', 'L3'] },
};
const LINKS = [
  { tag: 'c1', from: 'c0', exec: 'echo one > /root/l1', eval: "L1 = 'one'" },
  { tag: 'c2', from: 'c1', exec: 'echo two > /root/l2 && rm /root/l1', eval: "L2 = 'two'" },
  { tag: 'c3', from: 'c2', exec: 'echo three > /root/l3 && sync', eval: "L3 = 'three'" },
];

/** One child of `tag`: its l<N> files and the link variables its interpreter holds. */
async function observe(tag: string): Promise<{ files: string[]; vars: string[] }> {
  const r = await fork({ tag, n: 1, exec: 'ls /root', eval: VARS }, silentReporter);
  const c = r.children[0]!;
  assert.ok(c.ok, `${tag}: ${c.error}`);
  assert.ok(c.eval?.ok, `${tag}: ${JSON.stringify(c.eval?.error)}`);
  return {
    files: c
      .exec!.stdout.split(/\s+/)
      .filter((f) => /^l\d$/.test(f))
      .sort(),
    vars: JSON.parse(c.eval!.result!.replaceAll("'", '"')) as string[],
  };
}

function json<T = Record<string, unknown>>(r: { code: number | null; stdout: string; stderr: string }): T {
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as T;
}

describe('diff chains, compact and packs on real VMs', { timeout: 30 * 60_000 }, () => {
  before(async () => {
    dirs = isolatedDirs('chain');
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-chainwork-'));
    process.env.XDG_CONFIG_HOME = path.join(work, 'config');
    await createSnapshot({ tag: 'c0', recipe: 'python-numpy', warmupEval: 'import json' }, stderrReporter());
  });

  after(() => {
    dirs.cleanup();
    fs.rmSync(work, { recursive: true, force: true });
    delete process.env.XDG_CONFIG_HOME;
  });

  it('snapshot-diff builds a 3-link chain whose links store only deltas', async () => {
    for (const l of LINKS) {
      const r = json(
        await cli([
          'snapshot-diff',
          '--from',
          l.from,
          '--tag',
          l.tag,
          '--exec',
          l.exec,
          '--eval',
          l.eval,
          '--json',
        ]),
      );
      assert.equal(r.parent_tag, l.from);
      assert.ok(Number(r.diff_pages) > 0);
    }
    const info = json<{
      chain_depth: number;
      parent_tag: string;
      ancestors: string[];
      memory_kind: string;
      own_bytes: number;
    }>(await cli(['snapshot-info', 'c3', '--json']));
    assert.equal(info.chain_depth, 3);
    assert.equal(info.parent_tag, 'c2');
    assert.deepEqual(info.ancestors, ['c0', 'c1', 'c2']);
    assert.deepEqual(
      json<{ dependents: string[] }>(await cli(['snapshot-info', 'c0', '--json'])).dependents,
      ['c1'],
    );
    const base = loadSnapshot('c0').meta.files.memory.allocated;
    for (const t of ['c1', 'c2', 'c3']) {
      const d = json<{
        memory_kind: string;
        memory_physical_bytes: number;
        own_bytes: number;
        disk_bytes: number;
      }>(await cli(['snapshot-info', t, '--json']));
      assert.equal(d.memory_kind, 'diff');
      assert.ok(
        d.memory_physical_bytes < base / 4,
        `${t}: ${d.memory_physical_bytes} bytes of memory vs ${base} for the base`,
      );
      assert.ok(d.disk_bytes < 64 << 20, `${t}: disk layer ${d.disk_bytes}`);
      assert.ok(d.own_bytes < base / 2, `${t}: ${d.own_bytes} own bytes`);
    }
    const qinfo = JSON.parse(
      execFileSync('qemu-img', ['info', '--output=json', path.join(snapshotsDir(), 'c3', 'disk.qcow2')], {
        encoding: 'utf8',
      }),
    ) as { 'backing-filename': string };
    assert.equal(qinfo['backing-filename'], '../c2/disk.qcow2', 'the disk is a layer over the parent layer');
    const text = await cli(['snapshot-info', 'c3']);
    assert.match(text.stdout, /ancestors: +c0 → c1 → c2 \(root → parent\)/);
  });

  it("a child of each link sees exactly its link's changes", async () => {
    for (const tag of ['c0', 'c1', 'c2', 'c3']) assert.deepEqual(await observe(tag), EXPECT[tag], tag);
    const images = json<Array<{ tag: string; chain_depth: number; accelerator: string }>>(
      await cli(['images', '--json']),
    );
    assert.deepEqual(images.map((i) => [i.tag, i.chain_depth]).sort(), [
      ['c0', 0],
      ['c1', 1],
      ['c2', 2],
      ['c3', 3],
    ]);
  });

  it('compact equals the chain head byte for byte, in memory and disk content', async () => {
    const r = json(await cli(['snapshot-compact', '--from', 'c3', '--to', 'c3flat', '--json']));
    assert.equal(r.chain_depth, 0);
    assert.equal(r.parent_tag, null);
    const head = loadSnapshot('c3');
    const flat = loadSnapshot('c3flat');
    assert.equal(
      await sha256File(path.join(flat.dir, 'memory.bin')),
      await sha256File(await memoryImage(head)),
      'memory identical to the assembled chain head',
    );
    assert.equal(flat.meta.files.vmstate.sha256, head.meta.files.vmstate.sha256);
    execFileSync('qemu-img', [
      'compare',
      '-q',
      path.join(head.dir, 'disk.qcow2'),
      path.join(flat.dir, 'disk.qcow2'),
    ]);
    const q = JSON.parse(
      execFileSync('qemu-img', ['info', '--output=json', path.join(flat.dir, 'disk.qcow2')], {
        encoding: 'utf8',
      }),
    ) as {
      'backing-filename': string;
    };
    assert.equal(q['backing-filename'], 'base.ext4', 'the flat copy needs no parent layer');
    assert.deepEqual(await observe('c3flat'), EXPECT.c3);
  });

  it('pack → unpack on a fresh data dir → fork works (signed, verified)', async () => {
    json(await cli(['keygen', '--json']));
    const file = path.join(work, 'c3.forkd-snapshot.tar.zst');
    const p = await cli(['pack', '--tag', 'c3', '--out', file, '--sign', '--description', 'test chain']);
    assert.equal(p.code, 0, p.stderr);
    assert.match(
      p.stdout,
      /✓ wrote \S+ \S+ \(\S+ \S+ uncompressed; [\d.]+× compression\) \(4 chain links\) in [\d.]+s/,
    );
    const first = execFileSync('sh', ['-c', `zstd -dc '${file}' | tar -t | head -2`], {
      encoding: 'utf8',
    }).split('\n');
    assert.deepEqual(first.slice(0, 2), ['manifest.toml', 'manifest.sig']);
    const fresh = path.join(work, 'fresh');
    fs.mkdirSync(fresh);
    const env = { XDG_DATA_HOME: fresh };
    const u = json<{ head: string; links: Array<{ tag: string }>; signature: { state: string } }>(
      await cli(['unpack', file, '--require-signed', '--json'], { env }),
    );
    assert.equal(u.head, 'c3');
    assert.deepEqual(
      u.links.map((l) => l.tag),
      ['c0', 'c1', 'c2', 'c3'],
    );
    assert.equal(u.signature.state, 'trusted');
    const f = json<{ ok: number; children: Array<{ eval: { result: string } }> }>(
      await cli(['fork', '--tag', 'c3', '-n', '1', '--eval', VARS, '--json'], { env }),
    );
    assert.equal(f.ok, 1);
    assert.equal(f.children[0]!.eval.result, "['L1', 'L2', 'L3']");
  });

  it('push to and pull from an HTTP store on loopback: registry.json, sha256 and signer checked', async () => {
    const store = path.join(work, 'store');
    fs.mkdirSync(store);
    let registry = '{}';
    const server = http.createServer((req, res) => {
      const name = path.basename(new URL(req.url ?? '/', 'http://x').pathname);
      if (req.method === 'PUT') {
        if (!req.headers['content-length']) return void res.writeHead(411).end();
        req.pipe(fs.createWriteStream(path.join(store, name))).on('finish', () => res.writeHead(200).end());
      } else if (name === 'registry.json')
        res.writeHead(200, { 'content-type': 'application/json' }).end(registry);
      else if (fs.existsSync(path.join(store, name))) {
        res.writeHead(200, { 'content-length': fs.statSync(path.join(store, name)).size });
        fs.createReadStream(path.join(store, name)).pipe(res);
      } else res.writeHead(404).end();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const push = await cli([
        'push',
        '--tag',
        'c3',
        `${base}/packs/c3.tar.zst?X-Signature=secret`,
        '--sign',
        '--json',
      ]);
      assert.doesNotMatch(
        push.stdout + push.stderr,
        /secret/,
        'a presigned URL is a credential: never printed',
      );
      const pushed = json<{ sha256: string; size_bytes: number; signed_by: string }>(push);
      assert.equal(pushed.size_bytes, fs.statSync(path.join(store, 'c3.tar.zst')).size);
      const entry = { url: `${base}/packs/c3.tar.zst`, sha256: pushed.sha256, size_bytes: pushed.size_bytes };
      registry = JSON.stringify({
        schema_version: 1,
        packages: {
          'acme/chain': {
            description: 'test chain',
            versions: {
              v1: { ...entry, signer: pushed.signed_by },
              latest: entry,
              corrupt: { ...entry, sha256: 'ab'.repeat(32) },
              wrongsigner: { ...entry, signer: '0123456789abcdef' },
            },
          },
        },
      });
      const pullEnv = (d: string) => {
        fs.mkdirSync(path.join(work, d));
        return { XDG_DATA_HOME: path.join(work, d), FORKD_HUB_URL: `${base}/registry.json` };
      };
      const env1 = pullEnv('pull1');
      const r = json<{ head: string; sha256_checked: boolean; signature: { state: string } }>(
        await cli(['pull', 'acme/chain@v1', '--tag', 'pulled', '--require-signed', '--json'], { env: env1 }),
      );
      assert.equal(r.head, 'pulled');
      assert.equal(r.sha256_checked, true);
      assert.equal(r.signature.state, 'trusted');
      const imgs = json<Array<{ tag: string }>>(await cli(['images', '--json'], { env: env1 }));
      assert.deepEqual(imgs.map((i) => i.tag).sort(), ['c0', 'c1', 'c2', 'pulled']);

      for (const [ver, msg] of [
        ['corrupt', /sha256 mismatch/],
        ['wrongsigner', /registry entry names signer 0123456789abcdef/],
        ['v9', /has no version 'v9'/],
      ] as const) {
        const env = pullEnv(`pull-${ver}`);
        const bad = await cli(['pull', `acme/chain@${ver}`], { env });
        assert.notEqual(bad.code, 0);
        assert.match(bad.stderr, msg);
        const left = fs.existsSync(path.join(env.XDG_DATA_HOME, 'forkd', 'snapshots'))
          ? fs.readdirSync(path.join(env.XDG_DATA_HOME, 'forkd', 'snapshots'))
          : [];
        assert.deepEqual(left, [], `${ver}: nothing unpacked or left behind`);
      }
      // latest: no signer pinned, unsigned allowed, straight URL works too.
      const env2 = pullEnv('pull2');
      json(await cli(['pull', `${base}/packs/c3.tar.zst`, '--json'], { env: env2 }));
    } finally {
      server.close();
    }
  });

  it('a modified or re-created parent is refused, naming the link', async () => {
    const diff = path.join(snapshotsDir(), 'c1', 'memory.diff');
    const st = fs.statSync(diff);
    fs.utimesSync(diff, st.atime, new Date(st.mtimeMs + 5000));
    await assert.rejects(
      () => fork({ tag: 'c3', n: 1 }, silentReporter),
      /snapshot 'c1'.*modified after the snapshot was saved/,
    );
    // Back to the recorded mtime (+0.5 ms so float seconds cannot round below it).
    const recorded = loadSnapshot('c1').meta.files.memory.mtime_ms;
    fs.utimesSync(diff, st.atime, (recorded + 0.5) / 1000);
    assert.deepEqual(await observe('c3'), EXPECT.c3, 'restored: the chain works again');

    const rm = await cli(['rmi', '--force', 'c2']);
    assert.equal(rm.code, 0, rm.stderr);
    json(
      await cli([
        'snapshot-diff',
        '--from',
        'c1',
        '--tag',
        'c2',
        '--exec',
        'echo other > /root/other',
        '--json',
      ]),
    );
    const f = await cli(['fork', '--tag', 'c3', '-n', '1']);
    assert.notEqual(f.code, 0);
    assert.match(f.stderr, /'c3' was made on parent 'c2' with content \w+.*, but 'c2' now has content/);
    assert.deepEqual(await observe('c3flat'), EXPECT.c3, 'the compacted copy does not depend on the chain');
  });

  it('rmi refuses to orphan dependents; --cascade removes the subtree leaves first', async () => {
    const r = await cli(['rmi', 'c1']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /has dependents: c2/);
    assert.equal((await cli(['rmi', '--cascade', '--force', 'c1'])).code, 2);
    const del = json<Array<{ deleted: string[] }>>(await cli(['rmi', '--cascade', 'c0', '--json']));
    assert.deepEqual(del[0]!.deleted, ['c3', 'c2', 'c1', 'c0']);
    assert.deepEqual(
      json<Array<{ tag: string }>>(await cli(['images', '--json'])).map((i) => i.tag),
      ['c3flat'],
    );
  });
});
