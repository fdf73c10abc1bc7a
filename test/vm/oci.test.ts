/**
 * Guests from OCI/Docker images on real VMs, with no Docker engine: images the test builds itself (one
 * of the host's static busybox alone: no libc, no Node, no Python; one of the Debian recipe's root
 * filesystem), served by a real registry on loopback, a docker save tarball and an OCI layout; then
 * snapshot, fork, exec, eval and `forkd run`.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cli, isolatedDirs } from '../helpers/env.js';
import { buildImage } from '../../src/image/build.js';
import { silentReporter } from '../../src/util/report.js';
import {
  busyboxLayer,
  layerFromExt4,
  dockerArchive,
  imageOf,
  pushImage,
  startRegistry,
  tarOf,
  writeOciLayout,
} from '../helpers/oci.js';

let dirs: ReturnType<typeof isolatedDirs>;
let work: string;
let reg: Awaited<ReturnType<typeof startRegistry>>;

function json<T = Record<string, unknown>>(r: { code: number | null; stdout: string; stderr: string }): T {
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as T;
}

interface ForkJson {
  ok: number;
  children: Array<{
    ok: boolean;
    error?: string;
    hostname: string;
    exec?: { stdout: string; stderr: string; exit_code: number };
  }>;
}

describe('guests from OCI images on real VMs', { timeout: 30 * 60_000 }, () => {
  before(async () => {
    dirs = isolatedDirs('oci');
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-oci-vm-'));
    reg = await startRegistry();
  });
  after(async () => {
    await reg?.stop();
    fs.rmSync(work, { recursive: true, force: true });
    dirs?.cleanup();
  });

  it('a busybox-only image (no libc, Node or Python) from a registry: snapshot, fork, exec, run', async () => {
    const layer = await busyboxLayer([
      { name: 'srv/', type: 'directory' },
      { name: 'srv/hello.txt', data: 'hello from the image\n' },
    ]);
    const img = imageOf([{ tar: layer }], {
      Env: ['GREETING=hi there', 'PATH=/bin'],
      WorkingDir: '/srv',
      Cmd: ['cat', 'hello.txt'],
    });
    await pushImage(reg.host, 'test/busybox', 'v1', img);
    const ref = `${reg.host}/test/busybox:v1`;
    const made = json<{
      snapshot: {
        guest: { python: string | null; node: string; oci: { manifest_digest: string; working_dir: string } };
      };
    }>(await cli(['from-image', ref, '--tag', 'bb', '--json']));
    assert.equal(made.snapshot.guest.python, null);
    assert.equal(made.snapshot.guest.node, process.version, 'the agent runs on the runtime forkd brought');
    assert.equal(made.snapshot.guest.oci.manifest_digest, img.manifest.digest);
    assert.equal(made.snapshot.guest.oci.working_dir, '/srv');

    const f = json<ForkJson>(
      await cli([
        'fork',
        '--tag',
        'bb',
        '-n',
        '2',
        '--exec',
        'echo "$GREETING in $(pwd)"; echo $RANDOM > /srv/mine; cat hello.txt',
        '--json',
      ]),
    );
    assert.equal(f.ok, 2, JSON.stringify(f.children.map((c) => c.error)));
    for (const c of f.children) assert.equal(c.exec!.stdout, 'hi there in /srv\nhello from the image\n');

    // `run`: the image's own Cmd by default, a command's exit code, JS eval, and Python named as missing.
    const dflt = await cli(['run', '--tag', 'bb']);
    assert.equal(dflt.code, 0, dflt.stderr);
    assert.equal(dflt.stdout, 'hello from the image\n');
    const code = await cli(['run', '--tag', 'bb', '--', 'sh', '-c', 'echo out; echo err >&2; exit 7']);
    assert.equal(code.code, 7, code.stderr);
    assert.equal(code.stdout, 'out\n');
    assert.match(code.stderr, /err/);
    const js = await cli(['run', '--tag', 'bb', '--lang', 'js', '--eval', '[1, 2].map((x) => x * 21)']);
    assert.equal(js.code, 0, js.stderr);
    assert.match(js.stdout, /\[ 21, 42 \]/);
    const py = await cli(['run', '--tag', 'bb', '--eval', '1 + 1']);
    assert.notEqual(py.code, 0);
    assert.match(py.stderr, /python3 is not installed in this guest/);

    const images = json<Array<{ tag: string }>>(await cli(['images', '--json']));
    assert.deepEqual(
      images.map((i) => i.tag),
      ['bb'],
      '`run --tag` made and left no snapshot',
    );
  });

  it("--start: the image's Entrypoint + Cmd starts in the parent and runs in every sandbox", async () => {
    const layer = await busyboxLayer();
    const img = imageOf([{ tar: layer }], {
      Entrypoint: ['sh', '-c'],
      Cmd: ['echo "up as $(id -u)" > /tmp/up; exec sleep 100000'],
      User: '65534',
    });
    const tarball = path.join(work, 'svc.tar');
    fs.writeFileSync(tarball, await dockerArchive(img, [layer]));
    const made = json<{ snapshot: { guest: { oci: { started: boolean } } } }>(
      await cli(['from-image', `docker-archive:${tarball}`, '--tag', 'svc', '--start', '--json']),
    );
    assert.equal(made.snapshot.guest.oci.started, true);
    const f = json<ForkJson>(
      await cli([
        'fork',
        '--tag',
        'svc',
        '-n',
        '2',
        '--exec',
        'cat /tmp/up; ps -o user,args | grep -c "[s]leep 100000"',
        '--json',
      ]),
    );
    assert.equal(f.ok, 2, JSON.stringify(f.children.map((c) => c.error)));
    for (const c of f.children) assert.equal(c.exec!.stdout, 'up as 65534\n1\n');
    assert.equal(json<unknown>(await cli(['rmi', 'svc', '--json'])) !== undefined, true);
  });

  it('`run --image` from a docker save tarball and an OCI layout leaves nothing behind', async () => {
    const layer = await busyboxLayer([{ name: 'etc/motd', data: 'from a tarball\n' }]);
    const img = imageOf([{ tar: layer, compression: 'none' }], {
      Entrypoint: ['cat'],
      Cmd: ['/etc/motd'],
      User: '65534',
    });
    const tarball = path.join(work, 'bb.tar');
    fs.writeFileSync(tarball, await dockerArchive(img, [layer]));
    const a = await cli(['run', '--image', `docker-archive:${tarball}`]);
    assert.equal(a.code, 0, a.stderr);
    assert.equal(a.stdout, 'from a tarball\n');
    const who = await cli(['run', '--image', `docker-archive:${tarball}`, '--', 'id', '-u']);
    assert.equal(who.stdout, '65534\n', "the image's User runs its commands");
    const layout = path.join(work, 'layout');
    writeOciLayout(
      layout,
      imageOf([{ tar: await tarOf([...[{ name: 'x', data: 'y' }]]) }, { tar: layer, compression: 'zstd' }]),
      'v2',
    );
    const b = await cli(['run', '--image', `oci:${layout}:v2`, '--', 'cat', '/x']);
    assert.equal(b.code, 0, b.stderr);
    assert.equal(b.stdout, 'y');
    const images = json<Array<{ tag: string }>>(await cli(['images', '--json']));
    assert.deepEqual(
      images.map((i) => i.tag),
      ['bb'],
      'run --image removed its snapshot',
    );
  });

  it('a Debian image (the recipe root as one layer) from the registry, --extra from apt: Python eval works, children are isolated', async () => {
    const recipe = await buildImage({ recipe: 'python-numpy' }, silentReporter);
    const raw = layerFromExt4(recipe.rootfs.path, work);
    const img = imageOf([{ tar: raw, compression: 'none' }], { Env: ['FROM_IMAGE=debian'] });
    await pushImage(reg.host, 'test/debian', 'bookworm', img);
    const made = json<{ snapshot: { guest: { python: string | null; numpy: string | null } } }>(
      await cli([
        'from-image',
        `${reg.host}/test/debian:bookworm`,
        '--tag',
        'deb',
        '--extra',
        'jq',
        '--json',
      ]),
    );
    assert.ok(made.snapshot.guest.python, 'python3 found in the image');
    const f = json<ForkJson & { children: Array<{ eval?: { ok: boolean; result: string } }> }>(
      await cli([
        'fork',
        '--tag',
        'deb',
        '-n',
        '2',
        '--exec',
        'echo $FROM_IMAGE; cat /etc/debian_version; echo \'{"a":1}\' | jq -c .a >&2; touch /root/c-$(hostname); ls /root',
        '--eval',
        'import numpy; int(numpy.arange(4).sum())',
        '--json',
      ]),
    );
    assert.equal(f.ok, 2, JSON.stringify(f.children.map((c) => c.error)));
    for (const c of f.children) {
      const lines = c.exec!.stdout.trim().split('\n');
      assert.equal(lines[0], 'debian');
      assert.match(lines[1]!, /^12\./);
      assert.deepEqual(
        lines.slice(2).filter((l) => l.startsWith('c-')),
        [`c-${c.hostname}`],
        "a sibling's file is not visible",
      );
      assert.equal(c.eval?.result, '6');
      assert.equal(c.exec!.stderr, '1\n', 'jq came from --extra');
    }
  });
});
