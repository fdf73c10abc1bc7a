/**
 * Real VMs end to end: build (or reuse) the guest image, snapshot a warm parent, fork children and check
 * what a user relies on. Runs under whatever accelerator the host really has (TCG on CI).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { cli, isolatedDirs, qemuProcessesUnder } from '../helpers/env.js';
import { createSnapshot } from '../../src/snapshot/create.js';
import { loadSnapshot } from '../../src/snapshot/store.js';
import { fork, type RunningChild } from '../../src/fork/fork.js';
import { AgentClient } from '../../src/agent-client/client.js';
import { sha256File } from '../../src/util/hash.js';
import { silentReporter, stderrReporter } from '../../src/util/report.js';

const TAG = 'vmtest';
const TOKEN = `parent-token-${Date.now()}`;
let dirs: ReturnType<typeof isolatedDirs>;
let children: RunningChild[] = [];
let teardown: (() => Promise<void>) | undefined;

async function py(c: RunningChild, code: string) {
  const r = await c.guest.eval({ code });
  assert.ok(r.ok, `eval failed in ${c.report.id}: ${r.error?.traceback}`);
  return r;
}

describe('core runtime on real VMs', { timeout: 30 * 60_000 }, () => {
  before(async () => {
    dirs = isolatedDirs('vm');
    const r = await createSnapshot(
      {
        tag: TAG,
        recipe: 'python-numpy',
        warmup: `echo ${TOKEN} > /dev/shm/token && echo ${TOKEN} > /root/parent-file`,
        warmupEval: `PARENT_TOKEN = '${TOKEN}'\nimport json`,
      },
      stderrReporter(),
    );
    assert.equal(r.meta.tag, TAG);
    const report = await fork({ tag: TAG, n: 3, keepRunning: true }, silentReporter);
    children = report.running!;
    teardown = async () => {
      await report.release!();
      fs.rmSync(report.work_dir, { recursive: true, force: true });
    };
    assert.equal(report.ok, 3, JSON.stringify(report.children.map((c) => c.error)));
    children.sort((a, b) => a.report.index - b.report.index);
  });

  after(async () => {
    await teardown?.();
    dirs.cleanup();
  });

  it('records the snapshot with accelerator, QEMU version, machine and content hashes', async () => {
    const s = loadSnapshot(TAG);
    assert.match(s.meta.vmm.version, /^\d+\.\d+\.\d+$/);
    assert.ok(['kvm', 'tcg'].includes(s.meta.accelerator));
    assert.equal(s.meta.machine.mem_mib, 512);
    assert.equal(await sha256File(path.join(s.dir, 'vmstate')), s.meta.files.vmstate.sha256);
    assert.equal(await sha256File(path.join(s.dir, 'memory.bin')), s.meta.files.memory.sha256);
    assert.ok(s.meta.timings.pause_ms! > 0);
    assert.ok(s.meta.timings.prime_ms! > 0, 'the parent ran the request paths before its snapshot');
    assert.equal(s.meta.guest.numpy !== null, true, 'numpy was imported warm in the parent');
  });

  it('every child answers, with its own identity', async () => {
    const pings = await Promise.all(children.map(async (c) => (await c.guest.agent()).ping()));
    const ids = pings.map((p) => p.sandbox_id);
    assert.equal(new Set(ids).size, 3);
    for (const [i, p] of pings.entries()) {
      assert.equal(p.hostname, children[i]!.report.id);
      assert.ok(p.python.ready);
    }
    const hostnames = await Promise.all(
      children.map(async (c) => (await c.guest.agent()).exec({ argv: ['cat', '/etc/hostname'] })),
    );
    assert.deepEqual(
      hostnames.map((h) => h.stdout.trim()),
      children.map((c) => c.report.id),
    );
  });

  it('children start settled: the Python heap frozen in the parent, /etc/hostname the kernel name', async () => {
    for (const c of children) {
      const frozen = await py(c, "__import__('gc').get_freeze_count()");
      assert.ok((frozen.result_json as number) > 1000, `frozen objects: ${frozen.result}`);
      const link = await (await c.guest.agent()).exec({ argv: ['readlink', '/etc/hostname'] });
      assert.equal(link.stdout.trim(), '/proc/sys/kernel/hostname');
    }
  });

  it('children continue from the parent state: RAM, warm interpreter, disk', async () => {
    for (const c of children) {
      assert.equal((await py(c, 'PARENT_TOKEN')).result_json, TOKEN);
      assert.equal((await py(c, "'numpy' in __import__('sys').modules")).result_json, true);
      const shm = await (await c.guest.agent()).exec({ cmd: 'cat /dev/shm/token /root/parent-file' });
      assert.equal(shm.stdout, `${TOKEN}\n${TOKEN}\n`);
    }
  });

  it('each child has its own copy-on-write root disk', async () => {
    const [a, b] = children;
    const w = await (
      await a!.guest.agent()
    ).exec({ cmd: 'echo from-a > /root/iso.txt && sync && cat /root/iso.txt' });
    assert.equal(w.stdout, 'from-a\n');
    const seen = await (await b!.guest.agent()).exec({ cmd: 'cat /root/iso.txt' });
    assert.notEqual(seen.exit_code, 0, 'a sibling must not see the file');
    const s = loadSnapshot(TAG);
    assert.equal(
      await sha256File(path.join(s.dir, 'disk.qcow2')),
      s.meta.files.disk.sha256,
      'the frozen layer is untouched',
    );
    const later = await fork(
      { tag: TAG, n: 1, exec: 'test ! -e /root/iso.txt && echo absent' },
      silentReporter,
    );
    assert.equal(later.children[0]!.exec?.stdout, 'absent\n', 'a later fork does not see it either');
  });

  it('random streams differ across children (kernel, Python random, numpy, JS)', async () => {
    const draws = await Promise.all(
      children.map(async (c) => {
        const p = await py(
          c,
          'import random, os\n[random.random(), float(numpy.random.rand()), os.urandom(8).hex()]',
        );
        const k = await (await c.guest.agent()).exec({ cmd: 'head -c 16 /dev/urandom | od -An -tx1' });
        const js = await c.guest.eval({ code: 'Math.random()', language: 'js' });
        return { py: p.result_json as unknown[], kernel: k.stdout, js: js.result };
      }),
    );
    for (const key of ['kernel', 'js'] as const) assert.equal(new Set(draws.map((d) => d[key])).size, 3, key);
    for (let i = 0; i < 3; i++)
      assert.equal(new Set(draws.map((d) => String(d.py[i]))).size, 3, `python draw ${i}`);
  });

  it('the guest clock is corrected after restore', async () => {
    const r = await py(children[0]!, 'import time\ntime.time()');
    assert.ok(
      Math.abs((r.result_json as number) * 1000 - Date.now()) < 5000,
      `guest clock off by ${(r.result_json as number) * 1000 - Date.now()} ms`,
    );
  });

  it('eval state persists within a child and does not leak to siblings', async () => {
    const [a, b] = children;
    await py(a!, 'x = 41');
    assert.equal((await py(a!, 'x + 1')).result_json, 42);
    const leak = await b!.guest.eval({ code: 'x' });
    assert.equal(leak.ok, false);
    assert.equal(leak.error?.type, 'NameError');
    assert.match(leak.error!.traceback, /NameError: name 'x' is not defined/);
    const printed = await py(a!, 'print("hello"); y = [1, 2]\ny');
    assert.equal(printed.stdout, 'hello\n');
    assert.deepEqual(printed.result_json, [1, 2]);
    const js1 = await a!.guest.eval({ code: 'let counter = 5; counter * 2', language: 'js' });
    assert.equal(js1.result_json, 10);
    assert.equal((await a!.guest.eval({ code: 'counter + 1', language: 'js' })).result_json, 6);
  });

  it('eval errors come back with a traceback; timeouts interrupt the interpreter, which survives', async () => {
    const c = children[2]!;
    const err = await c.guest.eval({ code: 'def f():\n    return 1/0\nf()' });
    assert.equal(err.error?.type, 'ZeroDivisionError');
    assert.match(err.error!.traceback, /line 2, in f/);
    const slow = await c.guest.eval({ code: 'import time\ntime.sleep(30)', timeout_ms: 500 });
    assert.equal(slow.ok, false);
    assert.equal(slow.error?.type, 'Timeout');
    assert.equal((await py(c, 'PARENT_TOKEN')).result_json, TOKEN, 'warm state survives the interruption');
  });

  it("Python goes to the worker's own port; the agent's route reaches the same interpreter", async () => {
    const c = children[2]!;
    assert.ok(c.guest.hasPythonPort, 'a new snapshot gives its children the Python port');
    assert.equal(loadSnapshot(TAG).meta.machine.python_port, true);
    const py1 = await c.guest.python()!;
    const direct = await py1.eval({ code: 'import os\nzz = os.getpid(); zz' });
    const viaAgent = await (await c.guest.agent()).eval({ code: 'zz' });
    assert.equal(viaAgent.result_json, direct.result_json, 'one interpreter behind both channels');
    const ping = await (await c.guest.agent()).ping();
    assert.equal(ping.sandbox_id, c.report.id, 'the agent knows the identity the worker applied');
  });

  it('code that swallows its timeout is ended; the host is told and the next eval gets a new worker', async () => {
    const c = children[2]!;
    const stubborn =
      'import time\nwhile True:\n    try:\n        time.sleep(60)\n    except BaseException:\n        pass';
    await assert.rejects(
      c.guest.eval({ code: stubborn, timeout_ms: 300 }),
      /Python worker restarted/,
      'the hard kill comes 5 s after the timeout',
    );
    const after = await c.guest.eval({ code: '6 * 7' });
    assert.equal(after.result_json, 42);
  });

  it('exec: argv, env, cwd, stdin, streaming, exit codes and signals', async () => {
    const c = children[1]!;
    const streamed: string[] = [];
    const r = await (
      await c.guest.agent()
    ).exec(
      {
        argv: ['sh', '-c', 'echo "$GREETING from $(pwd)"; read l; echo "got $l" >&2; exit 3'],
        env: { GREETING: 'hi' },
        cwd: '/tmp',
        stdin: 'line\n',
      },
      (ev) => {
        if (ev.type === 'stdout') streamed.push(ev.data);
      },
    );
    assert.equal(r.stdout, 'hi from /tmp\n');
    assert.equal(r.stderr, 'got line\n');
    assert.equal(r.exit_code, 3);
    assert.deepEqual(streamed, ['hi from /tmp\n']);
    const sig = await (await c.guest.agent()).exec({ cmd: 'kill -TERM $$' });
    assert.equal(sig.signal, 'SIGTERM');
    await assert.rejects((await c.guest.agent()).exec({ argv: ['/no/such/binary'] }), /not found/);
  });

  it('exec timeout kills the whole process group', async () => {
    const c = children[1]!;
    const r = await (
      await c.guest.agent()
    ).exec({ cmd: 'sleep 301 & sleep 302; echo never', timeout_ms: 800 });
    assert.equal(r.timed_out, true);
    assert.equal(r.signal, 'SIGKILL');
    assert.ok(!r.stdout.includes('never'));
    const left = await (await c.guest.agent()).exec({ cmd: 'ps -eo args | grep -c "^sleep 30[12]" || true' });
    assert.equal(left.stdout.trim(), '0', 'the background sleep died with its group');
  });

  it('many concurrent requests share the channels (exec on the agent, eval on the Python port)', async () => {
    const c = children[0]!;
    const agent = await c.guest.agent();
    const rs = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        i % 2 ? agent.exec({ cmd: `echo ${i}` }) : c.guest.eval({ code: `${i} * 2` }),
      ),
    );
    rs.forEach((r, i) => {
      if (i % 2) assert.equal((r as { stdout: string }).stdout, `${i}\n`);
      else assert.equal((r as { result_json: number }).result_json, i * 2);
    });
  });

  it('the agent survives the host disconnecting and reconnecting, even mid-request', async () => {
    const c = children[0]!;
    const sock = c.vm.agentSocket;
    (await c.guest.agent()).close(); // QEMU serves one client per socket at a time: release the owner's connection
    const first = await AgentClient.connect(sock);
    void first.exec({ cmd: 'sleep 1; echo late' }).catch(() => undefined); // abandoned in flight
    await new Promise((r) => setTimeout(r, 300));
    first.close();
    for (let i = 0; i < 5; i++) {
      const again = await AgentClient.connect(sock);
      const p = await again.ping();
      assert.equal(p.sandbox_id, c.report.id);
      again.close();
    }
    const final = await AgentClient.connect(sock);
    assert.equal((await final.exec({ cmd: 'echo ok' })).stdout, 'ok\n');
    final.close();
  });

  it('fork through the CLI: --exec --json, per-child timings, and nothing left behind', async () => {
    const r = await cli([
      'fork',
      '--tag',
      TAG,
      '-n',
      '3',
      '--exec',
      "sh -c 'echo hi > /root/x; cat /etc/hostname'",
      '--json',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const rep = JSON.parse(r.stdout) as {
      ok: number;
      accelerator: string;
      work_dir: string;
      children: Array<{ id: string; exec: { stdout: string }; timings: { ready_ms: number } }>;
    };
    assert.equal(rep.ok, 3);
    for (const c of rep.children) {
      assert.equal(c.exec.stdout, `${c.id}\n`);
      assert.ok(c.timings.ready_ms > 0);
    }
    assert.equal(fs.existsSync(rep.work_dir), false, 'work dir removed');
    assert.deepEqual(qemuProcessesUnder(rep.work_dir), [], 'no QEMU left');
    const text = await cli(['fork', '--tag', TAG, '-n', '2', '--eval', 'numpy.zeros(5).tolist()']);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /eval → \[0\.0, 0\.0, 0\.0, 0\.0, 0\.0\]/);
    assert.match(
      text.stdout,
      new RegExp(`ready .*\\[(kvm|tcg)\\]`),
      'every timing line names the accelerator',
    );
  });

  it('a crashed fork is swept by cleanup; a live one is never touched', async () => {
    const crashed = spawn(
      process.execPath,
      [path.resolve('bin/forkd'), 'fork', '--tag', TAG, '-n', '2', '--settle-secs', '600'],
      { stdio: 'ignore', env: process.env },
    );
    const live = spawn(
      process.execPath,
      [path.resolve('bin/forkd'), 'fork', '--tag', TAG, '-n', '1', '--settle-secs', '600'],
      { stdio: 'ignore', env: process.env },
    );
    const dirOf = (pid: number) =>
      path.join(
        dirs.run,
        fs.readdirSync(dirs.run).find((e) => e.startsWith(`forkd-fork-${TAG}-${pid}-`)) ?? `missing-${pid}`,
      );
    const waitQemus = async (pid: number, n: number) => {
      for (let i = 0; i < 600 && qemuProcessesUnder(dirOf(pid)).length < n; i++)
        await new Promise((r) => setTimeout(r, 100));
      assert.equal(qemuProcessesUnder(dirOf(pid)).length, n);
    };
    await waitQemus(crashed.pid!, 2);
    await waitQemus(live.pid!, 1);
    await new Promise((r) => setTimeout(r, 1500));
    crashed.kill('SIGKILL');
    await new Promise((r) => crashed.on('exit', r));
    const dry = JSON.parse((await cli(['cleanup', '--json'])).stdout) as {
      items: Array<{ path: string; action: string }>;
    };
    assert.equal(dry.items.find((i) => i.path === dirOf(crashed.pid!))?.action, 'DEL');
    assert.equal(dry.items.find((i) => i.path === dirOf(live.pid!))?.action, 'SKIP');
    assert.equal(qemuProcessesUnder(dirOf(crashed.pid!)).length, 2, 'a dry run changes nothing');
    const done = await cli(['cleanup', '--yes']);
    assert.equal(done.code, 0, done.stderr);
    assert.deepEqual(qemuProcessesUnder(dirOf(crashed.pid!)), []);
    assert.equal(fs.existsSync(dirOf(crashed.pid!)), false);
    assert.equal(qemuProcessesUnder(dirOf(live.pid!)).length, 1, 'the live run keeps its child');
    live.kill('SIGINT'); // Ctrl-C: the CLI tears its children down itself
    const code = await new Promise((r) => live.on('exit', r));
    assert.equal(code, 130);
    assert.deepEqual(qemuProcessesUnder(dirOf(live.pid!)), []);
    assert.equal(fs.existsSync(dirOf(live.pid!)), false);
  });

  it('refuses snapshots that do not fit this host: other accelerator, other QEMU, modified memory', async () => {
    const src = loadSnapshot(TAG).dir;
    const mk = (tag: string, edit: (m: Record<string, unknown>) => void) => {
      const dst = path.join(path.dirname(src), tag);
      execFileSync('cp', ['-a', src, dst]);
      const f = path.join(dst, 'snapshot.json');
      fs.chmodSync(f, 0o644);
      const m = JSON.parse(fs.readFileSync(f, 'utf8')) as Record<string, unknown>;
      edit(m);
      fs.writeFileSync(f, JSON.stringify(m));
      return dst;
    };
    const other = loadSnapshot(TAG).meta.accelerator === 'tcg' ? 'kvm' : 'tcg';
    mk('other-accel', (m) => {
      m.accelerator = other;
      (m.machine as Record<string, unknown>).accel = other;
    });
    const a = await cli(['fork', '--tag', 'other-accel', '-n', '1']);
    assert.notEqual(a.code, 0);
    assert.match(a.stderr, new RegExp(`made under ${other}, but this host runs guests under`));
    mk('other-qemu', (m) => ((m.vmm as Record<string, unknown>).version = '1.0.0'));
    const q = await cli(['fork', '--tag', 'other-qemu', '-n', '1']);
    assert.match(q.stderr, /saved by QEMU 1\.0\.0/);
    mk('other-cpu', (m) => {
      (m.vmm as Record<string, unknown>).cpu = { model: 'Future CPU', flags: ['avx9000', 'sse2'] };
    });
    const cpuRefused = await cli(['fork', '--tag', 'other-cpu', '-n', '1']);
    assert.notEqual(cpuRefused.code, 0);
    assert.match(cpuRefused.stderr, /on a CPU \(Future CPU\) with features this host's CPU lacks: avx9000/);
    const dst = mk('tampered', () => {});
    fs.chmodSync(path.join(dst, 'memory.bin'), 0o644);
    fs.appendFileSync(path.join(dst, 'memory.bin'), Buffer.alloc(4096));
    const t = await cli(['fork', '--tag', 'tampered', '-n', '1']);
    assert.match(t.stderr, /memory\.bin was modified after the snapshot/);
    assert.deepEqual(
      fs.readdirSync(dirs.run).filter((e) => e.startsWith('forkd-fork-') && !e.includes(`-${process.pid}-`)),
      [],
      'no side effects',
    );
    const rmi = await cli(['rmi', 'other-accel', 'other-qemu', 'other-cpu', 'tampered']);
    assert.equal(rmi.code, 0, rmi.stderr);
  });

  it('out of disk is refused before anything is started', async () => {
    const tiny = fs.mkdtempSync('/tmp/forkd-tiny-');
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', tiny]);
    try {
      const r = await cli(['fork', '--tag', TAG, '-n', '3'], { env: { FORKD_RUN_DIR: tiny } });
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /not enough free disk in .* for 3 child overlays/);
      assert.deepEqual(fs.readdirSync(tiny), []);
      const s = await cli(['snapshot', '--tag', 'toobig'], { env: { XDG_DATA_HOME: tiny } });
      assert.match(s.stderr, /not enough free disk for snapshot 'toobig'/);
    } finally {
      execFileSync('umount', [tiny]);
      fs.rmdirSync(tiny);
    }
  });

  it('images and rmi', async () => {
    const l = JSON.parse((await cli(['images', '--json'])).stdout) as Array<{
      tag: string;
      accelerator: string;
      chain_depth: number;
    }>;
    const me = l.find((x) => x.tag === TAG)!;
    assert.equal(me.chain_depth, 0);
    const text = await cli(['images']);
    assert.match(text.stdout, /TAG\s+SIZE\s+MEMORY\s+CREATED\s+CHAIN\s+ACCEL/);
  });
});
