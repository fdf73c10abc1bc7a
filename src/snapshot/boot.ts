import fs from 'node:fs';
import { ForkdError } from '../util/errors.js';
import { AgentClient } from '../agent-client/client.js';
import type { BootSpec } from '../vmm/types.js';
import type { QemuVm, QemuVmm } from '../vmm/qemu.js';

const BOOT_ATTEMPTS = 3;
const EARLY_HANG_MS = 30_000;
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
 * Boot a guest and connect to its agent. A guest kernel occasionally hangs before init under TCG (the
 * spike saw it too); such a boot never prints init's first line, so it is killed and booted again with a
 * fresh RAM file, up to 3 attempts. `track` sees each VM as soon as it exists (for interrupt teardown).
 */
export async function bootGuest(
  vmm: QemuVmm,
  spec: BootSpec,
  opts: BootOptions,
  track: (vm: QemuVm | undefined) => void = () => {},
): Promise<{ vm: QemuVm; agent: AgentClient; attempts: number; startedAt: number }> {
  for (let attempt = 1; ; attempt++) {
    fs.rmSync(spec.memoryFile, { force: true });
    await opts.prepare?.();
    const startedAt = performance.now();
    const vm = await vmm.boot(spec);
    track(vm);
    try {
      const agent = await connectWhileAlive(vm, opts.timeoutMs);
      return { vm, agent, attempts: attempt, startedAt };
    } catch (e) {
      if (!(e instanceof EarlyHang) || attempt >= BOOT_ATTEMPTS) {
        if (e instanceof EarlyHang)
          throw new ForkdError(
            'vmm_failed',
            `the guest kernel hung before init in ${BOOT_ATTEMPTS} boots`,
            'run forkd doctor; try again',
          );
        throw e;
      }
      opts.onRetry?.(
        `guest showed no sign of life in ${EARLY_HANG_MS / 1000} s (attempt ${attempt}); booting again`,
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
async function connectWhileAlive(vm: QemuVm, timeoutMs: number): Promise<AgentClient> {
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
    }, EARLY_HANG_MS);
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
