/**
 * What users do, on real KVM (npm run test:kvm; inside an outer VM with emulated SVM on hosts whose own
 * KVM cannot run a stock guest). One warm python-numpy parent serves every check, since each boot costs
 * minutes when the outer machine is emulated; the assertions are those of the TCG suites (test/vm/):
 * the probe picks kvm by itself, children answer exec and eval with their own identities, random
 * streams, clocks and disks, every branch mode and a spawn from each branch, a diff-chain link,
 * pack → unpack → fork, and re-adoption after the daemon is kill -9'd. Plus what only KVM brings:
 * kvmclock kept across restore, and the kvm snapshot refused under tcg.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cli, isolatedDirs, qemuProcessesUnder } from '../helpers/env.js';
import { evalOk, execOk, freePort, startDaemon, type Daemon } from '../helpers/daemon.js';
import { createSnapshot } from '../../src/snapshot/create.js';
import { loadSnapshot } from '../../src/snapshot/store.js';
import { fork, type RunningChild } from '../../src/fork/fork.js';
import { Controller } from '../../src/sdk/index.js';
import { silentReporter, stderrReporter } from '../../src/util/report.js';

const TAG = 'kvm';
const TOKEN = `kvm-parent-${Date.now()}`;
let dirs: ReturnType<typeof isolatedDirs>;
let work: string;
let shm: string;
let children: RunningChild[] = [];
let releaseChildren: (() => Promise<void>) | undefined;
let daemon: Daemon | undefined;
let port: number;
let c: Controller;

interface DoctorCheck {
  name: string;
  status: string;
  detail: string;
}

function json<T = Record<string, unknown>>(r: { code: number | null; stdout: string; stderr: string }): T {
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as T;
}

const py = (id: string, code: string) => evalOk(c, id, code);
const sh = (id: string, cmd: string) => execOk(c, id, cmd);

async function startTheDaemon(): Promise<void> {
  daemon = await startDaemon({ port, stateDir: path.join(work, 'ctl') });
  c = new Controller({ baseUrl: daemon.url });
}

describe('what users do, under real KVM', { timeout: 60 * 60_000 }, () => {
  before(async () => {
    assert.equal(process.env.FORKD_ACCEL, undefined, 'nothing may force the accelerator here');
    dirs = isolatedDirs('kvm');
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-kvmwork-'));
    fs.mkdirSync(path.join(work, 'ctl'));
    process.env.XDG_CONFIG_HOME = path.join(work, 'config');
    shm = fs.mkdtempSync('/dev/shm/forkd-test-');
    process.env.FORKD_SHM_DIR = shm;
    await createSnapshot(
      {
        tag: TAG,
        recipe: 'python-numpy',
        warmup: `echo ${TOKEN} > /root/parent-file`,
        warmupEval: `PARENT_TOKEN = '${TOKEN}'\nimport numpy as np`,
      },
      stderrReporter(),
    );
    port = await freePort();
  });

  after(async () => {
    await releaseChildren?.();
    if (daemon) {
      for (const s of await c.listSandboxes().catch(() => [])) await c.killSandbox(s.id).catch(() => {});
      await daemon.stop();
    }
    for (const pid of qemuProcessesUnder(dirs.run)) process.kill(pid, 'SIGKILL');
    fs.rmSync(shm, { recursive: true, force: true });
    fs.rmSync(work, { recursive: true, force: true });
    delete process.env.XDG_CONFIG_HOME;
    delete process.env.FORKD_SHM_DIR;
    dirs.cleanup();
  });

  it('the probe picked kvm by itself; doctor names the host kind and the speed timeouts follow', async () => {
    const { checks } = json<{ checks: DoctorCheck[] }>(await cli(['doctor', '--json']));
    const find = (n: string) => checks.find((x) => x.name === n);
    assert.equal(find('kvm')?.status, 'PASS', JSON.stringify(find('kvm')));
    assert.match(find('kvm')!.detail, /^KVM runs stock guest kernels/);
    assert.equal(find('accelerator')?.status, 'PASS', JSON.stringify(find('accelerator')));
    assert.match(find('accelerator')!.detail, /^kvm — KVM booted the guest kernel in \d+ ms/);
    assert.match(find('host speed')!.detail, /internal timeouts ×[\d.]+/);
    const s = loadSnapshot(TAG).meta;
    assert.equal(s.accelerator, 'kvm');
    assert.equal(s.machine.accel, 'kvm');
    assert.match(s.accelerator_reason, /KVM booted/);
    assert.ok(s.timings.prime_ms! > 0);
  });

  it('3 children answer exec and eval, each with its own identity, random streams, clock and disk', async () => {
    const report = await fork({ tag: TAG, n: 3, keepRunning: true }, silentReporter);
    children = report.running!;
    releaseChildren = async () => {
      await report.release!();
      fs.rmSync(report.work_dir, { recursive: true, force: true });
      releaseChildren = undefined;
    };
    assert.equal(report.ok, 3, JSON.stringify(report.children.map((x) => x.error)));
    assert.equal(report.accelerator, 'kvm');
    const seen = {
      ids: new Set<string>(),
      kernel: new Set<string>(),
      py: new Set<string>(),
      np: new Set<string>(),
    };
    for (const ch of children) {
      const ping = await (await ch.guest.agent()).ping();
      assert.equal(ping.hostname, ch.report.id);
      seen.ids.add(String(ping.sandbox_id));
      const r = await (
        await ch.guest.agent()
      ).exec({
        cmd: 'cat /sys/devices/system/clocksource/clocksource0/current_clocksource; date +%s%N; cat /root/parent-file; head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n"',
      });
      assert.equal(r.exit_code, 0, r.stderr);
      const [clocksource, ns, parentFile, urandom] = r.stdout.trim().split('\n');
      assert.equal(clocksource, 'kvm-clock', 'the guest keeps kvmclock across restore');
      const skewMs = Math.abs(Number(BigInt(ns!) / 1_000_000n) - Date.now());
      assert.ok(skewMs < 10_000, `the child's clock is ${skewMs} ms off the host's`);
      assert.equal(parentFile, TOKEN, "the parent's disk");
      seen.kernel.add(urandom!);
      const e = await ch.guest.eval({ code: 'PARENT_TOKEN' });
      assert.equal(e.result_json, TOKEN, "the parent's warm interpreter");
      const rnd = await ch.guest.eval({
        code: '[__import__("random").random(), int(np.random.randint(0, 2**31))]',
      });
      assert.ok(rnd.ok, rnd.error?.traceback);
      const [p, n] = rnd.result_json as [number, number];
      seen.py.add(String(p));
      seen.np.add(String(n));
    }
    for (const [k, v] of Object.entries(seen)) assert.equal(v.size, 3, `${k} differ across children`);
    const [a, b] = children;
    await (await a!.guest.agent()).exec({ cmd: 'echo from-a > /root/iso.txt && sync' });
    const other = await (await b!.guest.agent()).exec({ cmd: 'cat /root/iso.txt' });
    assert.notEqual(other.exit_code, 0, 'a sibling must not see the file');
    await releaseChildren!();
  });

  it('refuses the kvm snapshot under tcg, naming both', async () => {
    const r = await cli(['fork', '--tag', TAG, '-n', '1'], { env: { FORKD_ACCEL: 'tcg' } });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /made under kvm, but this host runs guests under tcg/);
  });

  it('the daemon branches a running sandbox in every mode; a child of each branch sees the branch instant', async () => {
    await startTheDaemon();
    const [s] = await c.spawnSandboxes({ snapshotTag: TAG });
    assert.ok(s?.ok, s?.error);
    const id = s.id!;
    for (const mode of ['full', 'live', 'diff'] as const) {
      await py(id, `marker = 'pre-${mode}'`);
      await sh(id, `echo pre-${mode} > /root/marker.txt`);
      const snap = await c.branchSandbox(id, { tag: `b-${mode}`, mode });
      assert.equal(snap.status, 'ready');
      assert.equal(snap.mode, mode);
      assert.equal(loadSnapshot(`b-${mode}`).meta.accelerator, 'kvm');
      if (mode === 'diff') assert.equal(snap.memory_kind, 'diff');
      await py(id, `marker = 'post-${mode}'`);
      await sh(id, `echo post-${mode} > /root/marker.txt && sync`);
      const [child] = await c.spawnSandboxes({ snapshotTag: `b-${mode}` });
      assert.ok(child!.ok, child!.error);
      assert.equal(await py(child!.id!, 'marker'), `'pre-${mode}'`, `${mode}: RAM at the branch instant`);
      assert.equal(
        await sh(child!.id!, 'cat /root/marker.txt'),
        `pre-${mode}\n`,
        `${mode}: disk at the branch`,
      );
      await c.killSandbox(child!.id!);
    }
    await c.killSandbox(id);
    for (const t of ['b-full', 'b-live', 'b-diff']) await c.deleteSnapshot(t);
  });

  it('re-adopts a running sandbox after kill -9 of the daemon', async () => {
    const [a] = await c.spawnSandboxes({ snapshotTag: TAG });
    assert.ok(a!.ok, a!.error);
    await py(a!.id!, "survivor = 'yes'");
    await daemon!.stop('SIGKILL');
    await startTheDaemon();
    assert.deepEqual(
      (await c.listSandboxes()).map((s) => s.id),
      [a!.id],
    );
    assert.equal(await py(a!.id!, 'survivor'), "'yes'");
    assert.equal(await sh(a!.id!, 'echo adopted'), 'adopted\n');
    await c.killSandbox(a!.id!);
    await daemon!.stop();
    daemon = undefined;
    assert.equal(qemuProcessesUnder(dirs.run).length, 0, 'no QEMU left');
  });

  it('a diff-chain link, packed, unpacked on a fresh data dir and forked', async () => {
    const d = json<{ parent_tag: string; diff_pages: number }>(
      await cli([
        'snapshot-diff',
        '--from',
        TAG,
        '--tag',
        'l1',
        '--exec',
        'echo one > /root/l1',
        '--eval',
        "L1 = 'one'",
        '--json',
      ]),
    );
    assert.equal(d.parent_tag, TAG);
    assert.ok(d.diff_pages > 0);
    const info = json<{ chain_depth: number; memory_kind: string }>(
      await cli(['snapshot-info', 'l1', '--json']),
    );
    assert.equal(info.chain_depth, 1);
    assert.equal(info.memory_kind, 'diff');
    json(await cli(['keygen', '--json']));
    const file = path.join(work, 'l1.forkd-snapshot.tar.zst');
    const p = await cli(['pack', '--tag', 'l1', '--out', file, '--sign']);
    assert.equal(p.code, 0, p.stderr);
    const fresh = path.join(work, 'fresh');
    fs.mkdirSync(fresh);
    const env = { XDG_DATA_HOME: fresh };
    const u = json<{ head: string; links: Array<{ tag: string }>; signature: { state: string } }>(
      await cli(['unpack', file, '--require-signed', '--json'], { env }),
    );
    assert.equal(u.head, 'l1');
    assert.deepEqual(
      u.links.map((l) => l.tag),
      [TAG, 'l1'],
    );
    assert.equal(u.signature.state, 'trusted');
    const f = json<{
      ok: number;
      accelerator: string;
      children: Array<{ eval: { result: string }; exec: { stdout: string } }>;
    }>(
      await cli(['fork', '--tag', 'l1', '-n', '1', '--exec', 'cat /root/l1', '--eval', 'L1', '--json'], {
        env,
      }),
    );
    assert.equal(f.ok, 1);
    assert.equal(f.accelerator, 'kvm');
    assert.equal(f.children[0]!.eval.result, "'one'");
    assert.equal(f.children[0]!.exec.stdout, 'one\n');
  });
});
