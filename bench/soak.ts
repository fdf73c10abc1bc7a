/**
 * npm run soak — the daemon under sustained use, crashes and hostile input, on real VMs. Bounded in count
 * and time; traffic goes only to loopback and to namespaces this run creates. Phases:
 *   cycles: N spawn → exec → kill cycles (default 200), mixing per-sandbox netns, memory limits and the
 *           warm pool; then counts what leaked: QEMUs, taps, netns, cgroups, VMM jails (uid leases, roots),
 *           dirs, tmpfs files, daemon fds.
 *   chaos:  kill -9 of the daemon at a random point during spawn, exec, branch (each mode) and workspace
 *           suspend (default 30 times); after each restart every listed sandbox must answer, and every
 *           snapshot listed ready must verify against its hashes; at the end nothing may leak.
 *   fuzz:   random requests against every route (default 10,000): 0 crashes, 0 unexpected 5xx, and the
 *           daemon's memory stays flat.
 *   boots:  parent boots in a row (default 20), each to an answering agent: all must succeed.
 * Prints a table and writes bench-results/soak-<time>.json. Exit code 1 if any check failed.
 * FORKD_SOAK_CYCLES / FORKD_SOAK_CHAOS / FORKD_SOAK_FUZZ set the counts; FORKD_SOAK_PHASES=cycles,fuzz
 * picks phases.
 */
import fs from 'node:fs';
import { jailStateDir } from '../src/vmm/jail.js';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { writeBenchResults } from './results.js';
import { coldBootGuest } from './cold-boot.js';
import { buildImage } from '../src/image/build.js';
import { currentAccel } from '../src/host/accel.js';
import { createSnapshot } from '../src/snapshot/create.js';
import { listSnapshots, loadSnapshot } from '../src/snapshot/store.js';
import { sha256File } from '../src/util/hash.js';
import { Controller } from '../src/sdk/index.js';
import { table } from '../src/util/format.js';
import { stderrReporter } from '../src/util/report.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const CONTROLLER = path.join(ROOT, 'bin', 'forkd-controller');
const CYCLES = Number(process.env.FORKD_SOAK_CYCLES ?? 200);
const CHAOS = Number(process.env.FORKD_SOAK_CHAOS ?? 30);
const FUZZ = Number(process.env.FORKD_SOAK_FUZZ ?? 10_000);
const BOOTS = Number(process.env.FORKD_SOAK_BOOTS ?? 20);
const PHASES = (process.env.FORKD_SOAK_PHASES ?? 'cycles,chaos,fuzz,boots').split(',');
const DEADLINE = Date.now() + Number(process.env.FORKD_SOAK_MAX_MIN ?? 60) * 60_000;

const base = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-soak-'));
process.env.XDG_DATA_HOME = path.join(base, 'data');
process.env.FORKD_RUN_DIR = path.join(base, 'run');
const SHM = fs.mkdtempSync('/dev/shm/forkd-soak-');
process.env.FORKD_SHM_DIR = SHM;
fs.mkdirSync(process.env.FORKD_RUN_DIR, { recursive: true });
const log = (m: string) => process.stderr.write(`soak: ${m}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const rand = (n: number) => Math.floor(Math.random() * n);

interface Check {
  phase: string;
  what: string;
  value: string;
  ok: boolean;
}
const checks: Check[] = [];
const check = (phase: string, what: string, value: string | number, ok: boolean) => {
  checks.push({ phase, what, value: String(value), ok });
  log(`${ok ? 'ok  ' : 'FAIL'} ${phase}: ${what} = ${value}`);
};

// --- the daemon, as its own process so it can be kill -9'd -------------------------------------------
let daemon: ChildProcess | undefined;
let port = 0;
let daemonLog = '';
const stateDir = path.join(base, 'state');

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

async function startDaemon(extra: string[] = []): Promise<void> {
  daemon = spawn(
    process.execPath,
    [
      CONTROLLER,
      'serve',
      '--bind',
      `127.0.0.1:${port}`,
      '--state',
      path.join(stateDir, 'state.json'),
      ...extra,
    ],
    { env: { ...process.env, FORKD_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  daemon.stdout!.on('data', (d) => (daemonLog = (daemonLog + d).slice(-20_000)));
  daemon.stderr!.on('data', (d) => (daemonLog = (daemonLog + d).slice(-20_000)));
  for (let i = 0; i < 300; i++) {
    try {
      if ((await fetch(`http://127.0.0.1:${port}/healthz`)).ok) return;
    } catch {
      /* not yet */
    }
    if (daemon.exitCode !== null) break;
    await sleep(100);
  }
  throw new Error(`daemon did not start:\n${daemonLog}`);
}

async function stopDaemon(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  const d = daemon;
  if (!d || d.exitCode !== null) return;
  const gone = new Promise((r) => d.once('exit', r));
  d.kill(signal);
  await gone;
}

const ctl = () => new Controller({ baseUrl: `http://127.0.0.1:${port}`, timeoutMs: 120_000 });

// --- what a run may leave behind ----------------------------------------------------------------------
/** Host-wide counts at the start of the run: leaks are what this run added. */
let baseline: Record<string, number> = {};

function leaks(): Record<string, number> {
  const now = hostCounts();
  return Object.fromEntries(Object.entries(now).map(([k, v]) => [k, v - (baseline[k] ?? 0)]));
}

function hostCounts(): Record<string, number> {
  const run = process.env.FORKD_RUN_DIR!;
  const sh = (cmd: string, args: string[]) => {
    try {
      return execFileSync(cmd, args, { encoding: 'utf8' });
    } catch {
      return '';
    }
  };
  let qemus = 0;
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      if (fs.readFileSync(`/proc/${e}/cmdline`, 'utf8').includes(run + '/')) qemus++;
    } catch {
      /* gone */
    }
  }
  const cg = ['/sys/fs/cgroup/memory/forkd', '/sys/fs/cgroup/forkd'].find((d) => fs.existsSync(d));
  return {
    qemu_processes: qemus,
    taps: sh('ip', ['-o', 'link', 'show'])
      .split('\n')
      .filter((l) => /: fk[0-9a-z]+[@:]/.test(l)).length,
    netns: sh('ip', ['netns', 'list'])
      .split('\n')
      .filter((l) => l.startsWith('forkd-')).length,
    cgroups: cg ? fs.readdirSync(cg).filter((n) => n.startsWith('sb-') || n.startsWith('vmm-')).length : 0,
    jail_leases: countEntries(path.join(jailStateDir(), 'uids')),
    jail_roots: countEntries(path.join(jailStateDir(), 'roots')),
    sandbox_dirs: fs.readdirSync(run).filter((n) => n.startsWith('forkd-')).length,
  };
}

function countEntries(dir: string): number {
  try {
    return fs.readdirSync(dir).length;
  } catch {
    return 0;
  }
}

function daemonFds(): number {
  try {
    return fs.readdirSync(`/proc/${daemon!.pid}/fd`).length;
  } catch {
    return -1;
  }
}

function daemonRssMib(): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${daemon!.pid}/status`, 'utf8'));
    return m ? Math.round(Number(m[1]) / 1024) : -1;
  } catch {
    return -1;
  }
}

/** tmpfs images the daemon keeps: one per snapshot content, never one per sandbox. */
const shmFiles = () => fs.readdirSync(SHM, { recursive: true }).length;

// --- phases -------------------------------------------------------------------------------------------
async function cycles(): Promise<void> {
  await startDaemon(['--pool-size', '1']);
  const c = ctl();
  const fd0 = daemonFds();
  let shm0 = -1;
  let ok = 0;
  const failures: string[] = [];
  const t0 = Date.now();
  for (let i = 0; i < CYCLES && Date.now() < DEADLINE; i++) {
    try {
      const [r] = await c.spawnSandboxes({
        snapshotTag: 'soak',
        ...(i % 3 === 0 ? { perChildNetns: true } : {}),
        // Every sixth cycle with an egress policy: its nftables table, resolver and SNI/Host listeners.
        ...(i % 6 === 3 ? { network: { allowOut: ['example.test'], allowInternetAccess: false } } : {}),
        ...(i % 4 === 1 ? { memoryLimitMib: 384 } : {}),
      });
      if (!r?.ok) throw new Error(r?.error ?? 'spawn failed');
      const e = await c.execCommand(r.id!, `echo cycle-${i}`);
      if (e.stdout !== `cycle-${i}\n`) throw new Error(`exec said ${JSON.stringify(e.stdout)}`);
      await c.killSandbox(r.id!);
      // The first spawn of a tag makes its one tmpfs image; none may follow it.
      if (shm0 < 0) shm0 = shmFiles();
      ok++;
    } catch (e) {
      failures.push(`cycle ${i}: ${(e as Error).message.slice(0, 200)}`);
    }
    if (i % 50 === 49) log(`cycles: ${i + 1}/${CYCLES} (${Math.round((Date.now() - t0) / 1000)} s)`);
  }
  await sleep(500);
  check('cycles', 'spawn/exec/kill cycles ok', `${ok}/${CYCLES}`, ok === CYCLES);
  for (const f of failures.slice(0, 5)) log(`  ${f}`);
  // The pool keeps one prepared child for the tag: that one is expected, the rest would be leaks.
  const fd1 = daemonFds();
  check('cycles', 'daemon fds grown', fd1 - fd0, fd1 - fd0 <= 8);
  check('cycles', 'tmpfs files grown after the first spawn', shmFiles() - shm0, shmFiles() - shm0 === 0);
  await stopDaemon();
  for (const [k, v] of Object.entries(leaks())) check('cycles', `leaked ${k}`, v, v === 0);
}

async function verifyReadySnapshots(): Promise<string[]> {
  const bad: string[] = [];
  for (const l of listSnapshots()) {
    try {
      const s = loadSnapshot(l.tag);
      for (const f of Object.values(s.meta.files) as Array<{ path: string; sha256: string } | undefined>) {
        if (!f?.sha256 || f.path === 'base.ext4') continue;
        if ((await sha256File(path.join(s.dir, f.path))) !== f.sha256) bad.push(`${l.tag}/${f.path}`);
      }
    } catch (e) {
      bad.push(`${l.tag}: ${(e as Error).message.slice(0, 100)}`);
    }
  }
  return bad;
}

async function chaos(): Promise<void> {
  await startDaemon();
  let c = ctl();
  const ops = ['spawn', 'exec', 'branch-full', 'branch-live', 'branch-diff', 'suspend'] as const;
  let restarts = 0;
  let unanswered = 0;
  let badSnapshots: string[] = [];
  const opCount: Record<string, number> = {};
  for (let i = 0; i < CHAOS && Date.now() < DEADLINE; i++) {
    const op = ops[i % ops.length]!;
    opCount[op] = (opCount[op] ?? 0) + 1;
    // A live sandbox to act on (spawned before the crash window).
    let sb: string | undefined;
    if (op !== 'spawn' && op !== 'suspend') {
      const [r] = await c.spawnSandboxes({ snapshotTag: 'soak' }).catch(() => [undefined]);
      sb = r?.ok ? r.id : undefined;
    }
    const ws = `ws${i}`;
    if (op === 'suspend') await c.createWorkspace({ name: ws, snapshotTag: 'soak' }).catch(() => {});
    const work = (async () => {
      if (op === 'spawn') await c.spawnSandboxes({ snapshotTag: 'soak', n: 2 });
      else if (op === 'exec' && sb) await c.execCommand(sb, 'dd if=/dev/urandom of=/root/x bs=1M count=8');
      else if (op.startsWith('branch') && sb)
        await c.branchSandbox(sb, { tag: `chaos-${i}`, mode: op.slice(7) as 'full' | 'live' | 'diff' });
      else if (op === 'suspend') await c.suspendWorkspace(ws);
    })().catch(() => {});
    await sleep(rand(2500));
    await stopDaemon('SIGKILL');
    await work;
    await startDaemon();
    restarts++;
    c = ctl();
    for (const s of await c.listSandboxes()) {
      const r = await c.execCommand(s.id, 'echo alive').catch((e: Error) => ({ stdout: e.message }));
      if (r.stdout !== 'alive\n') {
        unanswered++;
        log(`chaos ${i} (${op}): sandbox ${s.id} did not answer: ${String(r.stdout).slice(0, 120)}`);
      }
    }
    badSnapshots = badSnapshots.concat(await verifyReadySnapshots());
    // Keep the host small: at most a few sandboxes across iterations.
    for (const s of await c.listSandboxes()) if (rand(2) === 0) await c.killSandbox(s.id).catch(() => {});
  }
  check('chaos', 'daemon kill -9 + restart', `${restarts} (${JSON.stringify(opCount)})`, restarts === CHAOS);
  check('chaos', 're-adopted sandboxes that did not answer', unanswered, unanswered === 0);
  check(
    'chaos',
    'ready snapshots whose hashes do not verify',
    badSnapshots.length,
    badSnapshots.length === 0,
  );
  for (const b of badSnapshots.slice(0, 5)) log(`  ${b}`);
  for (const w of await c.listWorkspaces()) await c.deleteWorkspace(w.name).catch(() => {});
  for (const s of await c.listSandboxes()) await c.killSandbox(s.id).catch(() => {});
  await stopDaemon();
  for (const [k, v] of Object.entries(leaks())) check('chaos', `leaked ${k}`, v, v === 0);
}

/** 5xx a route may answer by design: the guest or host failed (502/504/507), or capacity (503). */
const DOCUMENTED_5XX = new Set([501, 502, 503, 504, 507]);

function junk(): unknown {
  const pick = rand(12);
  if (pick === 0) return null;
  if (pick === 1) return rand(2) === 0;
  if (pick === 2) return rand(1e9) - 5e8;
  if (pick === 3) return 'x'.repeat(rand(300));
  if (pick === 4) return Array.from({ length: rand(6) }, junk);
  if (pick === 5) return Object.fromEntries(Array.from({ length: rand(5) }, () => [`k${rand(20)}`, junk()]));
  if (pick === 6) return '../../etc/passwd';
  if (pick === 7) return 'soak';
  if (pick === 8) return -1;
  if (pick === 9) return 1e308;
  if (pick === 10) return '\u0000\uffff';
  return { snapshot_tag: 'soak', n: rand(3), cmd: 'true', tag: `f${rand(100)}` };
}

async function fuzz(): Promise<void> {
  await startDaemon();
  const c = ctl();
  const [live] = await c.spawnSandboxes({ snapshotTag: 'soak' });
  const spec = (await (await fetch(`http://127.0.0.1:${port}/openapi.json`)).json()) as {
    paths: Record<string, Record<string, unknown>>;
  };
  const routes = Object.entries(spec.paths).flatMap(([p, methods]) =>
    Object.keys(methods).map((m) => ({ method: m.toUpperCase(), path: p })),
  );
  const rss0 = daemonRssMib();
  let sent = 0;
  let unexpected5xx = 0;
  let networkErrors = 0;
  const statuses: Record<string, number> = {};
  const samples: string[] = [];
  const fill = (p: string) =>
    p.replace(
      /\{(\w+)\}/g,
      () => [live?.id ?? 'sb-x', 'soak', 'nope', '%2e%2e', 'a'.repeat(rand(200)), 'ws0'][rand(6)]!,
    );
  for (let i = 0; i < FUZZ && Date.now() < DEADLINE; i++) {
    const r = routes[rand(routes.length)]!;
    // Spawning real VMs is not what fuzzing measures: spawn bodies ask for n = 0..2 at most.
    const body = rand(10) === 0 ? 'x'.repeat(rand(5000)) : JSON.stringify(junk());
    const headers: Record<string, string> = {};
    if (rand(4) !== 0)
      headers['content-type'] = ['application/json', 'text/plain', 'application/octet-stream'][rand(3)]!;
    if (rand(20) === 0) headers.authorization = `Bearer ${'z'.repeat(rand(100))}`;
    const query =
      rand(3) === 0
        ? `?${['stream=true', 'path=/etc', 'depth=999', 'cascade=1', 'x=' + 'q'.repeat(rand(500))][rand(5)]}`
        : '';
    try {
      const res = await fetch(`http://127.0.0.1:${port}${fill(r.path)}${query}`, {
        method: r.method,
        headers,
        ...(r.method === 'GET' || r.method === 'HEAD' ? {} : { body }),
        signal: AbortSignal.timeout(120_000),
      });
      await res.arrayBuffer();
      sent++;
      statuses[res.status] = (statuses[res.status] ?? 0) + 1;
      if (res.status >= 500 && !DOCUMENTED_5XX.has(res.status)) {
        unexpected5xx++;
        if (samples.length < 5) samples.push(`${r.method} ${r.path} → ${res.status}`);
      }
    } catch {
      networkErrors++;
    }
    if (daemon!.exitCode !== null) break;
    if (i % 2000 === 1999) log(`fuzz: ${i + 1}/${FUZZ}, daemon RSS ${daemonRssMib()} MiB`);
  }
  const rss1 = daemonRssMib();
  check('fuzz', 'requests answered', `${sent}/${FUZZ}`, sent === FUZZ);
  check('fuzz', 'daemon crashed', daemon!.exitCode === null ? 0 : 1, daemon!.exitCode === null);
  check('fuzz', 'unexpected 5xx', unexpected5xx, unexpected5xx === 0);
  check('fuzz', 'connection errors', networkErrors, networkErrors === 0);
  check('fuzz', 'daemon RSS before → after (MiB)', `${rss0} → ${rss1}`, rss1 - rss0 < 100);
  for (const s of samples) log(`  ${s}`);
  log(`fuzz statuses: ${JSON.stringify(statuses)}`);
  for (const s of await c.listSandboxes()) await c.killSandbox(s.id).catch(() => {});
  for (const w of await c.listWorkspaces()) await c.deleteWorkspace(w.name).catch(() => {});
  await stopDaemon();
  for (const [k, v] of Object.entries(leaks())) check('fuzz', `leaked ${k}`, v, v === 0);
}

async function boots(): Promise<void> {
  const image = await buildImage({ recipe: 'python-numpy', extras: [] }, stderrReporter());
  const accel = (await currentAccel()).accel;
  let ok = 0;
  let retried = 0;
  for (let i = 0; i < BOOTS && Date.now() < DEADLINE; i++) {
    const dir = fs.mkdtempSync(path.join(base, 'boot-'));
    try {
      const b = await coldBootGuest(image, accel, dir, (m) => log(`boot ${i + 1}: ${m}`));
      await b.agent.ping();
      b.agent.close();
      await b.vm.destroy();
      if (b.attempts > 1) retried++;
      ok++;
    } catch (e) {
      log(`boot ${i + 1}: FAILED: ${(e as Error).message.split('\n')[0]}`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
  check('boots', `parent boots in a row [${accel}]`, `${ok}/${BOOTS} (${retried} retried)`, ok === BOOTS);
}

async function main(): Promise<void> {
  port = await freePort();
  fs.mkdirSync(stateDir, { recursive: true });
  baseline = hostCounts();
  await createSnapshot({ tag: 'soak', recipe: 'python-numpy', net: true }, stderrReporter());
  const t0 = Date.now();
  const durations: Record<string, number> = {};
  for (const [name, fn] of [
    ['cycles', cycles],
    ['chaos', chaos],
    ['fuzz', fuzz],
    ['boots', boots],
  ] as const) {
    if (!PHASES.includes(name)) continue;
    const ts = Date.now();
    try {
      await fn();
    } catch (e) {
      check(name, 'phase ran to the end', (e as Error).message.slice(0, 200), false);
      await stopDaemon('SIGKILL').catch(() => {});
    }
    durations[name] = Math.round((Date.now() - ts) / 1000);
  }
  process.stdout.write(
    table(
      ['phase', 'check', 'value', ''],
      checks.map((c) => [c.phase, c.what, c.value, c.ok ? 'ok' : 'FAIL']),
    ) + '\n',
  );
  const file = writeBenchResults('soak', {
    counts: { cycles: CYCLES, chaos: CHAOS, fuzz: FUZZ, boots: BOOTS },
    durations_s: durations,
    total_s: Math.round((Date.now() - t0) / 1000),
    checks,
    passed: checks.every((c) => c.ok),
  });
  log(`wrote ${file}`);
  if (!checks.every((c) => c.ok)) process.exitCode = 1;
}

main()
  .catch((e) => {
    process.stderr.write(`soak failed: ${(e as Error).stack}\n${daemonLog.slice(-3000)}\n`);
    process.exitCode = 1;
  })
  .finally(async () => {
    await stopDaemon('SIGKILL').catch(() => {});
    fs.rmSync(SHM, { recursive: true, force: true });
    fs.rmSync(base, { recursive: true, force: true });
  });
