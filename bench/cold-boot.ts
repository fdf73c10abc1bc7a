import fs from 'node:fs';
import path from 'node:path';
import { GUEST_CMDLINE } from '../src/snapshot/create.js';
import type { GuestImage } from '../src/image/build.js';
import { QemuVmm } from '../src/vmm/qemu.js';
import { bootGuest } from '../src/snapshot/boot.js';
import { createOverlay } from '../src/vmm/disk.js';

/**
 * Boot the guest image from scratch in `dir` exactly as `forkd snapshot` boots a parent (same command
 * line, same retry rule), up to an answering agent. The caller owns the result and must destroy the VM;
 * `dir` is the caller's to remove.
 */
export async function coldBootGuest(
  image: GuestImage,
  accel: 'kvm' | 'tcg',
  dir: string,
  onRetry: (msg: string) => void,
): Promise<Awaited<ReturnType<typeof bootGuest>>> {
  fs.linkSync(image.rootfs.path, path.join(dir, 'base.ext4'));
  let vm: Awaited<ReturnType<typeof bootGuest>>['vm'] | undefined;
  try {
    return await bootGuest(
      new QemuVmm(),
      {
        machine: { accel, vcpus: 1, memMib: 512, net: 'none' },
        workDir: path.join(dir, 'w'),
        kernel: image.kernel.vmlinux,
        initrd: image.initramfs.path,
        cmdline: GUEST_CMDLINE,
        memoryFile: path.join(dir, 'memory.bin'),
        disk: path.join(dir, 'disk.qcow2'),
      },
      {
        timeoutMs: 300_000,
        prepare: () => createOverlay(path.join(dir, 'disk.qcow2'), 'base.ext4', 'raw'),
        onRetry,
      },
      (v) => (vm = v),
    );
  } catch (e) {
    await vm?.destroy();
    throw e;
  }
}
