import { ForkdError } from '../util/errors.js';
import { migrateToFile, QemuVmm, waitMigration, type QemuVm } from './qemu.js';
import type { MachineConfig } from './types.js';
import { openStreamSink, type StreamSink } from './stream-sink.js';
import { unprivilegedUserfaultfd } from './jail.js';

/**
 * Capturing a running child (BRANCH) with what QEMU 7.2 offers natively (spike-branch §4):
 *   full: stop, switch the disk to a new overlay, stream device state + RAM, cont. Pause = whole stream.
 *   live: stop, switch the disk, then a `background-snapshot` migration: userfaultfd write-protect lets
 *         QEMU resume the guest at once and copy each page before the guest's first write to it.
 *   diff: like live, but the pages that differ from the memory file are also read (from pagemap,
 *         while stopped): the snapshot keeps only those; the stream is used for its device state.
 * A child's RAM is MAP_PRIVATE, so the stream always carries all RAM; `normalize` turns it into a
 * forkable (memory file, device-only vmstate) pair.
 */
export type CaptureMode = 'full' | 'live' | 'diff';

export interface CaptureResult {
  /** stop → guest running again */
  pauseMs: number;
  /** Resolves when the stream is completely written (the source may be running already). */
  streamDone: Promise<{ streamMs: number }>;
}

export interface CaptureSpec {
  mode: CaptureMode;
  stream: string;
  /** New overlay the source continues on; its old one becomes the branch's frozen disk layer. */
  newOverlay: string;
  /** Runs while the guest is stopped, after the disk switch (the diff extraction). */
  whileStopped?: () => void | Promise<void>;
  /**
   * Stream in the background (live/diff default). Off: stream while stopped, which works for any RAM
   * mapping; background snapshots need userfaultfd write-protect, i.e. RAM on tmpfs or anonymous.
   */
  background?: boolean;
}

/** Bytes per second that mean "no limit" to QEMU's migration rate limiter (1 TiB/s). */
const UNLIMITED_BANDWIDTH = 2 ** 40;

async function setCaps(vm: QemuVm, caps: Record<string, boolean>): Promise<void> {
  await vm.qmp!.execute('migrate-set-capabilities', {
    capabilities: Object.entries(caps).map(([capability, state]) => ({ capability, state })),
  });
}

/** Make sure the source runs again, whatever happened (a failed branch must not leave it paused). */
export async function ensureRunning(vm: QemuVm): Promise<void> {
  if (!vm.isAlive() || !vm.qmp || vm.qmp.isClosed) return;
  try {
    const st = await vm.qmp.execute<{ status: string }>('query-status');
    if (st.status !== 'running') await vm.qmp.execute('cont');
  } catch {
    /* the VM is gone or QMP broke: nothing to resume */
  }
}

export async function captureRunning(vm: QemuVm, spec: CaptureSpec): Promise<CaptureResult> {
  const qmp = vm.qmp!;
  // A jailed QEMU has no CAP_SYS_PTRACE: without vm.unprivileged_userfaultfd=1 it cannot write-protect
  // its RAM, so live and diff branches stream while the guest is stopped (same result, longer pause).
  const background =
    (spec.background ?? spec.mode !== 'full') && (vm.jailUid === undefined || unprivilegedUserfaultfd());
  const t0 = performance.now();
  let sink: StreamSink | undefined;
  try {
    await qmp.execute('stop');
    await qmp.execute('blockdev-snapshot-sync', {
      device: 'root',
      'snapshot-file': spec.newOverlay,
      format: 'qcow2',
    });
    await spec.whileStopped?.();
    await setCaps(vm, { 'x-ignore-shared': false, 'background-snapshot': background });
    // QEMU throttles outgoing migration to 128 MiB/s by default (meant for networks): a full branch of a
    // 512 MiB guest would then keep it stopped for 4 s. The stream goes to a local file: no limit.
    await qmp.execute('migrate-set-parameters', { 'max-bandwidth': UNLIMITED_BANDWIDTH });
    const resumed = background ? qmp.waitEvent('RESUME', 60_000) : undefined;
    resumed?.catch(() => {});
    sink = await openStreamSink(vm.workDir, spec.stream);
    const written = sink.written;
    await qmp.execute('migrate', { uri: sink.uri });
    if (!background) {
      await waitMigration(qmp, 600_000);
      await qmp.execute('cont');
      const pauseMs = performance.now() - t0;
      const streamDone = written.then(() => ({ streamMs: performance.now() - t0 }));
      streamDone.catch(() => {});
      return { pauseMs, streamDone };
    }
    await resumed;
    const pauseMs = performance.now() - t0;
    const streamDone = waitMigration(qmp, 600_000).then(
      async () => {
        await written;
        await setCaps(vm, { 'background-snapshot': false });
        return { streamMs: performance.now() - t0 };
      },
      async (e: unknown) => {
        sink?.close();
        await setCaps(vm, { 'background-snapshot': false }).catch(() => {});
        await ensureRunning(vm);
        throw e;
      },
    );
    streamDone.catch(() => {});
    return { pauseMs, streamDone };
  } catch (e) {
    sink?.close();
    await ensureRunning(vm);
    if (background) await setCaps(vm, { 'background-snapshot': false }).catch(() => {});
    throw e instanceof ForkdError
      ? e
      : new ForkdError('vmm_failed', `branch capture failed: ${(e as Error).message}`);
  }
}

/**
 * Load a branch stream into a paused QEMU whose RAM is a new shared file, then save its device state
 * only (`x-ignore-shared`): the same (memory file, vmstate) pair a booted parent's snapshot has.
 */
export async function normalizeStream(opts: {
  machine: MachineConfig;
  workDir: string;
  stream: string;
  memoryOut: string;
  vmstateOut: string;
  disk: string;
  tap?: string;
}): Promise<{ loadMs: number; saveMs: number }> {
  const vmm = new QemuVmm();
  const vm = await vmm.startIncoming(
    opts.machine,
    opts.workDir,
    opts.memoryOut,
    opts.disk,
    opts.stream,
    opts.tap,
  );
  try {
    const qmp = vm.qmp!;
    const t0 = performance.now();
    await setCaps(vm, { 'x-ignore-shared': false });
    await qmp.execute('migrate-incoming', { uri: 'fd:3' });
    await waitMigration(qmp, 600_000, () => vm.qemuLog());
    const t1 = performance.now();
    await setCaps(vm, { 'x-ignore-shared': true });
    const size = await migrateToFile(vm, opts.vmstateOut, 120_000);
    const t2 = performance.now();
    if (size === 0) throw new ForkdError('vmm_failed', 'normalizer wrote an empty vmstate');
    return { loadMs: t1 - t0, saveMs: t2 - t1 };
  } catch (e) {
    const log = vm.qemuLog();
    throw new ForkdError(
      'vmm_failed',
      `normalizing the branch failed: ${(e as Error).message}${log ? `\nQEMU said: ${log}` : ''}`,
    );
  } finally {
    await vm.destroy();
  }
}
