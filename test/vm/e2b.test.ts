/**
 * E2B's official JS SDK (`e2b`, pinned), unmodified, against a forkd daemon on real VMs: only
 * E2B_API_URL, E2B_SANDBOX_URL (both the daemon's address) and E2B_API_KEY (its token) are set.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import http from 'node:http';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  AuthenticationError,
  CommandExitError,
  FileNotFoundError,
  Sandbox,
  SandboxNotFoundError,
  TimeoutError,
} from 'e2b';
import { Sandbox as CodeSandbox } from '@e2b/code-interpreter';
import { ROOT, isolatedDirs, qemuProcessesUnder } from '../helpers/env.js';
import { freePort, startDaemon, type Daemon } from '../helpers/daemon.js';
import { createSnapshot } from '../../src/snapshot/create.js';
import { stderrReporter } from '../../src/util/report.js';
import { Controller } from '../../src/sdk/index.js';
import { processCpuSeconds } from '../../src/controller/e2b/metrics.js';

const TAG = 'e2b-py';
/** pandas and matplotlib warm: the code interpreter's rich results. */
const DATA_TAG = 'e2b-data';
const KEY = `e2b_${randomBytes(20).toString('hex')}`;
let dirs: ReturnType<typeof isolatedDirs>;
let shm: string;
let daemon: Daemon;
let own: Controller;

const waitUntil = async (cond: () => Promise<boolean>, what: string, ms = 60_000) => {
  const t0 = Date.now();
  while (!(await cond())) {
    assert.ok(Date.now() - t0 < ms, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
};

describe('the official E2B SDK against forkd', { timeout: 30 * 60_000 }, () => {
  before(async () => {
    dirs = isolatedDirs('e2b');
    shm = fs.mkdtempSync('/dev/shm/forkd-test-');
    process.env.FORKD_SHM_DIR = shm;
    await createSnapshot(
      { tag: TAG, recipe: 'python-numpy', warmupEval: 'import numpy as np' },
      stderrReporter(),
    );
    await createSnapshot(
      {
        tag: DATA_TAG,
        recipe: 'python-data',
        warmupEval: 'import numpy as np, pandas as pd\nimport matplotlib.pyplot as plt',
      },
      stderrReporter(),
    );
    const port = await freePort();
    const tokenFile = path.join(dirs.data, 'token');
    fs.writeFileSync(tokenFile, KEY, { mode: 0o600 });
    daemon = await startDaemon({
      port,
      stateDir: dirs.data,
      args: [
        '--token-file',
        tokenFile,
        '--e2b-template',
        `base=${TAG}`,
        '--e2b-template',
        `code-interpreter-v1=${TAG}`,
      ],
    });
    process.env.E2B_API_URL = daemon.url;
    process.env.E2B_SANDBOX_URL = daemon.url;
    process.env.E2B_API_KEY = KEY;
    own = new Controller({ baseUrl: daemon.url, token: KEY });
  });

  after(async () => {
    // What the daemon logged (warnings and errors only): the first place to look when a test failed.
    if (daemon?.log().trim()) process.stderr.write(`--- daemon log ---\n${daemon.log()}\n`);
    if (daemon) {
      for (const s of await own.listSandboxes().catch(() => [])) await own.killSandbox(s.id).catch(() => {});
      await daemon.stop();
    }
    for (const pid of qemuProcessesUnder(dirs.run)) process.kill(pid, 'SIGKILL');
    fs.rmSync(shm, { recursive: true, force: true });
    dirs.cleanup();
  });

  it('create → commands.run → files write/read → kill; then 404 on the control plane, 502 on the sandbox plane', async () => {
    const sbx = await Sandbox.create('base', { metadata: { suite: 'e2b' } });
    const r = await sbx.commands.run('echo hi');
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, 'hi\n');
    await sbx.files.write('/tmp/a.txt', 'x');
    assert.equal(await sbx.files.read('/tmp/a.txt'), 'x');
    const info = await sbx.getInfo();
    assert.equal(info.sandboxId, sbx.sandboxId);
    assert.equal(info.templateId, 'base');
    assert.equal(info.state, 'running');
    assert.deepEqual(info.metadata, { suite: 'e2b' });
    assert.ok(info.endAt.getTime() > Date.now(), 'it has a default lifetime');
    // One daemon, one state: forkd's own API sees it.
    assert.ok((await own.listSandboxes()).some((s) => s.id === sbx.sandboxId));
    // ...and the other way round: a sandbox forkd's API made is an E2B sandbox too.
    const [mine] = await own.spawnSandboxes({ snapshotTag: TAG });
    const viaE2b = await Sandbox.connect(mine!.id!);
    assert.equal((await viaE2b.commands.run('echo both')).stdout, 'both\n');
    assert.ok((await Sandbox.list().nextItems()).some((s) => s.sandboxId === mine!.id));
    await viaE2b.kill();
    assert.equal(await sbx.isRunning(), true);
    assert.equal(await sbx.kill(), true);
    assert.equal(await sbx.isRunning(), false);
    assert.equal(await Sandbox.kill(sbx.sandboxId), false);
    await assert.rejects(Sandbox.getInfo(sbx.sandboxId), SandboxNotFoundError);
    await assert.rejects(Sandbox.connect(sbx.sandboxId), SandboxNotFoundError);
  });

  it('commands: exit codes, envs, cwd, the default user, background processes, stdin, list, connect, kill', async () => {
    const sbx = await Sandbox.create('base', { envs: { WIDE: 'sandbox' } });
    try {
      const who = await sbx.commands.run('echo "$(whoami) $HOME $PWD $WIDE $ONE"', { envs: { ONE: 'cmd' } });
      assert.equal(who.stdout, 'user /home/user /home/user sandbox cmd\n');
      assert.equal((await sbx.commands.run('pwd', { cwd: '/tmp' })).stdout, '/tmp\n');
      assert.equal((await sbx.commands.run('whoami', { user: 'root' })).stdout, 'root\n');
      await assert.rejects(sbx.commands.run('echo oops >&2; exit 3'), (e: unknown) => {
        assert.ok(e instanceof CommandExitError);
        assert.equal(e.exitCode, 3);
        assert.equal(e.stderr, 'oops\n');
        return true;
      });
      const chunks: string[] = [];
      const bg = await sbx.commands.run('read line; echo "got $line"; sleep 600', {
        background: true,
        stdin: true,
        onStdout: (d) => void chunks.push(d),
      });
      assert.ok(bg.pid > 0);
      assert.ok((await sbx.commands.list()).some((p) => p.pid === bg.pid));
      await sbx.commands.sendStdin(bg.pid, 'hello\n');
      await waitUntil(async () => chunks.join('') === 'got hello\n', 'the echo of stdin');
      // Detach and attach again: the process kept running.
      await bg.disconnect();
      const again = await sbx.commands.connect(bg.pid);
      assert.equal(
        (await sbx.commands.run(`kill -0 ${bg.pid} && echo alive`, { user: 'root' })).stdout,
        'alive\n',
      );
      assert.equal(await sbx.commands.kill(bg.pid), true);
      await assert.rejects(again.wait(), CommandExitError);
      assert.equal(await sbx.commands.kill(bg.pid), false, 'a process that is gone is not found');
      assert.ok(!(await sbx.commands.list()).some((p) => p.pid === bg.pid));
    } finally {
      await sbx.kill();
    }
  });

  it('files: multi-file write, list with depth, stat, mkdir, rename, remove, errors, 1 MiB both ways, signed URLs', async () => {
    const sbx = await Sandbox.create('base');
    try {
      const infos = await sbx.files.write([
        { path: 'proj/a.txt', data: 'A' },
        { path: '/home/user/proj/sub/b.txt', data: 'B' },
      ]);
      assert.deepEqual(
        infos.map((i) => i.path),
        ['/home/user/proj/a.txt', '/home/user/proj/sub/b.txt'],
      );
      const owner = await sbx.commands.run('stat -c %U /home/user/proj/sub/b.txt /home/user/proj/sub');
      assert.equal(owner.stdout, 'user\nuser\n', 'what the SDK writes belongs to the user');
      const flat = await sbx.files.list('proj');
      assert.deepEqual(
        flat.map((e) => [e.name, e.type]),
        [
          ['a.txt', 'file'],
          ['sub', 'dir'],
        ],
      );
      const deep = await sbx.files.list('proj', { depth: 2 });
      assert.deepEqual(
        deep.map((e) => e.path),
        ['/home/user/proj/a.txt', '/home/user/proj/sub', '/home/user/proj/sub/b.txt'],
      );
      const st = await sbx.files.getInfo('proj/a.txt');
      assert.equal(st.size, 1);
      assert.equal(st.owner, 'user');
      assert.equal(st.permissions, '-rw-r--r--');
      assert.equal(await sbx.files.exists('proj/nope'), false);
      assert.equal(await sbx.files.makeDir('proj/new/deeper'), true);
      assert.equal(await sbx.files.makeDir('proj/new/deeper'), false);
      const moved = await sbx.files.rename('proj/a.txt', 'proj/new/a2.txt');
      assert.equal(moved.path, '/home/user/proj/new/a2.txt');
      await sbx.files.remove('proj/sub');
      await sbx.files.remove('proj/never-there');
      assert.equal(await sbx.files.exists('proj/sub'), false);
      await assert.rejects(sbx.files.read('proj/sub/b.txt'), FileNotFoundError);
      const big = randomBytes(1 << 20);
      await sbx.files.write('big.bin', new Blob([big]));
      const back = Buffer.from(await sbx.files.read('big.bin', { format: 'bytes' }));
      assert.ok(back.equals(big), '1 MiB came back byte for byte');
      assert.equal(
        (await sbx.commands.run('sha256sum big.bin')).stdout.split(' ')[0],
        (await import('node:crypto')).createHash('sha256').update(big).digest('hex'),
      );
      await sbx.files.write('empty.txt', '');
      assert.equal(await sbx.files.read('empty.txt'), '');
      // Signed URLs work with no headers at all (a browser or curl holds only the URL).
      const down = await sbx.downloadUrl('proj/new/a2.txt');
      assert.equal(await (await fetch(down)).text(), 'A');
      const tampered = down.replace(/signature=v1_./, 'signature=v1_X');
      assert.equal((await fetch(tampered)).status, 401);
      const up = await sbx.uploadUrl('uploaded/u.txt');
      const form = new FormData();
      form.append('file', new Blob(['via a signed URL']), 'uploaded/u.txt');
      assert.equal((await fetch(up, { method: 'POST', body: form })).status, 200);
      assert.equal(await sbx.files.read('uploaded/u.txt'), 'via a signed URL');
    } finally {
      await sbx.kill();
    }
  });

  it('list with metadata filters and pages; setTimeout expires a sandbox; pause keeps state, 502 meanwhile, connect resumes', async () => {
    const a = await Sandbox.create('base', { metadata: { role: 'a', 'odd key': 'v w' } });
    const b = await Sandbox.create('base', { metadata: { role: 'b' } });
    try {
      const mine = await Sandbox.list({ query: { metadata: { 'odd key': 'v w' } } }).nextItems();
      assert.deepEqual(
        mine.map((s) => s.sandboxId),
        [a.sandboxId],
      );
      const pager = Sandbox.list({ limit: 1 });
      const seen: string[] = [];
      while (pager.hasNext) for (const s of await pager.nextItems()) seen.push(s.sandboxId);
      assert.ok(seen.includes(a.sandboxId) && seen.includes(b.sandboxId), 'pages cover every sandbox');

      await b.commands.run('echo kept > /home/user/state.txt');
      const bg = await b.commands.run('sleep 600', { background: true });
      assert.equal(await b.pause(), true);
      assert.equal(await b.pause(), false, 'already paused');
      assert.equal(await b.isRunning(), false, 'a paused sandbox answers 502 on the sandbox plane');
      // Paused is stopped vCPUs: its QEMU uses (next to) no CPU while the host is free to do other work.
      const pid = (await own.getSandbox(b.sandboxId)).pid!;
      const cpu0 = processCpuSeconds(pid)!;
      await new Promise((r) => setTimeout(r, 3000));
      const used = processCpuSeconds(pid)! - cpu0;
      assert.ok(used < 0.3, `a paused sandbox used ${used.toFixed(2)} s of CPU in 3 s`);
      assert.equal((await b.getInfo()).state, 'paused');
      const listed = await Sandbox.list({ query: { state: ['paused'] } }).nextItems();
      assert.deepEqual(
        listed.map((s) => s.sandboxId),
        [b.sandboxId],
      );
      const resumed = await Sandbox.connect(b.sandboxId);
      assert.equal(resumed.sandboxId, b.sandboxId);
      assert.equal(await resumed.files.read('/home/user/state.txt'), 'kept\n');
      assert.ok(
        (await resumed.commands.list()).some((p) => p.pid === bg.pid),
        'its processes survived',
      );

      await a.setTimeout(2000);
      await waitUntil(async () => !(await a.isRunning()), 'the 2 s timeout to kill it');
      await assert.rejects(a.getInfo(), SandboxNotFoundError);
    } finally {
      await a.kill().catch(() => {});
      await b.kill().catch(() => {});
    }
  });

  it('refuses a wrong API key and a wrong access token; Connect endpoints answer Connect-shaped errors', async () => {
    await assert.rejects(Sandbox.create('base', { apiKey: 'e2b_0000' }), AuthenticationError);
    const sbx = await Sandbox.create('base');
    try {
      const headers = { 'e2b-sandbox-id': sbx.sandboxId, 'e2b-sandbox-port': '49983' };
      const health = await fetch(`${daemon.url}/health`, {
        headers: { ...headers, 'x-access-token': 'nope' },
      });
      assert.equal(health.status, 401);
      // What curl gets from a unary Connect call with a bad body, and with an unknown pid.
      const rpc = (body: string) =>
        fetch(`${daemon.url}/process.Process/SendSignal`, {
          method: 'POST',
          headers: {
            ...headers,
            'x-access-token': (sbx as unknown as { envdAccessToken: string }).envdAccessToken,
            'content-type': 'application/json',
          },
          body,
        });
      const bad = await rpc('{not json');
      assert.equal(bad.status, 400);
      assert.equal(((await bad.json()) as { code: string }).code, 'invalid_argument');
      const missing = await rpc(JSON.stringify({ process: { pid: 999999 }, signal: 'SIGNAL_SIGKILL' }));
      assert.equal(missing.status, 404);
      assert.equal(((await missing.json()) as { code: string }).code, 'not_found');
      await assert.rejects(Sandbox.create('no-such-template'), /404: template 'no-such-template' not found/);
    } finally {
      await sbx.kill();
    }
  });

  it('fork: children start from the state at fork time and are independent; the source keeps its id', async () => {
    const src = await Sandbox.create('base');
    try {
      await src.files.write('before.txt', 'seen by forks');
      const forks = await src.fork({ count: 2, timeoutMs: 120_000 });
      assert.equal(forks.length, 2);
      const [f1, f2] = forks.map((f) => {
        assert.ok(f instanceof Sandbox, `a fork failed: ${String(f)}`);
        return f;
      });
      assert.notEqual(f1!.sandboxId, src.sandboxId);
      assert.notEqual(f1!.sandboxId, f2!.sandboxId);
      assert.equal(await f1!.files.read('before.txt'), 'seen by forks');
      await f1!.files.write('after.txt', 'only in f1');
      assert.equal(await f2!.files.exists('after.txt'), false);
      assert.equal(await src.files.exists('after.txt'), false);
      assert.equal(await src.isRunning(), true);
      for (const f of [f1!, f2!]) await f.kill();
    } finally {
      await src.kill();
    }
  });

  it('snapshots: createSnapshot makes a template, listSnapshots finds it, deleteSnapshot removes it', async () => {
    const src = await Sandbox.create('base');
    try {
      await src.files.write('snap.txt', 'in the snapshot');
      const snap = await src.createSnapshot({ name: 'e2b-test-snap' });
      assert.equal(snap.snapshotId, 'e2b-test-snap');
      assert.equal(await src.isRunning(), true, 'the source runs on');
      const listed = await Sandbox.listSnapshots({ sandboxId: src.sandboxId }).nextItems();
      assert.deepEqual(
        listed.map((x) => x.snapshotId),
        ['e2b-test-snap'],
      );
      const fromSnap = await Sandbox.create(snap.snapshotId);
      assert.equal(await fromSnap.files.read('snap.txt'), 'in the snapshot');
      await fromSnap.kill();
      assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), true);
      assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), false);
      await assert.rejects(Sandbox.create(snap.snapshotId), /404/);
    } finally {
      await src.kill();
    }
  });

  it('getMetrics: real CPU, memory and disk samples', async () => {
    const sbx = await Sandbox.create('base');
    try {
      const m = await sbx.getMetrics();
      assert.ok(m.length >= 1);
      const s = m.at(-1)!;
      assert.ok(s.memTotal > 100 << 20 && s.memUsed > 0 && s.memUsed < s.memTotal, JSON.stringify(s));
      assert.ok(s.diskTotal > 0 && s.diskUsed > 0 && s.diskUsed < s.diskTotal, JSON.stringify(s));
      assert.equal(s.cpuCount, 1);
      assert.ok(s.timestamp instanceof Date && !Number.isNaN(s.timestamp.getTime()));
    } finally {
      await sbx.kill();
    }
  });

  it("streams: a command's deadline leaves it running; killing the sandbox cuts its streams", async () => {
    const sbx = await Sandbox.create('base');
    const id = sbx.sandboxId;
    try {
      await assert.rejects(sbx.commands.run('sleep 30; echo late', { timeoutMs: 1500 }), TimeoutError);
      assert.ok(
        (await sbx.commands.list()).some(
          (p) => p.cmd === '/bin/bash' && p.args.join(' ').includes('sleep 30'),
        ),
        'the command runs on after the client gave up waiting',
      );
      const h = await sbx.commands.run('sleep 600', { background: true, timeoutMs: 0 });
      const waiting = assert.rejects(h.wait(), (e: Error) => {
        assert.match(e.message, /killed or reached its end of life/);
        return true;
      });
      await Sandbox.kill(id);
      await waiting;
    } finally {
      await Sandbox.kill(id).catch(() => {});
    }
  });

  it('code interpreter: results, state, errors, rich representations, contexts in Python and JavaScript', async () => {
    const sbx = await CodeSandbox.create();
    try {
      const a = await sbx.runCode('x = 21 * 2\nprint("hello")\nx');
      assert.equal(a.text, '42');
      assert.deepEqual(a.logs.stdout, ['hello\n']);
      assert.equal((await sbx.runCode("'a' + 'b'")).text, 'ab');
      assert.equal((await sbx.runCode('x + 1')).text, '43', 'state persists between calls');
      assert.equal((await sbx.runCode('np.arange(3).sum()')).text, '3', 'numpy is warm');
      const err = await sbx.runCode('1/0');
      assert.equal(err.error?.name, 'ZeroDivisionError');
      assert.match(err.error!.traceback, /ZeroDivisionError/);
      const html = await sbx.runCode(
        'class T:\n  def _repr_html_(self): return "<b>t</b>"\n  def __repr__(self): return "T()"\nT()',
      );
      assert.equal(html.results[0]?.html, '<b>t</b>');
      assert.equal(html.results[0]?.text, 'T()');
      const env = await sbx.runCode('import os; os.environ.get("ONLY_HERE")', { envs: { ONLY_HERE: 'yes' } });
      assert.equal(env.text, 'yes');
      const ctx = await sbx.createCodeContext({ language: 'python' });
      await sbx.runCode('y = 1', { context: ctx });
      assert.equal((await sbx.runCode('y', { context: ctx })).text, '1');
      assert.equal((await sbx.runCode("'y' in dir()")).text, 'False', 'contexts do not share variables');
      assert.ok((await sbx.listCodeContexts()).some((c) => c.id === ctx.id));
      await sbx.restartCodeContext(ctx);
      assert.equal((await sbx.runCode('y', { context: ctx })).error?.name, 'NameError');
      await sbx.removeCodeContext(ctx);
      assert.ok(!(await sbx.listCodeContexts()).some((c) => c.id === ctx.id));
      assert.equal((await sbx.runCode('[1, 2].map((n) => n * 2)', { language: 'js' })).text, '[ 2, 4 ]');
    } finally {
      await sbx.kill();
    }
  });

  it('pty: bash on a real terminal, input, resize, kill; watchDir sees changes, recursively', async () => {
    const sbx = await Sandbox.create('base');
    try {
      let out = '';
      const term = await sbx.pty.create({
        cols: 100,
        rows: 30,
        onData: (d) => void (out += new TextDecoder().decode(d)),
        timeoutMs: 0,
      });
      const send = (text: string) => sbx.pty.sendInput(term.pid, new TextEncoder().encode(text));
      await send('tty; stty size; echo "term=$TERM"\n');
      await waitUntil(
        async () => /30 100/.test(out) && /term=xterm-256color/.test(out),
        'the terminal to answer',
      );
      assert.match(out, /\/dev\/pts\/\d+/);
      await sbx.pty.resize(term.pid, { cols: 132, rows: 43 });
      await send('stty size\n');
      await waitUntil(async () => /43 132/.test(out), 'the new size');
      assert.equal(await sbx.pty.kill(term.pid), true);
      await assert.rejects(term.wait());

      await sbx.files.makeDir('watched/sub');
      const events: string[] = [];
      const w = await sbx.files.watchDir('watched', (e) => void events.push(`${e.type} ${e.name}`), {
        recursive: true,
        timeoutMs: 0,
      });
      await sbx.files.write('watched/a.txt', 'a');
      await sbx.files.write('watched/sub/b.txt', 'b');
      await sbx.commands.run('rm /home/user/watched/a.txt');
      await waitUntil(
        async () => events.includes('remove a.txt') && events.some((e) => e.endsWith(' sub/b.txt')),
        `watch events (got ${events.join(', ')})`,
      );
      assert.ok(
        events.some((e) => e.endsWith(' a.txt') && !e.startsWith('remove')),
        events.join(', '),
      );
      await w.stop();
    } finally {
      await sbx.kill();
    }
  });

  it('ports: <port>-<id> Host routing (HTTP, streamed bodies, upgrades) and forkd port-forward, with no guest network', async () => {
    const sbx = await Sandbox.create('base');
    try {
      const token = (sbx as unknown as { envdAccessToken: string }).envdAccessToken;
      await sbx.files.write('site/hello.txt', 'hello from the sandbox');
      await sbx.commands.run('cd /home/user/site && exec python3 -m http.server 8000 --bind 127.0.0.1', {
        background: true,
      });
      // An upgrade-answering echo server (what a WebSocket server does first), on the guest's Node.
      await sbx.files.write(
        'echo.js',
        "require('http').createServer().on('upgrade', (req, s) => { s.write('HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: echo\\r\\nConnection: Upgrade\\r\\n\\r\\n'); s.pipe(s); }).listen(9000, '127.0.0.1');",
      );
      await sbx.commands.run('exec node /home/user/echo.js', { background: true });
      const get = (port: number, p: string, headers: Record<string, string> = {}) =>
        new Promise<{ status: number; body: string }>((resolve, reject) => {
          const u = new URL(daemon.url);
          const r = http.request(
            { host: u.hostname, port: u.port, path: p, headers: { host: sbx.getHost(port), ...headers } },
            (res) => {
              let body = '';
              res.on('data', (d) => (body += d));
              res.on('end', () => resolve({ status: res.statusCode!, body }));
            },
          );
          r.on('error', reject);
          r.end();
        });
      const auth = { 'e2b-traffic-access-token': token };
      await waitUntil(
        async () => (await get(8000, '/hello.txt', auth)).status === 200,
        'the guest web server',
      );
      assert.deepEqual(await get(8000, '/hello.txt', auth), { status: 200, body: 'hello from the sandbox' });
      assert.equal((await get(8000, '/hello.txt')).status, 401, 'port traffic needs the traffic token');
      assert.equal((await get(8001, '/', auth)).status, 502, 'nothing listens there');

      await waitUntil(async () => {
        const echoed = await new Promise<string>((resolve) => {
          const u = new URL(daemon.url);
          const r = http.request({
            host: u.hostname,
            port: u.port,
            path: '/ws',
            headers: { host: sbx.getHost(9000), connection: 'Upgrade', upgrade: 'echo', ...auth },
          });
          r.on('upgrade', (_res, sock) => {
            sock.once('data', (d) => {
              resolve(d.toString());
              sock.destroy();
            });
            sock.write('ping');
          });
          r.on('response', () => resolve(''));
          r.on('error', () => resolve(''));
          r.end();
        });
        return echoed === 'ping';
      }, 'the echo through an upgraded connection');

      const pf = spawn(process.execPath, [
        path.join(ROOT, 'bin', 'forkd'),
        'port-forward',
        sbx.sandboxId,
        '8000',
        '--local',
        '0',
        '--json',
        '--daemon-url',
        daemon.url,
        '--daemon-token',
        KEY,
      ]);
      try {
        const line = await new Promise<string>((resolve, reject) => {
          pf.stdout.once('data', (d) => resolve(String(d)));
          pf.once('exit', (code) => reject(new Error(`port-forward exited ${code}`)));
        });
        const local = (JSON.parse(line) as { local: string }).local;
        const r = await fetch(`http://${local}/hello.txt`);
        assert.equal(await r.text(), 'hello from the sandbox');
      } finally {
        pf.kill();
      }
    } finally {
      await sbx.kill();
    }
  });

  it('code interpreter rich results: a pandas DataFrame comes back as HTML, a matplotlib figure as PNG', async () => {
    const sbx = await CodeSandbox.create(DATA_TAG);
    try {
      const df = await sbx.runCode("pd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})");
      assert.equal(df.error, undefined, df.error?.traceback);
      assert.match(df.results[0]?.html ?? '', /<table[\s\S]*<td>x<\/td>/);
      assert.match(df.text ?? '', /a\s+b/);
      const fig = await sbx.runCode("plt.plot([1, 3, 2])\nplt.title('t')\nplt.show()");
      assert.equal(fig.error, undefined, fig.error?.traceback);
      const png = fig.results.find((r) => r.png)?.png;
      assert.ok(png, `a figure came back: ${JSON.stringify(fig.results.map((r) => Object.keys(r)))}`);
      assert.ok(
        Buffer.from(png, 'base64').subarray(0, 8).equals(Buffer.from('89504e470d0a1a0a', 'hex')),
        'a PNG',
      );
      assert.equal((await sbx.runCode('len(plt.get_fignums())')).text, '0', 'shown figures are closed');
    } finally {
      await sbx.kill();
    }
  });
});
