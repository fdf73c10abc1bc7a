import { spawn } from 'node:child_process';
import { BASE_FLAGS, KVM_CPU } from '../vmm/qemu-argv.js';
import { qemuBinary } from '../vmm/qemu.js';
import type { Accel } from '../vmm/types.js';

/**
 * The `-cpu` model KVM guests get on this host: `host`, unless this host's KVM refuses an MSR that
 * QEMU sets for it. Some KVM implementations (seen with PVM) advertise IA32_ARCH_CAPABILITIES in CPUID
 * but reject writing the MSR, and QEMU then aborts at start ("failed to set MSR 0x10a"); without that
 * feature the same guest runs. Found by starting a paused machine (it aborts within milliseconds, or
 * stays up); recorded in each snapshot, whose children must have the same CPU as their parent.
 */
export async function kvmCpuModel(): Promise<string> {
  return (memo ??= probe());
}
let memo: Promise<string> | undefined;

/** The CPU a new snapshot's machine records: only where KVM needs other than plain `host`. */
export async function machineCpu(accel: Accel): Promise<{ cpu?: string }> {
  if (accel !== 'kvm') return {};
  const cpu = await kvmCpuModel();
  return cpu === KVM_CPU ? {} : { cpu };
}

const ARCH_CAPS_MSR = /failed to set MSR 0x10a/;

async function probe(): Promise<string> {
  const aborted = await startsAndAborts(KVM_CPU);
  return aborted && ARCH_CAPS_MSR.test(aborted) ? `${KVM_CPU},-arch-capabilities` : KVM_CPU;
}

/** Start a paused KVM machine with this CPU; its stderr if it exited within a second, else undefined. */
function startsAndAborts(cpu: string): Promise<string | undefined> {
  return new Promise((resolve) => {
    const args = ['-machine', 'microvm', '-accel', 'kvm', '-cpu', cpu, '-m', '16M', ...BASE_FLAGS, '-S'];
    const p = spawn(qemuBinary(), args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d: Buffer) => (err += d.toString('utf8')));
    const timer = setTimeout(() => {
      p.kill('SIGKILL');
      resolve(undefined);
    }, 1000);
    p.on('error', () => {
      clearTimeout(timer);
      resolve(undefined);
    });
    p.on('exit', () => {
      clearTimeout(timer);
      resolve(err || undefined);
    });
  });
}
