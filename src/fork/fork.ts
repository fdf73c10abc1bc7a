import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { ForkdError, errorMessage } from '../util/errors.js';
import { sleep } from '../util/proc.js';
import { onInterrupt } from '../util/teardown.js';
import { median, percentile } from '../util/format.js';
import type { Reporter } from '../util/report.js';
import { loadSnapshot } from '../snapshot/store.js';
import { validateTag } from '../snapshot/tag.js';
import type { QemuVm } from '../vmm/qemu.js';
import type { GuestSession } from '../agent-client/guest-session.js';
import type { EvalResult, ExecResult, IdentityResult } from '../protocol/agent-api.js';
import { createWorkDir } from '../host/workdir.js';
import {
  MAX_CHILDREN,
  prepareChild,
  resolveSource,
  preflight,
  SPAWN_CONCURRENCY,
  startChild,
  type Child,
  type ChildSource,
  type ChildTimings,
} from '../engine/child.js';
import { killProcessesUsing, releaseChildrenIn } from '../engine/sweep.js';

export { MAX_CHILDREN };

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

export type { ChildTimings };

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
  /** The child's agent and Python connections. */
  guest: GuestSession;
  child: Child;
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

/** Start one child through the engine and describe it for the fork report. */
async function startOne(
  source: ChildSource,
  workDir: string,
  index: number,
  runId: string,
  track: (c: Child) => void,
): Promise<RunningChild> {
  const id = `${runId}-${index}`;
  const t0 = performance.now();
  const prepared = await prepareChild(source, {
    id,
    workDir: path.join(workDir, `c${index}`),
    name: `forkd-child-${id}`,
  });
  const child = await startChild(prepared, { t0 });
  track(child);
  return {
    vm: child.vm,
    guest: child.guest!,
    child,
    report: {
      index,
      id,
      hostname: child.identity!.hostname,
      pid: child.vm.pid,
      ok: true,
      accel: source.accel,
      timings: child.timings!,
      identity: child.identity!,
    },
  };
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
  // The one-shot child maps the image on disk: nothing to copy to tmpfs first.
  const source = await resolveSource(s, 'file');
  const { accel, accelReason: reason } = source;
  const workDir = createWorkDir('fork', tag);
  try {
    preflight(n, s, path.dirname(workDir));
  } catch (e) {
    fs.rmSync(workDir, { recursive: true, force: true });
    throw e;
  }
  const children: Child[] = [];
  const running: RunningChild[] = [];
  let tornDown = false;
  const teardown = async () => {
    if (tornDown) return;
    tornDown = true;
    await Promise.all(children.map((c) => c.destroy()));
    // Children interrupted half-way (QEMU started, not yet handed back) are found by their dirs.
    await killProcessesUsing(workDir);
    await releaseChildrenIn(workDir);
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
    let next = 1;
    const worker = async () => {
      for (;;) {
        const i = next++;
        if (i > n) return;
        let rep1: ChildReport;
        try {
          const child = await startOne(source, workDir, i, runId, (c) => children.push(c));
          running.push(child);
          rep1 = child.report;
          if (opts.exec) {
            rep1.exec = await (
              await child.guest.agent()
            ).exec({
              cmd: opts.exec,
              timeout_ms: (opts.execTimeoutSecs ?? 600) * 1000,
            });
          }
          if (opts.eval)
            rep1.eval = await child.guest.eval({ code: opts.eval, language: opts.evalLanguage ?? 'python' });
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
    await Promise.all(Array.from({ length: Math.min(SPAWN_CONCURRENCY, n) }, worker));
    const wall = performance.now() - t0;
    if (settle > 0) await sleep(settle * 1000);
    const alive = children.filter((c) => c.vm.isAlive()).length;
    reports.sort((a, b) => a.index - b.index);
    const ready = reports.filter((r) => r.ok).map((r) => r.timings!.ready_ms);
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
