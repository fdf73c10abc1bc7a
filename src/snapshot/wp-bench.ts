import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { ForkdError } from '../util/errors.js';
import { median } from '../util/format.js';
import { onInterrupt } from '../util/teardown.js';
import type { Reporter } from '../util/report.js';
import type { QemuVm } from '../vmm/qemu.js';
import { captureRunning } from '../vmm/capture.js';
import { vmDir } from '../vmm/jail.js';
import type { Accel } from '../vmm/types.js';
import { createWorkDir } from '../host/workdir.js';
import { kvmOpenError } from '../host/accel.js';
import { residentDir } from './assemble.js';
import { bootFirmwareGuest } from './firmware.js';

/**
 * `forkd wp-bench`: the write-protect machinery live branching relies on, measured on a running guest
 * with a RAM region of `regionMib`. A live branch is QEMU's background snapshot: userfaultfd
 * write-protects all guest RAM (the guest is stopped only while that is armed), then copies every page
 * while the guest runs. Measured side by side, alternating:
 *   live: arm time (stop → guest running with the region write-protected) and copy throughput;
 *   full: the alternative without write protection, the whole copy with the guest stopped.
 * The guest is the minimal firmware guest (any RAM size boots at once); its RAM is filled with data
 * first, since QEMU sends untouched (zero) pages as a few bytes each.
 */
export interface WpBenchResult {
  accel: Accel;
  region_mib: number;
  reps: number;
  live_arm_ms: number;
  live_copy_ms: number;
  live_copy_mib_s: number;
  full_pause_ms: number;
  full_copy_mib_s: number;
  /** every rep, in run order */
  runs: Array<{ mode: 'live' | 'full'; pause_ms: number; copy_ms: number }>;
}

export const WP_BENCH_LIMITS = { minMib: 16, maxMib: 65536, maxReps: 50 };

export async function wpBench(
  opts: { regionMib: number; reps: number; accel?: Accel },
  rep: Reporter,
): Promise<WpBenchResult> {
  const { regionMib, reps } = opts;
  if (
    !Number.isInteger(regionMib) ||
    regionMib < WP_BENCH_LIMITS.minMib ||
    regionMib > WP_BENCH_LIMITS.maxMib
  )
    throw new ForkdError(
      'bad_input',
      `--region-mib must be a whole number from ${WP_BENCH_LIMITS.minMib} to ${WP_BENCH_LIMITS.maxMib} (got ${regionMib})`,
      'e.g. --region-mib 512',
    );
  if (!Number.isInteger(reps) || reps < 1 || reps > WP_BENCH_LIMITS.maxReps)
    throw new ForkdError(
      'bad_input',
      `--reps must be 1..${WP_BENCH_LIMITS.maxReps} (got ${reps})`,
      'e.g. --reps 5',
    );
  const accel = opts.accel ?? (kvmOpenError() === undefined ? 'kvm' : 'tcg');
  const shm = residentDir();
  fs.mkdirSync(shm, { recursive: true, mode: 0o700 });
  const freeShm = fs.statfsSync(shm);
  if (freeShm.bavail * freeShm.bsize < regionMib * 1048576 * 1.1)
    throw new ForkdError(
      'out_of_space',
      `not enough room on ${shm} (tmpfs) for a ${regionMib} MiB region`,
      'pick a smaller --region-mib or free memory',
    );
  const workDir = createWorkDir('parent', 'wp-bench');
  const memoryFile = path.join(shm, `wp-bench-${process.pid}-${randomBytes(3).toString('hex')}.mem`);
  let vm: QemuVm | undefined;
  const teardown = async () => {
    await vm?.destroy();
    fs.rmSync(memoryFile, { force: true });
    fs.rmSync(workDir, { recursive: true, force: true });
  };
  const unregister = onInterrupt(teardown);
  try {
    rep.step(`filling a ${regionMib} MiB guest RAM region on ${shm}`);
    fillRegion(memoryFile, regionMib, (done) => rep.progress('region', done, regionMib * 1048576));
    rep.step(`booting the firmware guest [${accel}]`);
    // Unjailed: background snapshots need userfaultfd, which a jailed (unprivileged) QEMU may not use
    // unless the host allows it (vm.unprivileged_userfaultfd); the guest is forkd's own firmware.
    vm = await bootFirmwareGuest({
      accel,
      memMib: regionMib,
      filesDir: workDir,
      workDir,
      memoryFile,
      confine: false,
    });
    const runs: WpBenchResult['runs'] = [];
    for (let i = 0; i < reps; i++) {
      for (const mode of ['live', 'full'] as const) {
        const cap = await captureRunning(vm, {
          mode,
          stream: '/dev/null',
          newOverlay: path.join(vmDir(workDir), `layer-${runs.length}.qcow2`),
        });
        const { streamMs } = await cap.streamDone;
        runs.push({ mode, pause_ms: round(cap.pauseMs), copy_ms: round(streamMs) });
        rep.info(`rep ${i + 1}/${reps} ${mode}: pause ${round(cap.pauseMs)} ms, copy ${round(streamMs)} ms`);
      }
    }
    const of = (mode: 'live' | 'full', k: 'pause_ms' | 'copy_ms') =>
      median(runs.filter((r) => r.mode === mode).map((r) => r[k]));
    const mibS = (ms: number) => round(regionMib / (ms / 1000));
    return {
      accel,
      region_mib: regionMib,
      reps,
      live_arm_ms: round(of('live', 'pause_ms')),
      live_copy_ms: round(of('live', 'copy_ms')),
      live_copy_mib_s: mibS(of('live', 'copy_ms')),
      full_pause_ms: round(of('full', 'pause_ms')),
      full_copy_mib_s: mibS(of('full', 'pause_ms')),
      runs,
    };
  } catch (e) {
    if (e instanceof ForkdError) throw e;
    throw new ForkdError(
      'vmm_failed',
      `wp-bench failed: ${(e as Error).message}${vm?.qemuLog() ? `\nQEMU said: ${vm.qemuLog()}` : ''}`,
      'background snapshots need userfaultfd write-protect on shmem (Linux ≥ 5.19): run forkd doctor',
    );
  } finally {
    await teardown();
    unregister();
  }
}

/** Non-zero data in every page (one random MiB repeated), written before the guest maps it. */
function fillRegion(file: string, mib: number, progress: (done: number) => void): void {
  const chunk = randomBytes(1 << 20);
  const fd = fs.openSync(file, 'w', 0o600);
  try {
    for (let i = 0; i < mib; i++) {
      fs.writeSync(fd, chunk, 0, chunk.length, i * chunk.length);
      if (i % 64 === 63) progress((i + 1) * chunk.length);
    }
  } finally {
    fs.closeSync(fd);
  }
}

const round = (v: number) => Math.round(v * 10) / 10;
