import fs from 'node:fs';
import path from 'node:path';
import { ForkdError } from '../util/errors.js';
import { sleep } from '../util/proc.js';
import { scaledMs } from '../util/host-speed.js';
import { forkdVersion } from '../util/project.js';
import { onInterrupt } from '../util/teardown.js';
import { createOverlay } from '../vmm/disk.js';
import { QemuVmm, type QemuVm } from '../vmm/qemu.js';
import type { Accel, MachineConfig } from '../vmm/types.js';
import { FIRMWARE_FLAG_ADDR, firmwareImage } from '../image/firmware.js';
import { createWorkDir } from '../host/workdir.js';
import { hostCpu } from '../host/cpu.js';
import { machineCpu } from '../host/kvm-cpu.js';
import { stageSnapshot } from './writer.js';
import { fileEntry } from './create.js';
import { SNAPSHOT_FORMAT, SNAPSHOT_VERSION, type SnapshotMeta } from './metadata.js';
import { validateTag } from './tag.js';
import { snapshotExists } from './store.js';

/** Size of the unused raw base under a firmware machine's disk. */
const BASE_BYTES = 1 << 20;

/**
 * Boot the firmware guest on `memoryFile` (shared, so the caller sees its RAM) and wait until it runs.
 * Its -bios image and unused disk are written into `filesDir`; QEMU's sockets and logs go to `workDir`.
 */
export async function bootFirmwareGuest(opts: {
  accel: Accel;
  memMib: number;
  filesDir: string;
  workDir: string;
  memoryFile: string;
  /** false: run unjailed (wp-bench: forkd's own firmware, measuring what only an unjailed QEMU may use). */
  confine?: boolean;
}): Promise<QemuVm> {
  const files = await writeFirmwareMachine(opts.filesDir);
  const machine: MachineConfig = {
    accel: opts.accel,
    vcpus: 1,
    memMib: opts.memMib,
    net: 'none',
    firmware: files.firmware,
    ...(await machineCpu(opts.accel)),
  };
  const vm = await new QemuVmm().boot({
    machine,
    workDir: opts.workDir,
    kernel: '',
    initrd: '',
    cmdline: '',
    memoryFile: opts.memoryFile,
    disk: files.disk,
    ...(opts.confine === false ? { confine: false } : {}),
  });
  try {
    await waitFirmwareRunning(vm, opts.memoryFile);
    return vm;
  } catch (e) {
    await vm.destroy();
    throw e;
  }
}

/**
 * What a firmware machine boots from, written into `dir`: the -bios image, and the root disk it still
 * carries (a qcow2 over a tiny raw base, never read) so it has the same devices as any other machine.
 */
async function writeFirmwareMachine(dir: string): Promise<{ firmware: string; disk: string }> {
  const firmware = path.join(dir, 'firmware.bin');
  fs.writeFileSync(firmware, firmwareImage());
  const base = path.join(dir, 'base.raw');
  fs.writeFileSync(base, Buffer.alloc(0));
  fs.truncateSync(base, BASE_BYTES);
  const disk = path.join(dir, 'disk.qcow2');
  await createOverlay(disk, 'base.raw', 'raw');
  return { firmware, disk };
}

/** The guest sets its flag byte on its way into the spin loop; its RAM file is shared, so it shows. */
async function waitFirmwareRunning(vm: QemuVm, memoryFile: string): Promise<void> {
  const flag = Buffer.alloc(1);
  const deadline = Date.now() + scaledMs(10_000);
  for (;;) {
    const fd = fs.openSync(memoryFile, 'r');
    fs.readSync(fd, flag, 0, 1, FIRMWARE_FLAG_ADDR);
    fs.closeSync(fd);
    if (flag[0] === 1) return;
    if (!vm.isAlive() || Date.now() > deadline)
      throw new ForkdError(
        'vmm_failed',
        `the firmware guest did not start${vm.qemuLog() ? `: ${vm.qemuLog()}` : ''}`,
      );
    await sleep(5);
  }
}

/**
 * Snapshot the minimal firmware guest (image/firmware.ts): boot it, see it reach its spin loop (the flag
 * byte set in its RAM), pause it, save its device state, then clear the flag in the saved RAM so every
 * child leaves the loop and signals at once. The snapshot has the usual layout (memory, vmstate, a
 * qcow2 over a tiny raw base) plus firmware.bin, so the engine starts its children like any others.
 */
export async function createFirmwareSnapshot(opts: {
  tag: string;
  accel: Accel;
  memMib: number;
}): Promise<SnapshotMeta> {
  validateTag(opts.tag);
  if (snapshotExists(opts.tag))
    throw new ForkdError('exists', `snapshot '${opts.tag}' already exists`, `forkd rmi ${opts.tag}`);
  const vmm = new QemuVmm();
  const staged = stageSnapshot(opts.tag);
  const dir = staged.dir;
  const workDir = createWorkDir('parent', opts.tag);
  let vm: QemuVm | undefined;
  const teardown = async () => {
    await vm?.destroy();
    staged.abort();
    fs.rmSync(workDir, { recursive: true, force: true });
  };
  const unregister = onInterrupt(teardown);
  try {
    const memoryFile = path.join(dir, 'memory.bin');
    const t0 = performance.now();
    vm = await bootFirmwareGuest({
      accel: opts.accel,
      memMib: opts.memMib,
      filesDir: dir,
      workDir,
      memoryFile,
    });
    const bootMs = performance.now() - t0;
    const snap = await vmm.snapshot(vm, path.join(dir, 'vmstate'));
    await vm.destroy();
    vm = undefined;
    // Device state is saved; RAM is not in it (x-ignore-shared), so clearing the flag now is what the
    // children see.
    const fd = fs.openSync(memoryFile, 'r+');
    fs.writeSync(fd, Buffer.from([0]), 0, 1, FIRMWARE_FLAG_ADDR);
    fs.closeSync(fd);
    const meta: SnapshotMeta = {
      format: SNAPSHOT_FORMAT,
      version: SNAPSHOT_VERSION,
      tag: opts.tag,
      created_at: new Date().toISOString(),
      forkd_version: forkdVersion(),
      vmm: {
        kind: 'qemu',
        version: await vmm.version(),
        ...(opts.accel === 'kvm' ? { cpu: hostCpu() } : {}),
      },
      accelerator: opts.accel,
      accelerator_reason: 'firmware guest',
      machine: {
        accel: opts.accel,
        vcpus: 1,
        mem_mib: opts.memMib,
        net: 'none',
        firmware: 'firmware.bin',
        ...(await machineCpu(opts.accel)),
      },
      guest: {
        recipe: null,
        image_key: null,
        kernel_release: 'none (firmware guest)',
        python: null,
        numpy: null,
        node: null,
        warmup: null,
        warmup_eval: null,
      },
      files: {
        vmstate: await fileEntry(dir, 'vmstate'),
        memory: {
          ...(await fileEntry(dir, 'memory.bin')),
          allocated: fs.statSync(memoryFile).blocks * 512,
          kind: 'full',
        },
        disk: { ...(await fileEntry(dir, 'disk.qcow2')), backing: 'base.raw' },
        base: await fileEntry(dir, 'base.raw'),
      },
      origin: { kind: 'boot', sandbox_id: null, source_tag: null, mode: null, pause_ms: null },
      lineage: { parent_tag: null, parent_content_hash: null, depth: 0 },
      timings: { boot_ms: Math.round(bootMs * 10) / 10, pause_ms: Math.round(snap.pauseMs * 10) / 10 },
    };
    staged.commit(meta);
    fs.rmSync(workDir, { recursive: true, force: true });
    unregister();
    return meta;
  } catch (e) {
    await teardown();
    unregister();
    throw e;
  }
}
