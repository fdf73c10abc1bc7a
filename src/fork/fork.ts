import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { ForkdError, errorMessage } from '../util/errors.js';
import { freeBytes } from '../util/fs.js';
import { sleep } from '../util/proc.js';
import { createOverlay } from '../vmm/disk.js';
import { onInterrupt } from '../util/teardown.js';
import { median, percentile } from '../util/format.js';
import type { Reporter } from '../util/report.js';
import { loadSnapshot, type LoadedSnapshot } from '../snapshot/store.js';
import { diskImage, memoryImage, resolveChain } from '../snapshot/assemble.js';
import { createTap, deleteLink } from '../network/tap.js';
import { validateTag } from '../snapshot/tag.js';
import { currentAccel } from '../host/accel.js';
import { QemuVmm, type QemuVm } from '../vmm/qemu.js';
import type { MachineConfig, RestoreTimings } from '../vmm/types.js';
import { AgentClient } from '../agent-client/client.js';
import type { EvalResult, ExecResult, IdentityResult } from '../protocol/agent-api.js';
import { createWorkDir } from './workdir.js';

export const MAX_CHILDREN = 1000;

export interface ForkOptions {
  tag: string;
  n: number;
  settleSecs?: number;
  keepWorkdir?: boolean;
  /** Shell command to run in every child (/bin/sh -c). */
  exec?: string;
  execTimeoutSecs?: number;
  /** Code to evaluate in every child's warm interpreter. */
  eval?: string;
  evalLanguage?: 'python' | 'js';
  /** Called as each child finishes (for streaming output). */
  onChild?: (c: ChildReport) => void;
  /** Keep the children running and return them instead of tearing down (library / bench use). */
  keepRunning?: boolean;
}

export interface ChildTimings extends RestoreTimings {
  /** resync handshake + first agent answer */
  agentMs: number;
  identityMs: number;
  /** exec of the VMM → child answered with its own identity: the "child is usable" instant */
  readyMs: number;
}

export interface ChildReport {
  index: number;
  id: string;
  hostname: string;
  pid: number;
  ok: boolean;
  error?: string;
  accel: string;
  timings?: ChildTimings;
  identity?: IdentityResult;
  exec?: ExecResult;
  eval?: EvalResult;
  /** ms from fork start to the exec/eval answer (the "every child answered" measure) */
  answeredMs?: number;
}

export interface ForkReport {
  tag: string;
  n: number;
  accelerator: string;
  accelerator_reason: string;
  work_dir: string;
  ok: number;
  failed: number;
  wall_ms: number;
  ready_p50_ms: number;
  ready_max_ms: number;
  alive_after_settle: number;
  children: ChildReport[];
}

export interface RunningChild {
  report: ChildReport;
  vm: QemuVm;
  agent: AgentClient;
}

export function validateCount(n: unknown): number {
  const v = typeof n === 'string' ? Number(n) : n;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > MAX_CHILDREN)
    throw new ForkdError(
      'bad_input',
      `-n must be a whole number from 1 to ${MAX_CHILDREN} (got ${String(n)})`,
      `e.g. -n 10`,
    );
  return v;
}

/** Refuse snapshots this host cannot restore faithfully: other accelerator, other QEMU. */
export async function checkCompatible(
  s: LoadedSnapshot,
  vmm: QemuVmm,
): Promise<{ accel: string; reason: string }> {
  const qemu = await vmm.version();
  if (qemu !== s.meta.vmm.version)
    throw new ForkdError(
      'incompatible_snapshot',
      `snapshot '${s.tag}' was saved by QEMU ${s.meta.vmm.version}; this host has QEMU ${qemu}, which may not load its device state`,
      `re-create the snapshot here: forkd rmi ${s.tag} && forkd snapshot --tag ${s.tag}`,
    );
  const probe = await currentAccel();
  if (probe.accel !== s.meta.accelerator)
    throw new ForkdError(
      'incompatible_snapshot',
      `snapshot '${s.tag}' was made under ${s.meta.accelerator}, but this host runs guests under ${probe.accel} (${probe.reason}); device state does not carry across accelerators`,
      `re-create the snapshot on this host: forkd rmi ${s.tag} && forkd snapshot --tag ${s.tag}`,
    );
  return { accel: probe.accel, reason: probe.reason };
}

function preflight(n: number, s: LoadedSnapshot, workRoot: string): void {
  // Rough private memory per child: QEMU itself + TCG code cache + guest CoW (spike §6.5).
  const perChildMib = s.meta.accelerator === 'tcg' ? 80 : 24;
  const availMib = memAvailableMib();
  if (availMib !== undefined && n * perChildMib > availMib * 0.9)
    throw new ForkdError(
      'out_of_space',
      `not enough memory for ${n} children: ~${perChildMib} MiB each under ${s.meta.accelerator} needs ~${n * perChildMib} MiB, ${availMib} MiB available`,
      `fork fewer children (at most ~${Math.floor((availMib * 0.9) / perChildMib)}) or free memory`,
    );
  const needDisk = 64 * 1048576 + n * 4 * 1048576;
  const free = freeBytes(workRoot);
  if (free < needDisk)
    throw new ForkdError(
      'out_of_space',
      `not enough free disk in ${workRoot} for ${n} child overlays (need ~${Math.ceil(needDisk / 1048576)} MiB, ${Math.floor(free / 1048576)} MiB free)`,
      'free space there or set FORKD_RUN_DIR to a larger filesystem',
    );
}

function memAvailableMib(): number | undefined {
  try {
    const m = /MemAvailable:\s+(\d+) kB/.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
    return m ? Math.floor(Number(m[1]) / 1024) : undefined;
  } catch {
    return undefined;
  }
}

/** Start one child: private overlay, restore, resync with its agent, tell it who it is. */
async function startChild(
  vmm: QemuVmm,
  s: LoadedSnapshot,
  machine: MachineConfig,
  workDir: string,
  template: string,
  memoryFile: string,
  index: number,
  runId: string,
  accel: string,
  onVm: (vm: QemuVm) => void,
  onTap: (tap: string) => void,
): Promise<RunningChild> {
  const id = `${runId}-${index}`;
  const dir = path.join(workDir, `c${index}`);
  fs.mkdirSync(dir);
  const disk = path.join(dir, 'disk.qcow2');
  fs.copyFileSync(template, disk);
  // A NIC needs a tap of its own; the one-shot CLI leaves it unconnected (the daemon can give each
  // sandbox its own network namespace).
  let tap: string | undefined;
  if (machine.net === 'virtio') {
    tap = `fkc${runId}${index.toString(36)}`.slice(0, 15);
    await createTap(tap);
    onTap(tap);
  }
  const { vm, timings } = await vmm.restore({
    machine,
    workDir: dir,
    ...(tap ? { tap } : {}),
    memoryFile,
    vmstateFile: path.join(s.dir, s.meta.files.vmstate.path),
    disk,
    name: `forkd-child-${id}`,
  });
  onVm(vm);
  const tReady0 = performance.now();
  const agent = await AgentClient.connect(vm.agentSocket, { timeoutMs: 60_000 });
  const tAgent = performance.now();
  const identity = await agent.announce(id);
  const tId = performance.now();
  const agentMs = tAgent - tReady0;
  const identityMs = tId - tAgent;
  const t: ChildTimings = {
    ...timings,
    agentMs,
    identityMs,
    readyMs: timings.spawnMs + timings.loadMs + timings.contMs + agentMs + identityMs,
  };
  return {
    vm,
    agent,
    report: {
      index,
      id,
      hostname: identity.hostname,
      pid: vm.pid,
      ok: true,
      accel,
      timings: round(t),
      identity,
    },
  };
}

function round<T extends object>(o: T): T {
  return Object.fromEntries(
    Object.entries(o).map(([k, v]) => [k, typeof v === 'number' ? Math.round(v * 10) / 10 : v]),
  ) as T;
}

/**
 * Fork N children from a snapshot, concurrently. Each child is its own QEMU process mapping the
 * snapshot's memory MAP_PRIVATE, with its own qcow2 overlay over the frozen disk layer. Optionally run a
 * command / eval in each, then settle and tear everything down (unless keepWorkdir/keepRunning).
 */
export async function fork(
  opts: ForkOptions,
  rep: Reporter,
): Promise<ForkReport & { running?: RunningChild[]; release?: () => Promise<void> }> {
  const tag = validateTag(opts.tag);
  const n = validateCount(opts.n);
  const settle = opts.settleSecs ?? 0;
  if (!(settle >= 0 && settle <= 86400))
    throw new ForkdError(
      'bad_input',
      `--settle-secs must be 0..86400 (got ${settle})`,
      'pass a number of seconds',
    );
  if (opts.exec !== undefined && !opts.exec.trim())
    throw new ForkdError('bad_input', '--exec must not be empty', 'e.g. --exec "uname -a"');
  if (opts.eval !== undefined && !opts.eval.trim())
    throw new ForkdError('bad_input', '--eval must not be empty', 'e.g. --eval "1+1"');
  const s = loadSnapshot(tag);
  const chain = resolveChain(s);
  const vmm = new QemuVmm();
  const { accel, reason } = await checkCompatible(s, vmm);
  const workDir = createWorkDir('fork', tag);
  try {
    preflight(n, s, path.dirname(workDir));
  } catch (e) {
    fs.rmSync(workDir, { recursive: true, force: true });
    throw e;
  }
  const machine: MachineConfig = {
    accel: s.meta.machine.accel,
    vcpus: s.meta.machine.vcpus,
    memMib: s.meta.machine.mem_mib,
    net: s.meta.machine.net,
  };
  const vms: QemuVm[] = [];
  const taps: string[] = [];
  const running: RunningChild[] = [];
  let tornDown = false;
  const teardown = async () => {
    if (tornDown) return;
    tornDown = true;
    for (const r of running) r.agent.close();
    await Promise.all(vms.map((vm) => vm.destroy()));
    await Promise.all(taps.map((t) => deleteLink(t)));
    if (!opts.keepWorkdir) fs.rmSync(workDir, { recursive: true, force: true });
  };
  const unregister = onInterrupt(teardown);
  const runId = randomBytes(3).toString('hex');
  rep.step(
    `forking ${n} ${n === 1 ? 'child' : 'children'} from '${tag}' [${accel}] (QEMU ${s.meta.vmm.version}, ${s.meta.machine.mem_mib} MiB)`,
  );
  const t0 = performance.now();
  const reports: ChildReport[] = [];
  try {
    // Template overlay made once, copied per child (qemu-img per child costs ~10 ms each).
    const template = path.join(workDir, 'overlay-template.qcow2');
    await createOverlay(template, await diskImage(s, chain), 'qcow2');
    const memoryFile = await memoryImage(s, chain);
    const limit = Number(process.env.FORKD_SPAWN_CONCURRENCY) || 16;
    let next = 1;
    const worker = async () => {
      for (;;) {
        const i = next++;
        if (i > n) return;
        let rep1: ChildReport;
        try {
          const child = await startChild(
            vmm,
            s,
            machine,
            workDir,
            template,
            memoryFile,
            i,
            runId,
            accel,
            (vm) => vms.push(vm),
            (t) => taps.push(t),
          );
          running.push(child);
          rep1 = child.report;
          if (opts.exec) {
            rep1.exec = await child.agent.exec({
              cmd: opts.exec,
              timeout_ms: (opts.execTimeoutSecs ?? 600) * 1000,
            });
          }
          if (opts.eval)
            rep1.eval = await child.agent.eval({ code: opts.eval, language: opts.evalLanguage ?? 'python' });
          rep1.answeredMs = Math.round((performance.now() - t0) * 10) / 10;
        } catch (e) {
          rep1 = {
            index: i,
            id: `${runId}-${i}`,
            hostname: '',
            pid: -1,
            ok: false,
            accel,
            error: errorMessage(e),
          };
        }
        reports.push(rep1);
        opts.onChild?.(rep1);
      }
    };
    await Promise.all(Array.from({ length: Math.min(limit, n) }, worker));
    const wall = performance.now() - t0;
    if (settle > 0) await sleep(settle * 1000);
    const alive = vms.filter((v) => v.isAlive()).length;
    reports.sort((a, b) => a.index - b.index);
    const ready = reports.filter((r) => r.ok).map((r) => r.timings!.readyMs);
    const report: ForkReport = {
      tag,
      n,
      accelerator: accel,
      accelerator_reason: reason,
      work_dir: workDir,
      ok: reports.filter((r) => r.ok).length,
      failed: reports.filter((r) => !r.ok).length,
      wall_ms: Math.round(wall * 10) / 10,
      ready_p50_ms: Math.round(median(ready) * 10) / 10,
      ready_max_ms: Math.round(percentile(ready, 100) * 10) / 10,
      alive_after_settle: alive,
      children: reports,
    };
    if (opts.keepRunning) {
      // The caller owns the children now: `release` frees all of it (QEMUs, taps, work dir).
      const release = async () => {
        unregister();
        await teardown();
      };
      return { ...report, running, release };
    }
    await teardown();
    unregister();
    return report;
  } catch (e) {
    await teardown();
    unregister();
    throw e;
  }
}
