/**
 * The controller daemon on real VMs: spawn, exec/eval/files, BRANCH in every mode, workspaces, memory
 * limits, per-sandbox network namespaces, TTL, the SDK and CLI, the warm pool, and re-adopting
 * sandboxes after the daemon is kill -9'd.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { ROOT, cli, isolatedDirs, qemuProcessesUnder } from '../helpers/env.js';
import { evalOk, execOk, freePort, startDaemon, type Daemon } from '../helpers/daemon.js';
import { FORKD_MCP, call, callError, httpClient, stdioClient } from '../helpers/mcp.js';
import { createSnapshot } from '../../src/snapshot/create.js';
import { stderrReporter } from '../../src/util/report.js';
import { Controller, Sandbox, ConflictError, NotFoundError, CommandExitError } from '../../src/sdk/index.js';
import type { SpawnResult } from '../../src/sdk/types.js';

const TAG = 'ctl';
let dirs: ReturnType<typeof isolatedDirs>;
let shm: string;
let daemon: Daemon;
let port: number;
let c: Controller;

async function spawnOne(extra: Record<string, unknown> = {}): Promise<SpawnResult> {
  const [r] = await c.spawnSandboxes({ snapshotTag: TAG, ...extra });
  assert.ok(r?.ok, `spawn failed: ${r?.error}`);
  return r!;
}

const py = (id: string, code: string) => evalOk(c, id, code);
const sh = (id: string, cmd: string) => execOk(c, id, cmd);

async function restart(args: string[] = []): Promise<void> {
  daemon = await startDaemon({ port, stateDir: path.join(dirs.data, 'ctl'), args });
}

describe('controller daemon on real VMs', { timeout: 30 * 60_000 }, () => {
  before(async () => {
    dirs = isolatedDirs('ctl');
    shm = fs.mkdtempSync('/dev/shm/forkd-test-');
    process.env.FORKD_SHM_DIR = shm;
    await createSnapshot(
      { tag: TAG, recipe: 'python-numpy', net: true, warmupEval: 'import numpy as np' },
      stderrReporter(),
    );
    port = await freePort();
    await restart();
    c = new Controller({ baseUrl: daemon.url });
  });

  after(async () => {
    if (daemon) {
      for (const s of await c.listSandboxes().catch(() => [])) await c.killSandbox(s.id).catch(() => {});
      await daemon.stop();
    }
    for (const pid of qemuProcessesUnder(dirs.run)) process.kill(pid, 'SIGKILL');
    fs.rmSync(shm, { recursive: true, force: true });
    dirs.cleanup();
  });

  it('spawns a batch with per-child results and timings', async () => {
    const res = await c.spawnSandboxes({ snapshotTag: TAG, n: 2, metadata: { who: 'test' } });
    assert.equal(res.length, 2);
    for (const r of res) {
      assert.ok(r.ok, r.error);
      assert.match(r.id!, /^sb-[0-9a-f]{16}$/);
      assert.equal(r.status, 'running');
      assert.deepEqual(r.metadata, { who: 'test' });
      for (const k of ['spawn_ms', 'load_ms', 'cont_ms', 'agent_ms', 'identity_ms', 'ready_ms'] as const)
        assert.equal(typeof r.timings![k], 'number', k);
    }
    assert.notEqual(res[0]!.id, res[1]!.id);
    const list = await c.listSandboxes();
    assert.equal(list.length, 2);
    for (const r of res) await c.killSandbox(r.id!);
    assert.deepEqual(await c.listSandboxes(), []);
    await assert.rejects(c.getSandbox(res[0]!.id!), NotFoundError);
  });

  it('exec (buffered, streamed, errors), eval (state, tracebacks) and files', async () => {
    const { id } = await spawnOne({ envs: { GREETING: 'hello' } });
    try {
      assert.equal(await sh(id!, 'echo $GREETING'), 'hello\n');
      const argv = await c.execCommand(id!, ['sh', '-c', 'echo out; echo err >&2; exit 3']);
      assert.deepEqual([argv.stdout, argv.stderr, argv.exit_code], ['out\n', 'err\n', 3]);
      const missing = await c.execCommand(id!, ['/no/such/program']);
      assert.ok(missing.error, 'a failed spawn comes back as an error, not as silence');
      const slow = await c.execCommand(id!, 'sleep 5', { timeoutSecs: 0.5 });
      assert.equal(slow.timed_out, true);
      assert.match(slow.error ?? '', /timed out/);
      const events = [];
      for await (const ev of c.execStream(id!, 'echo a; sleep 0.2; echo b')) events.push(ev);
      assert.deepEqual(
        events
          .filter((e) => e.type === 'stdout')
          .map((e) => (e as { data: string }).data)
          .join(''),
        'a\nb\n',
      );
      assert.equal(events.at(-1)!.type, 'exit');

      assert.equal(await py(id!, 'x = 20\nx + 1'), '21');
      assert.equal(await py(id!, 'int(np.arange(5).sum()) + x'), '30');
      const bad = await c.evalCode(id!, '1/0');
      assert.match(bad.error!, /ZeroDivisionError/);
      assert.match(bad.traceback!, /Traceback/);
      assert.equal(bad.exit_code, 1);

      const blob = randomBytes(3 << 20);
      await c.writeFile(id!, '/root/dir/blob.bin', blob);
      const back = Buffer.from(await (await c.readFile(id!, '/root/dir/blob.bin')).arrayBuffer());
      assert.ok(back.equals(blob), 'a 3 MiB file comes back byte for byte');
      assert.equal(
        (await sh(id!, 'sha256sum /root/dir/blob.bin')).split(' ')[0],
        (await import('node:crypto')).createHash('sha256').update(blob).digest('hex'),
      );
      await c.makeDir(id!, '/root/dir/sub');
      const ls = await c.listFiles(id!, '/root/dir');
      assert.deepEqual(
        ls.entries.map((e) => [e.name, e.type]),
        [
          ['blob.bin', 'file'],
          ['sub', 'dir'],
        ],
      );
      assert.equal((await c.statFile(id!, '/root/dir/blob.bin')).size, 3 << 20);
      await assert.rejects(c.readFile(id!, '/root/nope'), NotFoundError);
      await c.removeFile(id!, '/root/dir', true);
      await assert.rejects(c.statFile(id!, '/root/dir'), NotFoundError);
    } finally {
      await c.killSandbox(id!);
    }
  });

  it('branch in every mode: children see what was there before the branch, never what came after', async () => {
    const { id } = await spawnOne();
    const children: string[] = [];
    try {
      for (const mode of ['full', 'live', 'diff'] as const) {
        await py(id!, `marker = 'pre-${mode}'`);
        await sh(id!, `echo pre-${mode} > /root/marker.txt`);
        const snap = await c.branchSandbox(id!, { tag: `b-${mode}`, mode });
        assert.equal(snap.status, 'ready');
        assert.equal(snap.bootable, true);
        assert.equal(snap.branched_from, id);
        assert.equal(snap.mode, mode);
        assert.ok(snap.pause_ms! > 0);
        if (mode === 'diff') {
          assert.equal(snap.parent_tag, TAG);
          assert.equal(snap.memory_kind, 'diff');
          assert.ok(snap.diff_physical_bytes! > 0 && snap.diff_physical_bytes! < 256 << 20);
        }
        // the source keeps running on its own
        await py(id!, `marker = 'post-${mode}'`);
        await sh(id!, `echo post-${mode} > /root/marker.txt && sync`);
        const [child] = await c.spawnSandboxes({ snapshotTag: `b-${mode}` });
        assert.ok(child!.ok, child!.error);
        children.push(child!.id!);
        assert.equal(await py(child!.id!, 'marker'), `'pre-${mode}'`, `${mode}: RAM at the branch instant`);
        assert.equal(
          await sh(child!.id!, 'cat /root/marker.txt'),
          `pre-${mode}\n`,
          `${mode}: disk at the branch instant`,
        );
      }
      const info = await c.getSandbox(id!);
      assert.equal(info.branch_count, 3);
      assert.equal(info.has_branched, true);
      const detail = await c.snapshotInfo('b-diff');
      assert.equal(detail.chain_depth, 1);
      assert.deepEqual(detail.ancestors, [TAG]);
      await assert.rejects(c.deleteSnapshot(TAG), ConflictError, 'dependents (and users) protect the parent');
    } finally {
      for (const ch of children) await c.killSandbox(ch);
      await c.killSandbox(id!);
    }
    for (const t of ['b-full', 'b-live', 'b-diff']) await c.deleteSnapshot(t);
  });

  it('a branch with wait:false is "writing" and not spawnable until ready', async () => {
    const { id } = await spawnOne();
    try {
      const snap = await c.branchSandbox(id!, { tag: 'b-async', mode: 'live', wait: false });
      assert.equal(snap.status, 'writing');
      assert.equal(snap.bootable, false);
      await assert.rejects(c.spawnSandboxes({ snapshotTag: 'b-async' }), ConflictError);
      const deadline = Date.now() + 120_000;
      for (;;) {
        const s = (await c.listSnapshots()).find((x) => x.tag === 'b-async');
        if (s?.status === 'ready') break;
        assert.notEqual(s?.status, 'failed', s?.warning);
        assert.ok(Date.now() < deadline, 'branch finished');
        await new Promise((r) => setTimeout(r, 200));
      }
      const [child] = await c.spawnSandboxes({ snapshotTag: 'b-async' });
      assert.ok(child!.ok);
      await c.killSandbox(child!.id!);
    } finally {
      await c.killSandbox(id!);
    }
    await c.deleteSnapshot('b-async');
  });

  it('workspaces keep their files and settings across suspend and resume', async () => {
    const w = await c.createWorkspace({
      name: 'ws1',
      snapshotTag: TAG,
      memoryLimitMib: 512,
      envs: { WS: 'yes' },
    });
    assert.equal(w.status, 'running');
    await sh(w.live_sandbox_id!, 'echo kept > /root/ws.txt');
    await py(w.live_sandbox_id!, "ws_var = 'in-ram'");
    const s = await c.suspendWorkspace('ws1');
    assert.equal(s.status, 'suspended');
    assert.equal(s.live_sandbox_id, null);
    assert.ok(s.current_state_tag);
    await assert.rejects(c.getSandbox(w.live_sandbox_id!), NotFoundError);
    const r = await c.resumeWorkspace('ws1');
    assert.equal(r.status, 'running');
    assert.equal(await sh(r.live_sandbox_id!, 'cat /root/ws.txt; echo $WS'), 'kept\nyes\n');
    assert.equal(await py(r.live_sandbox_id!, 'ws_var'), "'in-ram'");
    assert.equal((await c.getSandbox(r.live_sandbox_id!)).memory_limit_mib, 512, 'settings survive a resume');
    // a second (diff) suspend stacks on the first state
    await sh(r.live_sandbox_id!, 'echo second > /root/ws2.txt');
    const s2 = await c.suspendWorkspace('ws1', { diff: true });
    const r2 = await c.resumeWorkspace('ws1');
    assert.equal(await sh(r2.live_sandbox_id!, 'cat /root/ws.txt /root/ws2.txt'), 'kept\nsecond\n');
    assert.notEqual(s2.current_state_tag, s.current_state_tag);
    await c.deleteWorkspace('ws1');
    await assert.rejects(c.getWorkspace('ws1'), NotFoundError);
    assert.ok(
      !(await c.listSnapshots()).some((x) => x.tag.startsWith('ws-ws1-')),
      'workspace states are deleted with it',
    );
    assert.equal(await c.listSandboxes().then((l) => l.length), 0);
  });

  it('a sandbox over its memory limit dies alone; its sibling lives', async () => {
    const [a, b] = await c.spawnSandboxes({ snapshotTag: TAG, n: 2, memoryLimitMib: 200 });
    assert.ok(a!.ok && b!.ok);
    await c
      .execCommand(a!.id!, ['python3', '-c', 'x = bytearray(300 << 20); import time; time.sleep(30)'], {
        timeoutSecs: 60,
      })
      .catch(() => {});
    const deadline = Date.now() + 30_000;
    let info = await c.getSandbox(a!.id!);
    while (info.status === 'running' && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 200));
      info = await c.getSandbox(a!.id!);
    }
    assert.equal(info.status, 'exited');
    assert.match(info.exit_reason ?? '', /oom/);
    assert.equal(await sh(b!.id!, 'echo alive'), 'alive\n');
    await c.killSandbox(b!.id!);
    await c.killSandbox(a!.id!);
  });

  it('per-sandbox network namespaces: same guest IP, egress through NAT to a server in a namespace this test made', async () => {
    const ns = `fkts-${randomBytes(3).toString('hex')}`;
    const hostIf = `fkts${randomBytes(2).toString('hex')}`;
    const ip = (...a: string[]) => execFileSync('ip', a, { stdio: 'pipe' });
    let server: ChildProcess | undefined;
    const res = await c.spawnSandboxes({ snapshotTag: TAG, n: 2, perChildNetns: true });
    try {
      ip('netns', 'add', ns);
      ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
      ip('addr', 'add', '10.250.7.1/24', 'dev', hostIf);
      ip('link', 'set', hostIf, 'up');
      ip('-n', ns, 'addr', 'add', '10.250.7.2/24', 'dev', 'eth0');
      ip('-n', ns, 'link', 'set', 'eth0', 'up');
      ip('-n', ns, 'link', 'set', 'lo', 'up');
      server = spawn(
        'ip',
        [
          'netns',
          'exec',
          ns,
          process.execPath,
          '-e',
          "require('http').createServer((q,s)=>s.end('egress-ok '+q.socket.remoteAddress)).listen(8080,'10.250.7.2')",
        ],
        { stdio: 'ignore' },
      );
      await new Promise((r) => setTimeout(r, 500));
      for (const r of res) {
        assert.ok(r.ok, r.error);
        assert.equal(r.guest_addr, '10.42.0.2');
        assert.ok(r.netns);
        const out = await sh(
          r.id!,
          'python3 -c "import urllib.request as u; print(u.urlopen(\'http://10.250.7.2:8080/\', timeout=10).read().decode())"',
        );
        assert.match(out, /^egress-ok 10\.250\.7\.1/, 'reached the server, source NATed to the host side');
      }
      const nss = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
      for (const r of res) assert.ok(nss.includes(r.netns!));
    } finally {
      server?.kill();
      for (const r of res) if (r.ok) await c.killSandbox(r.id!);
      ip('netns', 'del', ns);
    }
    const nss = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
    for (const r of res) assert.ok(!nss.includes(r.netns!), 'namespaces are removed with their sandbox');
  });

  it('a sandbox with a timeout is killed when it runs out; the timeout can be extended', async () => {
    const a = await spawnOne({ timeout: 2 });
    const b = await spawnOne({ timeout: 2 });
    await c.setSandboxTimeout(b.id!, 60);
    await new Promise((r) => setTimeout(r, 3500));
    await assert.rejects(c.getSandbox(a.id!), NotFoundError);
    assert.equal((await c.getSandbox(b.id!)).status, 'running');
    await c.killSandbox(b.id!);
  });

  it('the E2B-shaped SDK: create, commands, files, runCode, branch, fork, kill', async () => {
    const sb = await Sandbox.create({ baseUrl: daemon.url, template: TAG, timeoutMs: 120_000 });
    try {
      const chunks: string[] = [];
      const r = await sb.commands.run('echo one; echo two', { onStdout: (d) => chunks.push(d) });
      assert.equal(r.exitCode, 0);
      assert.equal(chunks.join(''), 'one\ntwo\n');
      await assert.rejects(
        sb.commands.run('exit 4'),
        (e: unknown) => e instanceof CommandExitError && e.exitCode === 4,
      );
      const bg = await sb.commands.run('sleep 0.3; echo bg', { background: true });
      assert.equal((await bg.wait()).stdout, 'bg\n');
      await sb.files.write('/root/sdk.txt', 'sdk-data');
      assert.equal(await sb.files.read('/root/sdk.txt'), 'sdk-data');
      assert.equal(await sb.files.exists('/root/sdk.txt'), true);
      assert.equal(await sb.files.makeDir('/root/newdir'), true);
      assert.ok((await sb.files.list('/root')).some((e) => e.name === 'newdir'));
      await sb.files.remove('/root/sdk.txt');
      assert.equal(await sb.files.exists('/root/sdk.txt'), false);
      const ex = await sb.runCode('y = 6 * 7\ny');
      assert.equal(ex.text, '42');
      const err = await sb.runCode('raise ValueError("nope")');
      assert.equal(err.error?.name, 'ValueError');
      const snap = await sb.branch({ tag: 'sdk-branch', mode: 'live' });
      assert.equal(snap.status, 'ready');
      const kids = await Sandbox.fork(2, { baseUrl: daemon.url, template: 'sdk-branch' });
      for (const k of kids) {
        assert.ok(k instanceof Sandbox);
        assert.equal((await k.runCode('y')).text, '42');
        assert.equal(await k.kill(), true);
        assert.equal(await k.kill(), false, 'kill is idempotent');
      }
    } finally {
      await sb.kill();
    }
    await c.deleteSnapshot('sdk-branch');
  });

  it('the Python SDK (sdk/python, its unittest file test/python/test_sdk.py) against this daemon', async () => {
    const r = spawnSync('python3', ['-m', 'unittest', '-v', 'test_sdk'], {
      cwd: path.join(ROOT, 'test', 'python'),
      env: {
        ...process.env,
        PYTHONPATH: path.join(ROOT, 'sdk', 'python'),
        FORKD_URL: daemon.url,
        FORKD_TEST_TAG: TAG,
      },
      encoding: 'utf8',
      timeout: 10 * 60_000,
    });
    assert.equal(r.status, 0, `python3 -m unittest failed:\n${r.stderr}${r.stdout}`);
    assert.match(r.stderr, /Ran 3 tests/);
  });

  it('MCP over stdio: every tool against this daemon, bad arguments as tool errors, resources', async () => {
    const m = await stdioClient({ FORKD_URL: daemon.url });
    try {
      const names = (await m.listTools()).tools.map((t) => t.name).sort();
      assert.deepEqual(names, [
        'branch',
        'eval',
        'exec',
        'fork',
        'get_sandbox',
        'kill_sandbox',
        'list_dir',
        'list_sandboxes',
        'list_snapshots',
        'read_file',
        'snapshot_info',
        'spawn',
        'wait_for_text',
        'write_file',
      ]);
      const snaps = (await call(m, 'list_snapshots')).snapshots as Array<{ tag: string }>;
      assert.ok(snaps.some((s) => s.tag === TAG));
      assert.equal(((await call(m, 'snapshot_info', { tag: TAG })).snapshot as { tag: string }).tag, TAG);
      const [sb] = (await call(m, 'spawn', { tag: TAG, n: 1, timeout_secs: 600 })).sandboxes as Array<{
        ok: boolean;
        id: string;
      }>;
      assert.ok(sb?.ok);
      const id = sb.id;
      assert.ok(
        ((await call(m, 'list_sandboxes')).sandboxes as Array<{ id: string }>).some((s) => s.id === id),
      );
      assert.equal(((await call(m, 'get_sandbox', { sandbox_id: id })).sandbox as { id: string }).id, id);
      const ex = await call(m, 'exec', { sandbox_id: id, command: 'echo hi; echo oops >&2; exit 3' });
      assert.deepEqual([ex.exit_code, ex.stdout, ex.stderr, ex.truncated], [3, 'hi\n', 'oops\n', false]);
      const big = await call(m, 'exec', { sandbox_id: id, command: 'head -c 200000 /dev/zero | tr "\\0" a' });
      assert.equal(big.truncated, true, 'a cut output is marked');
      assert.equal((await call(m, 'eval', { sandbox_id: id, code: 'v = 20 + 22\nv' })).value, '42');
      const bad = await call(m, 'eval', { sandbox_id: id, code: '1/0' });
      assert.equal(bad.ok, false);
      assert.match(String(bad.error), /ZeroDivisionError/);
      assert.match(String(bad.traceback), /Traceback/);
      assert.equal(
        (await call(m, 'eval', { sandbox_id: id, code: '[1, 2, 3].length', language: 'js' })).value,
        '3',
      );
      // Files, with a path a shell would split or unquote.
      const odd = '/root/a b "c" $(x)';
      await call(m, 'write_file', { sandbox_id: id, path: `${odd}/f.txt`, content: 'mcp-data' });
      assert.equal(
        (await call(m, 'read_file', { sandbox_id: id, path: `${odd}/f.txt` })).content,
        'mcp-data',
      );
      const entries = (await call(m, 'list_dir', { sandbox_id: id, path: odd })).entries as Array<{
        name: string;
      }>;
      assert.deepEqual(
        entries.map((e) => e.name),
        ['f.txt'],
      );
      // wait_for_text: a file that gets its marker later; a command whose output reaches one.
      await call(m, 'exec', {
        sandbox_id: id,
        command: `(sleep 1; echo READY >> '${odd}/log') >/dev/null 2>&1 &`,
      });
      assert.equal(
        (
          await call(m, 'wait_for_text', {
            sandbox_id: id,
            path: `${odd}/log`,
            text: 'READY',
            timeout_secs: 20,
          })
        ).found,
        true,
      );
      const w = await call(m, 'wait_for_text', {
        sandbox_id: id,
        command: 'for i in 1 2 3; do echo tick $i; sleep 0.2; done; echo DONE; sleep 30',
        text: 'DONE',
        timeout_secs: 20,
      });
      assert.equal(w.found, true);
      assert.match(String(w.output_tail), /tick 3\nDONE/);
      assert.equal(
        (await call(m, 'wait_for_text', { sandbox_id: id, path: '/root/none', text: 'x', timeout_secs: 1 }))
          .found,
        false,
      );
      // branch and fork: children start from the sandbox's state.
      const br = (await call(m, 'branch', { sandbox_id: id, tag: 'mcp-branch', mode: 'live' })).snapshot as {
        tag: string;
        status: string;
      };
      assert.deepEqual([br.tag, br.status], ['mcp-branch', 'ready']);
      const f = await call(m, 'fork', { sandbox_id: id, n: 2 });
      const kids = f.children as Array<{ ok: boolean; id: string }>;
      assert.equal(kids.filter((k) => k.ok).length, 2);
      for (const k of kids) {
        assert.equal((await call(m, 'eval', { sandbox_id: k.id, code: 'v' })).value, '42');
        assert.equal((await call(m, 'kill_sandbox', { sandbox_id: k.id })).killed, true);
      }
      // Resources: read-only listings.
      const res = await m.listResources();
      assert.deepEqual(res.resources.map((r) => r.uri).sort(), ['forkd://sandboxes', 'forkd://snapshots']);
      const listed = await m.readResource({ uri: 'forkd://sandboxes' });
      assert.match(String((listed.contents[0] as { text: string }).text), new RegExp(id));
      // Bad arguments and failures are tool errors that name the fix; the server lives on.
      assert.match(
        await callError(m, 'exec', { sandbox_id: 'not/an/id', command: 'true' }),
        /sandbox_id|Invalid/i,
      );
      assert.match(await callError(m, 'fork', { n: 2 }), /exactly one of sandbox_id or tag/);
      assert.match(
        await callError(m, 'get_sandbox', { sandbox_id: 'sb-0000000000000000' }),
        /404|not found|no sandbox/i,
      );
      assert.match(await callError(m, 'spawn', { tag: 'no-such-tag' }), /no-such-tag/);
      assert.equal((await call(m, 'kill_sandbox', { sandbox_id: id })).killed, true);
      assert.equal((await call(m, 'kill_sandbox', { sandbox_id: id })).killed, false, 'idempotent');
      await c.deleteSnapshot(f.from_tag as string);
      await c.deleteSnapshot('mcp-branch');
    } finally {
      await m.close();
    }
    const down = await stdioClient({ FORKD_URL: 'http://127.0.0.1:1' });
    try {
      assert.match(await callError(down, 'list_sandboxes', {}), /cannot reach the forkd/);
    } finally {
      await down.close();
    }
  });

  it('MCP over Streamable HTTP: loopback, a token when asked for, never open off loopback', async () => {
    const refused = await cli(['mcp', '--http', '0.0.0.0:1'], {
      env: { FORKD_URL: daemon.url, FORKD_MCP_TOKEN: '' },
    });
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /refusing to serve MCP on 0.0.0.0 without a token/);
    const mcpPort = await freePort();
    const proc = spawn(process.execPath, [FORKD_MCP, '--http', `127.0.0.1:${mcpPort}`, '--token', 'sekret'], {
      env: { ...process.env, FORKD_URL: daemon.url },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    try {
      await new Promise<void>((resolve, reject) => {
        proc.stderr!.on('data', (d: Buffer) => String(d).includes('MCP server on') && resolve());
        proc.on('exit', (code) => reject(new Error(`forkd-mcp exited ${code}`)));
      });
      const url = `http://127.0.0.1:${mcpPort}/mcp`;
      const noToken = await fetch(url, {
        method: 'POST',
        body: '{}',
        headers: { 'content-type': 'application/json' },
      });
      assert.equal(noToken.status, 401);
      const m = await httpClient(url, 'sekret');
      try {
        assert.equal((await m.listTools()).tools.length, 14);
        const snaps = (await call(m, 'list_snapshots')).snapshots as Array<{ tag: string }>;
        assert.ok(snaps.some((s) => s.tag === TAG));
        const [sb] = (await call(m, 'spawn', { tag: TAG })).sandboxes as Array<{ id: string }>;
        assert.equal(
          (await call(m, 'exec', { sandbox_id: sb!.id, command: 'echo over-http' })).stdout,
          'over-http\n',
        );
        assert.equal((await call(m, 'kill_sandbox', { sandbox_id: sb!.id })).killed, true);
      } finally {
        await m.close();
      }
    } finally {
      proc.kill();
    }
  });

  it('CLI: spawn, ls, exec, eval, ping and kill through the daemon', async () => {
    const env = { FORKD_URL: daemon.url };
    const sp = await cli(['spawn', '--tag', TAG, '-n', '1', '--json'], { env });
    assert.equal(sp.code, 0, sp.stderr);
    const [r] = JSON.parse(sp.stdout) as SpawnResult[];
    const ls = await cli(['ls', '--json'], { env });
    assert.ok((JSON.parse(ls.stdout) as Array<{ id: string }>).some((s) => s.id === r!.id));
    // exec streams and exits with the command's code; --json buffers.
    const ex = await cli(['exec', r!.id!, '--', 'sh', '-c', 'echo out; echo err >&2; exit 3'], { env });
    assert.deepEqual([ex.code, ex.stdout, ex.stderr], [3, 'out\n', 'err\n']);
    const exj = await cli(['exec', r!.id!, '--json', '--env', 'X=y z', '--', 'sh', '-c', 'echo "$X"'], {
      env,
    });
    assert.equal(exj.code, 0, exj.stderr);
    assert.equal((JSON.parse(exj.stdout) as { stdout: string }).stdout, 'y z\n');
    const missing = await cli(['exec', r!.id!, '--', '/no/such/program'], { env });
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /\/no\/such\/program: not found/);
    const ev = await cli(['eval', r!.id!, 'sum(range(5))'], { env });
    assert.deepEqual([ev.code, ev.stdout], [0, '10\n']);
    const evErr = await cli(['eval', r!.id!, '1/0'], { env });
    assert.equal(evErr.code, 1);
    assert.match(evErr.stderr, /ZeroDivisionError/);
    const evJs = await cli(['eval', r!.id!, '--lang', 'js', '--json', '6 * 7'], { env });
    assert.equal((JSON.parse(evJs.stdout) as { result: string }).result, '42');
    const ping = await cli(['ping', r!.id!, '--json'], { env });
    assert.equal(ping.code, 0, ping.stderr);
    assert.match(String((JSON.parse(ping.stdout) as { node_version: string }).node_version), /^v\d+/);
    const gone = await cli(['ping', 'sb-0000000000000000'], { env });
    assert.notEqual(gone.code, 0);
    const k = await cli(['kill', '--tag', TAG, '--json'], { env });
    assert.equal(k.code, 0, k.stderr);
    assert.deepEqual(JSON.parse(k.stdout), [{ id: r!.id, ok: true }]);
    const bad = await cli(['kill', 'not/an/id'], { env });
    assert.equal(bad.code, 2);
    const down = await cli(['ls'], { env: { FORKD_URL: 'http://127.0.0.1:1' } });
    assert.notEqual(down.code, 0);
    assert.match(down.stderr, /cannot reach the forkd controller/);
  });

  it('a hostile guest: its agent killed, garbage on the agent port; only that sandbox errs, and it recovers', async () => {
    const [a, b] = await c.spawnSandboxes({ snapshotTag: TAG, n: 2 });
    assert.ok(a!.ok && b!.ok);
    const agentPid = "$(pgrep -f '^/usr/bin/node .*/opt/forkd/src/guest/agent/main.js')";
    // 1. The agent is killed while an exec is in flight; its supervisor restarts it at once.
    await sh(a!.id!, `setsid sh -c "sleep 1; kill -9 ${agentPid}" >/dev/null 2>&1 </dev/null &`);
    await assert.rejects(c.execCommand(a!.id!, 'sleep 20; echo never'), /restarted/);
    assert.equal(await sh(a!.id!, 'echo back'), 'back\n', 'the next request resyncs with the new agent');
    // 2. Code in the guest kills the agent and takes the port before the supervisor restarts it (the
    //    restarted agent cannot open a port that is in use, and is retried), writes garbage, a 4 MiB
    //    line and half an HTTP/2 frame to the host in the agent's place, then lets the agent back.
    await sh(
      a!.id!,
      `cat > /root/attack.sh <<'ATTACK'
agent=${agentPid}
port=/dev/$(basename $(dirname $(grep -l org.forkd.agent /sys/class/virtio-ports/*/name)))
sleep 1
kill -9 $agent
exec 3> $port
timeout 2 head -c 65536 /dev/urandom >&3
timeout 2 python3 -c 'import sys; sys.stdout.write(chr(123) + "x" * (4 << 20))' >&3
timeout 2 printf '\\000\\003\\350\\001\\004\\000\\000\\000\\001abc' >&3
sleep 2
exec 3>&-
ATTACK
setsid sh /root/attack.sh >/dev/null 2>&1 </dev/null &`,
    );
    await assert.rejects(c.execCommand(a!.id!, 'sleep 20; echo never'), /guest agent/);
    assert.equal(await sh(b!.id!, 'echo sibling'), 'sibling\n', 'the other sandbox is unaffected');
    assert.equal((await fetch(`${daemon.url}/healthz`)).status, 200);
    await new Promise((r) => setTimeout(r, 4000)); // the attack script lets the supervisor go on
    let back = '';
    for (let i = 0; i < 5 && !back; i++) back = await sh(a!.id!, 'echo recovered').catch(() => '');
    assert.equal(back, 'recovered\n', 'the sandbox answers again once a real agent holds the port');
    assert.equal(daemon.proc.exitCode, null, 'the daemon never exited');
    await c.killSandbox(a!.id!);
    await c.killSandbox(b!.id!);
    assert.deepEqual(await c.listSandboxes(), []);
  });

  it('re-adopts running sandboxes after kill -9 of the daemon; cleans up those that died meanwhile', async () => {
    const [a, b] = await c.spawnSandboxes({ snapshotTag: TAG, n: 2, perChildNetns: true });
    assert.ok(a!.ok && b!.ok);
    await py(a!.id!, "survivor = 'yes'");
    await daemon.stop('SIGKILL');
    process.kill(b!.pid!, 'SIGKILL');
    await restart();
    const list = await c.listSandboxes();
    assert.deepEqual(
      list.map((s) => s.id),
      [a!.id],
    );
    assert.equal(await py(a!.id!, 'survivor'), "'yes'");
    assert.equal(await sh(a!.id!, 'echo adopted'), 'adopted\n');
    const snap = await c.branchSandbox(a!.id!, { tag: 'after-restart', mode: 'live' });
    assert.equal(snap.status, 'ready');
    await c.killSandbox(a!.id!);
    assert.equal(qemuProcessesUnder(dirs.run).length, 0, 'no QEMU left');
    assert.ok(!fs.readdirSync(dirs.run).some((n) => n.startsWith('forkd-sb-')), 'no sandbox dirs left');
    const nss = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
    assert.ok(!nss.includes(b!.netns!), "the dead sandbox's namespace was removed");
    await c.deleteSnapshot('after-restart');
  });

  it('warm pool: the second spawn takes a prepared child', async () => {
    await daemon.stop();
    await restart(['--pool-size', '1']);
    const first = await spawnOne();
    assert.equal(first.timings!.from_pool, false);
    const deadline = Date.now() + 30_000;
    while (!(await c.metrics()).includes(`forkd_pool_ready{tag="${TAG}"} 1`)) {
      assert.ok(Date.now() < deadline, 'the pool refilled');
      await new Promise((r) => setTimeout(r, 100));
    }
    const second = await spawnOne();
    assert.equal(second.timings!.from_pool, true);
    assert.equal(await sh(second.id!, 'echo pooled'), 'pooled\n');
    await c.killSandbox(first.id!);
    await c.killSandbox(second.id!);
    await daemon.stop();
    await restart();
    assert.ok(
      !fs.readdirSync(dirs.run).some((n) => n.startsWith('forkd-sb-')),
      'pool children are not left behind',
    );
  });
});
