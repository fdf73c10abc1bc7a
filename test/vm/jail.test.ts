/**
 * The VMM jail on real VMs, checked from the host side: a parent, children, a pooled child and a
 * branch's child each run as a uid of their own with no capabilities, no_new_privs, a seccomp filter,
 * their own mount/net namespaces and cgroup; a QEMU cannot open a file outside its own, cannot spawn,
 * cannot read another sandbox's overlay or memory; everything a jail held is freed with it.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { isolatedDirs, qemuProcessesUnder } from '../helpers/env.js';
import { execOk, freePort, startDaemon, type Daemon } from '../helpers/daemon.js';
import { createSnapshot } from '../../src/snapshot/create.js';
import { stderrReporter } from '../../src/util/report.js';
import { Controller } from '../../src/sdk/index.js';
import { JAIL_UID_BASE, jailStateDir, readJailRecord, VM_GROUP } from '../../src/vmm/jail.js';
import {
  prepareChild,
  resolveSource,
  startChild,
  SANDBOX_DIR_PREFIX,
  type Child,
} from '../../src/engine/child.js';
import { allocIndex } from '../../src/network/netns.js';
import { loadSnapshot } from '../../src/snapshot/store.js';

const TAG = 'jail';

interface Confinement {
  uid: number;
  gid: number;
  groups: number[];
  capEff: string;
  capBnd: string;
  noNewPrivs: string;
  seccomp: string;
  mntNs: string;
  netNs: string;
  cgroup: string;
}

function confinement(pid: number): Confinement {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (k: string) => new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(status)?.[1]?.trim() ?? '';
  const cg = fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8');
  return {
    uid: Number(field('Uid').split(/\s+/)[0]),
    gid: Number(field('Gid').split(/\s+/)[0]),
    groups: field('Groups').split(/\s+/).filter(Boolean).map(Number),
    capEff: field('CapEff'),
    capBnd: field('CapBnd'),
    noNewPrivs: field('NoNewPrivs'),
    seccomp: field('Seccomp'),
    mntNs: fs.readlinkSync(`/proc/${pid}/ns/mnt`),
    netNs: fs.readlinkSync(`/proc/${pid}/ns/net`),
    cgroup: /(?:^|\n)(?:\d+:memory:|0::)(\/forkd\/[^\n]+)/.exec(cg)?.[1] ?? '',
  };
}

function assertJailed(c: Confinement, what: string): void {
  assert.ok(c.uid >= JAIL_UID_BASE, `${what}: runs as a VMM uid (got ${c.uid})`);
  assert.equal(c.gid, c.uid, `${what}: its own gid`);
  assert.deepEqual(c.groups, [VM_GROUP], `${what}: no supplementary group but the VMM group`);
  assert.match(c.capEff, /^0+$/, `${what}: no effective capabilities`);
  assert.match(c.capBnd, /^0+$/, `${what}: empty bounding set`);
  assert.equal(c.noNewPrivs, '1', `${what}: no_new_privs`);
  assert.equal(c.seccomp, '2', `${what}: a seccomp filter`);
  assert.notEqual(c.mntNs, fs.readlinkSync('/proc/self/ns/mnt'), `${what}: own mount namespace`);
  assert.notEqual(c.netNs, fs.readlinkSync('/proc/self/ns/net'), `${what}: own network namespace`);
  assert.match(c.cgroup, /^\/forkd\/.+/, `${what}: its own cgroup`);
}

/** Run `argv` as the VMM sees the world: its mount namespace and root, its uid. */
function asVmm(pid: number, uid: number, argv: string[]): { code: number | null; out: string } {
  const r = spawnSync(
    'nsenter',
    ['-t', String(pid), '-m', '-r', '-S', String(uid), '-G', String(uid), '--', ...argv],
    { encoding: 'utf8' },
  );
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

describe('VMM jail on real VMs', { timeout: 20 * 60_000 }, () => {
  let dirs: ReturnType<typeof isolatedDirs>;
  let shm: string;
  let parent: Confinement | undefined;
  let lastParent: Confinement | undefined;
  const children: Child[] = [];
  let daemon: Daemon | undefined;

  before(async () => {
    dirs = isolatedDirs('jail');
    shm = fs.mkdtempSync('/dev/shm/forkd-test-');
    process.env.FORKD_SHM_DIR = shm;
    // The parent is looked at while it boots: its QEMU is the one under this test's run dir.
    let watching = true;
    const watch = (async () => {
      while (watching && !parent) {
        for (const pid of qemuProcessesUnder(dirs.run)) {
          try {
            const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
            if (cmd.startsWith('qemu-system') || cmd.includes('/qemu-system')) {
              // Sampled until QEMU has installed its seccomp filter (early in its start-up).
              if (cmd.includes('forkd-parent')) {
                const conf = confinement(pid);
                lastParent = conf;
                if (conf.seccomp === '2') parent = conf;
              }
            }
          } catch {
            /* between exec steps */
          }
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    try {
      await createSnapshot(
        { tag: TAG, recipe: 'python-numpy', net: true, warmupEval: 'import json' },
        stderrReporter(),
      );
    } finally {
      watching = false;
      await watch;
      parent ??= lastParent;
    }
  });

  after(async () => {
    for (const c of children) await c.destroy().catch(() => {});
    await daemon?.stop();
    for (const pid of qemuProcessesUnder(dirs.run)) process.kill(pid, 'SIGKILL');
    fs.rmSync(shm, { recursive: true, force: true });
    dirs.cleanup();
  });

  it('the parent QEMU ran jailed', () => {
    assert.ok(parent, 'the parent QEMU was seen while it booted');
    assertJailed(parent, 'parent');
  });

  it('children: own uid each, confined; cannot open files outside their own, cannot spawn; freed after', async () => {
    const source = await resolveSource(TAG, 'resident');
    const mk = async (n: number, net: boolean) => {
      const id = `jail${n}`;
      const p = await prepareChild(source, {
        id,
        workDir: path.join(dirs.run, `${SANDBOX_DIR_PREFIX}${id}`),
      });
      const c = await startChild(p, net ? { netIndex: allocIndex([]) } : {});
      children.push(c);
      return c;
    };
    const a = await mk(1, true);
    const b = await mk(2, false);
    const ca = confinement(a.vm.pid);
    const cb = confinement(b.vm.pid);
    assertJailed(ca, 'child a');
    assertJailed(cb, 'child b');
    assert.notEqual(ca.uid, cb.uid, 'two live VMMs never share a uid');
    assert.notEqual(ca.cgroup, cb.cgroup);

    // The guest still works, with its NIC in its sandbox namespace and nothing but lo left in QEMU's.
    assert.equal(
      (await (await a.guest!.agent()).exec({ argv: ['cat', '/etc/hostname'] })).stdout.trim(),
      'jail1',
    );
    const qemuLinks = execFileSync('nsenter', ['-t', String(a.vm.pid), '-n', 'ip', '-o', 'link'], {
      encoding: 'utf8',
    });
    assert.deepEqual(
      qemuLinks
        .trim()
        .split('\n')
        .map((l) => l.split(':')[1]!.trim()),
      ['lo'],
      'the tap moved to the sandbox namespace',
    );
    execFileSync('ip', ['-n', a.res.netns!, 'link', 'show', a.res.tap!]);

    // Files, as the VMM sees them: its own overlay yes; another's overlay, its work dir, host files no.
    assert.equal(
      asVmm(a.vm.pid, ca.uid, ['/usr/bin/head', '-c', '4', a.disk]).code,
      0,
      'own overlay readable',
    );
    const vmstate = path.join(source.s.dir, source.s.meta.files.vmstate.path);
    for (const other of [b.disk, b.vm.paths.consoleLog, '/etc/hostname', vmstate])
      assert.notEqual(
        asVmm(a.vm.pid, ca.uid, ['/usr/bin/head', '-c', '1', other]).code,
        0,
        `cannot read ${other}`,
      );
    const etc = asVmm(a.vm.pid, ca.uid, ['/usr/bin/ls', '/etc']);
    assert.equal(etc.out.trim(), 'ld.so.cache', 'nothing of the host /etc but the loader cache');
    const snaps = asVmm(a.vm.pid, ca.uid, ['/usr/bin/ls', path.dirname(source.s.dir)]);
    assert.equal(snaps.out.trim(), TAG, 'of the snapshot store, only its own snapshot');
    // The same through QEMU itself (QMP): it opens only what its jail holds.
    const qmp = a.vm.qmp!;
    const open = (filename: string, node: string) =>
      qmp.execute('blockdev-add', { driver: 'file', 'node-name': node, filename, 'read-only': true });
    await assert.rejects(open(b.disk, 'x1'), /No such file|Could not open/, "another sandbox's overlay");
    await assert.rejects(
      open(vmstate, 'x2'),
      /No such file|Could not open/,
      'a snapshot file it was not given',
    );
    await assert.rejects(open('/etc/passwd', 'x3'), /No such file|Could not open/, 'a host file');
    await open(source.diskImage, 'ok1'); // its own lower layer: the control that the call itself works
    await qmp.execute('blockdev-del', { 'node-name': 'ok1' });

    // No spawning: an exec: migration cannot start a shell (seccomp spawn=deny).
    const marker = path.join(dirs.run, 'spawned');
    await qmp.execute('migrate', { uri: `exec:touch ${marker}` }).catch(() => {});
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(fs.existsSync(marker), false, 'the VMM could not spawn a process');

    // Everything a jail held is freed with it: uid lease, cgroup, the tap's namespace.
    const recs = [a, b].map((c) => readJailRecord(c.res.work_dir)!);
    for (const c of [a, b]) await c.destroy();
    for (const r of recs) {
      assert.equal(fs.existsSync(path.join(jailStateDir(), 'uids', String(r.uid))), false, 'lease freed');
      if (r.cgroup) assert.equal(fs.existsSync(r.cgroup), false, 'cgroup removed');
      assert.equal(fs.existsSync(r.root!), false, 'its root dir removed');
    }
  });

  it('a pooled child and a branch child of the daemon are jailed too, each with its own uid', async () => {
    const port = await freePort();
    const stateDir = path.join(dirs.data, 'ctl');
    daemon = await startDaemon({ port, stateDir, args: ['--pool-size', '1'] });
    const c = new Controller({ baseUrl: daemon.url });
    const pidOf = (id: string) => {
      const st = JSON.parse(fs.readFileSync(path.join(stateDir, 'state.json'), 'utf8')) as {
        sandboxes: Record<string, { pid: number }>;
      };
      return st.sandboxes[id]!.pid;
    };
    const [first] = await c.spawnSandboxes({ snapshotTag: TAG });
    assert.ok(first?.ok, first?.error);
    const deadline = Date.now() + 120_000;
    while (!(await c.metrics()).includes(`forkd_pool_ready{tag="${TAG}"} 1`)) {
      assert.ok(Date.now() < deadline, 'the pool refilled');
      await new Promise((r) => setTimeout(r, 200));
    }
    const [pooled] = await c.spawnSandboxes({ snapshotTag: TAG });
    assert.ok(pooled?.ok && pooled.timings!.from_pool, 'taken from the pool');
    await execOk(c, pooled.id!, 'echo marker > /root/m');
    await c.branchSandbox(pooled.id!, { tag: 'jail-b', mode: 'live' });
    const [branched] = await c.spawnSandboxes({ snapshotTag: 'jail-b' });
    assert.ok(branched?.ok, branched?.error);
    assert.equal(await execOk(c, branched.id!, 'cat /root/m'), 'marker\n');
    const uids = new Set<number>();
    for (const [what, id] of [
      ['first', first.id!],
      ['pooled', pooled.id!],
      ['branch child', branched.id!],
      ['branch source', pooled.id!],
    ] as const) {
      const conf = confinement(pidOf(id));
      assertJailed(conf, what);
      uids.add(conf.uid);
    }
    assert.equal(uids.size, 3, 'three live sandboxes, three uids');
    // A sandbox of one snapshot cannot see another snapshot's memory image.
    const bDir = path.join(path.dirname(loadSnapshot(TAG).dir), 'jail-b');
    const bMem = fs.readdirSync(bDir).find((f) => f.startsWith('memory'))!;
    const firstUid = confinement(pidOf(first.id!)).uid;
    assert.notEqual(
      asVmm(pidOf(first.id!), firstUid, ['/usr/bin/head', '-c', '1', path.join(bDir, bMem)]).code,
      0,
      "another snapshot's memory image is not in its jail",
    );
    for (const id of [first.id!, pooled.id!, branched.id!]) await c.killSandbox(id);
  });
});
