import fs from 'node:fs';
import { ForkdError } from '../util/errors.js';
import { scaledMs } from '../util/host-speed.js';
import { AgentClient } from '../agent-client/client.js';
import type { BootSpec } from '../vmm/types.js';
import type { QemuVm, QemuVmm } from '../vmm/qemu.js';
import { hostTsc, tscCmdline, type HostTsc } from '../host/tsc.js';

const BOOT_ATTEMPTS = 3;
/**
 * How long a boot may show no sign of init before it counts as hung. With the TSC rate given, a TCG boot
 * reaches init in ~6 s on an idle 2-core host; the window is wide so that a loaded or 3× slower host
 * never turns a slow boot into a failure. It only matters for a kernel that really hangs. Stretched to the
 * host's measured speed (util/host-speed).
 */
const EARLY_HANG_MS = { kvm: 30_000, tcg: 120_000 } as const;
/** Printed by the initramfs /init first thing: the guest kernel reached user space. */
const INIT_MARKER = 'forkd-initramfs: init';

class EarlyHang extends Error {}

export interface BootOptions {
  /** Give up if the agent has not answered by then. */
  timeoutMs: number;
  /** (Re)create per-attempt state, e.g. the disk layer; runs before every attempt. */
  prepare?: () => Promise<void>;
  onRetry?: (msg: string) => void;
}

/**
 * The kernel command line a boot really gets. Under TCG it pins the guest's TSC rate to the host's
 * (see host/tsc.ts): without it the guest calibrates against an emulated PIT, which fails on a slow or
 * loaded host and leaves the kernel without a clock, hung before init.
 */
export async function bootCmdline(
  spec: Pick<BootSpec, 'machine' | 'cmdline'>,
): Promise<{ cmdline: string; tsc: HostTsc | undefined }> {
  if (spec.machine.accel !== 'tcg') return { cmdline: spec.cmdline, tsc: undefined };
  const tsc = await hostTsc();
  return { cmdline: [spec.cmdline, ...tscCmdline(tsc)].join(' '), tsc };
}

/**
 * Boot a guest and connect to its agent. A boot that never prints init's first line within the hang
 * window is killed and booted again with a fresh RAM file, up to 3 attempts: a last resort, since the
 * known cause (TSC calibration under TCG) is removed by bootCmdline. `track` sees each VM as soon as it
 * exists (for interrupt teardown).
 */
export async function bootGuest(
  vmm: QemuVmm,
  spec: BootSpec,
  opts: BootOptions,
  track: (vm: QemuVm | undefined) => void = () => {},
): Promise<{ vm: QemuVm; agent: AgentClient; attempts: number; startedAt: number }> {
  const { cmdline, tsc } = await bootCmdline(spec);
  const hangMs = scaledMs(EARLY_HANG_MS[spec.machine.accel]);
  const cause =
    spec.machine.accel === 'tcg' && !tsc
      ? "the host's TSC frequency is unknown, so the guest had to calibrate its clock against an emulated timer (set FORKD_TSC_KHZ to the host's TSC kHz)"
      : 'the host may be overloaded, or the kernel does not suit this machine';
  for (let attempt = 1; ; attempt++) {
    fs.rmSync(spec.memoryFile, { force: true });
    await opts.prepare?.();
    const startedAt = performance.now();
    const vm = await vmm.boot({ ...spec, cmdline });
    track(vm);
    try {
      const agent = await connectWhileAlive(vm, opts.timeoutMs, hangMs);
      return { vm, agent, attempts: attempt, startedAt };
    } catch (e) {
      if (!(e instanceof EarlyHang) || attempt >= BOOT_ATTEMPTS) {
        if (e instanceof EarlyHang)
          throw new ForkdError(
            'vmm_failed',
            `the guest kernel did not reach init within ${hangMs / 1000} s in ${BOOT_ATTEMPTS} boots: ${cause}`,
            'run forkd doctor (it shows the accelerator and the TSC frequency given to guests)',
          );
        throw e;
      }
      opts.onRetry?.(
        `guest did not reach init in ${hangMs / 1000} s (attempt ${attempt}; ${cause}); booting again`,
      );
      await vm.destroy();
      track(undefined);
    }
  }
}

/** The last `lines` lines of a guest console log ('' if there is none yet). */
export function consoleTail(file: string, lines = 25): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

/** Connect to the booting guest's agent; fail fast if QEMU dies or init never starts. */
async function connectWhileAlive(vm: QemuVm, timeoutMs: number, hangMs: number): Promise<AgentClient> {
  let watch: NodeJS.Timeout | undefined;
  const died = vm.exited.then(() => {
    throw new ForkdError(
      'vmm_failed',
      `QEMU exited while the guest was booting${vm.qemuLog() ? `: ${vm.qemuLog()}` : ''}`,
    );
  });
  const hung = new Promise<never>((_, reject) => {
    watch = setTimeout(() => {
      if (!consoleTail(vm.consoleLog, 1_000_000).includes(INIT_MARKER))
        reject(new EarlyHang('guest hung before init'));
    }, hangMs);
  });
  const abort = new AbortController();
  const connecting = AgentClient.connect(vm.agentSocket, { timeoutMs, signal: abort.signal });
  try {
    return await Promise.race([connecting, died, hung]);
  } catch (e) {
    abort.abort();
    connecting.then((c) => c.close()).catch(() => undefined);
    throw e;
  } finally {
    clearTimeout(watch);
  }
}
