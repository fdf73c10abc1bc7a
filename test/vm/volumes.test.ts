/**
 * Volumes on real VMs: ext4 image files attached as block devices and mounted in every sandbox. `ro`
 * is shared by all children (and read-only in each); a writable volume gives each child its own
 * copy-on-write layer (siblings never see its writes, the file never changes); `:shared` is the file
 * itself for a single writer (a second is refused). A spawn may swap a volume's file; bad volumes are
 * refused by name before anything starts.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { cli } from '../helpers/env.js';
import { inProcessController } from '../helpers/controller.js';
import { createSnapshot } from '../../src/snapshot/create.js';
import { fork } from '../../src/fork/fork.js';
import { parseVolume } from '../../src/snapshot/volumes.js';
import { sha256File } from '../../src/util/hash.js';
import { silentReporter } from '../../src/util/report.js';

let srv: Awaited<ReturnType<typeof inProcessController>>;
let work: string;

/** An ext4 image holding `files`, made without mounts (mkfs.ext4 -d). */
function ext4(name: string, files: Record<string, string>, mib = 16): string {
  const dir = path.join(work, `${name}.d`);
  fs.mkdirSync(dir, { recursive: true });
  for (const [f, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, f), text);
  const img = path.join(work, `${name}.ext4`);
  execFileSync('mkfs.ext4', ['-q', '-F', '-d', dir, img, `${mib}M`]);
  return img;
}

/** A file inside an ext4 image, read on the host without mounting it. */
const catIn = (img: string, file: string) =>
  execFileSync('debugfs', ['-R', `cat /${file}`, img], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
  });

describe('volumes on real VMs', { timeout: 30 * 60_000 }, () => {
  before(async () => {
    srv = await inProcessController('volumes');
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-volumes-'));
  });
  after(async () => {
    if (srv) {
      const list = (await srv.app.inject({ method: 'GET', url: '/v1/sandboxes' })).json() as Array<{
        id: string;
      }>;
      for (const sb of list) await srv.app.inject({ method: 'DELETE', url: `/v1/sandboxes/${sb.id}` });
    }
    await srv?.close();
    fs.rmSync(work, { recursive: true, force: true });
  });

  it('refuses a missing file, a directory, a non-ext4 file, a bad guest path and too many volumes, by name', async () => {
    const ok = ext4('ok', { a: 'a' });
    fs.writeFileSync(path.join(work, 'plain.bin'), Buffer.alloc(4096));
    const cases: Array<[string[], RegExp]> = [
      [['--volume', `${work}/nope.ext4:/data`], /nope.ext4 does not exist/],
      [['--volume', `${work}:/data`], /is a directory; volumes are ext4 image files/],
      [['--volume', `${work}/plain.bin:/data`], /is not an ext4 image/],
      [['--volume', `${ok}:data`], /guest path 'data' is not absolute/],
      [['--volume', `${ok}:/proc/x`], /\/proc belongs to the guest system/],
      [['--volume', `${ok}:/data:rw`], /'rw' is not a mode/],
      [
        Array.from({ length: 25 }, (_, i) => ['--volume', `${ok}:/d${i}`]).flat(),
        /25 volumes given; at most 24/,
      ],
    ];
    for (const [args, msg] of cases) {
      const r = await cli(['snapshot', '--tag', 'never', ...args]);
      assert.notEqual(r.code, 0, args.join(' '));
      assert.match(r.stderr, msg);
    }
    assert.equal(fs.existsSync(path.join(srv.dirs.data, 'forkd', 'snapshots', 'never')), false);
  });

  it('ro is shared and read-only; a writable volume is copy-on-write per child; the files never change', async () => {
    const ro = ext4('ro', { 'data.txt': 'shared data\n' });
    const rw = ext4('rw', { 'seed.txt': 'seed\n' });
    const before = [await sha256File(ro), await sha256File(rw)];
    const made = await createSnapshot(
      {
        tag: 'vol',
        recipe: 'python-numpy',
        volumes: [parseVolume(`${ro}:/data/ro:ro`), parseVolume(`${rw}:/data/rw`)],
        warmup: 'cat /data/ro/data.txt && echo parent > /data/rw/parent.txt',
      },
      silentReporter,
    );
    assert.deepEqual(
      made.meta.volumes?.map((v) => [v.guest_path, v.mode]),
      [
        ['/data/ro', 'ro'],
        ['/data/rw', 'cow'],
      ],
    );
    const r = await fork(
      {
        tag: 'vol',
        n: 3,
        exec: 'cat /data/ro/data.txt; touch /data/ro/x 2>/dev/null && echo RO-WRITABLE; echo $(hostname) > /data/rw/$(hostname); sync; ls /data/rw',
      },
      silentReporter,
    );
    assert.equal(r.ok, 3, JSON.stringify(r.children.map((c) => c.error)));
    for (const c of r.children) {
      const lines = c.exec!.stdout.trim().split('\n');
      assert.equal(lines[0], 'shared data');
      assert.ok(!lines.includes('RO-WRITABLE'), 'a ro volume is read-only in the guest');
      // Its own file, the parent's warm-up write, the seed: never a sibling's.
      assert.deepEqual(
        lines
          .slice(1)
          .filter((l) => l !== 'lost+found')
          .sort(),
        [c.hostname, 'parent.txt', 'seed.txt'].sort(),
      );
    }
    assert.deepEqual([await sha256File(ro), await sha256File(rw)], before, 'the host files are untouched');
  });

  it(':shared writes reach the file, for one writer at a time', async () => {
    const sh = ext4('shared', { 'log.txt': 'start\n' });
    await createSnapshot(
      { tag: 'volsh', recipe: 'python-numpy', volumes: [parseVolume(`${sh}:/shared:shared`)] },
      silentReporter,
    );
    const r = await fork(
      { tag: 'volsh', n: 2, exec: 'echo $(hostname) >> /shared/log.txt; sync' },
      silentReporter,
    );
    const ok = r.children.filter((c) => c.ok);
    assert.equal(ok.length, 1, 'one writer');
    assert.match(r.children.find((c) => !c.ok)!.error!, /is a shared volume already written by the sandbox/);
    assert.equal(catIn(sh, 'log.txt'), `start\n${ok[0]!.hostname}\n`);
    // The writer is gone: the next one may take it.
    const again = await fork({ tag: 'volsh', n: 1, exec: 'cat /shared/log.txt' }, silentReporter);
    assert.equal(again.ok, 1, again.children[0]!.error);
  });

  it('REST spawn swaps a volume for another file of the same size; other changes are refused', async () => {
    const other = ext4('other', { 'seed.txt': 'another seed\n' });
    const spawn = (volumes: string[]) =>
      srv.app.inject({ method: 'POST', url: '/v1/sandboxes', payload: { snapshot_tag: 'vol', volumes } });
    const res = await spawn([`${other}:/data/rw`]);
    assert.equal(res.statusCode, 201, res.body);
    const id = (res.json() as Array<{ id: string }>)[0]!.id;
    const ex = await srv.app.inject({
      method: 'POST',
      url: `/v1/sandboxes/${id}/exec`,
      payload: { cmd: 'cat /data/rw/seed.txt /data/ro/data.txt' },
    });
    assert.equal((ex.json() as { stdout: string }).stdout, 'another seed\nshared data\n');
    const small = ext4('small', { a: 'b' }, 8);
    const wrongSize = await spawn([`${small}:/data/rw`]);
    assert.equal(wrongSize.statusCode, 400);
    assert.match(wrongSize.body, /is 8388608 bytes, but the snapshot's is 16777216/);
    const unknown = await spawn([`${other}:/elsewhere`]);
    assert.equal(unknown.statusCode, 400);
    assert.match(unknown.body, /has no volume at \/elsewhere/);
    const missing = await spawn([`${work}/gone.ext4:/data/rw`]);
    assert.equal(missing.statusCode, 404);
  });
});
