import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { cacheDir } from '../util/paths.js';
import { qemuBinary, QemuVmm } from '../vmm/qemu.js';
import { accelArgs, BASE_FLAGS } from '../vmm/qemu-argv.js';
import type { Accel } from '../vmm/types.js';
import { ForkdError } from '../util/errors.js';
import { hostTsc, tscCmdline } from './tsc.js';
import { scaledMs } from '../util/host-speed.js';
import { readCpuinfo } from './cpu.js';

export interface AccelProbe {
  accel: Accel;
  /** Why: shown by doctor, in logs and next to every timing line. */
  reason: string;
  kvm: { present: boolean; pvm: boolean; usable: boolean | null; detail: string };
  probed_at: string;
  key: string;
}

const PROBE_TIMEOUT_MS = 20_000;

/** Why /dev/kvm cannot be opened read-write here, or undefined when it can. */
export function kvmOpenError(): string | undefined {
  try {
    fs.closeSync(fs.openSync('/dev/kvm', 'r+'));
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}

function kvmFacts(): AccelProbe['kvm'] {
  const present = fs.existsSync('/dev/kvm');
  const pvm = fs.existsSync('/sys/module/kvm_pvm');
  let detail = present ? '/dev/kvm present' : '/dev/kvm missing';
  const openError = present ? kvmOpenError() : undefined;
  if (openError) detail = `/dev/kvm not accessible: ${openError}`;
  if (pvm) detail += '; KVM here is PVM (kvm_pvm: nested, runs only PVM-built guest kernels)';
  return { present, pvm, usable: null, detail };
}

/**
 * Decide the accelerator by really booting the guest kernel under KVM: the kernel and a probe initramfs
 * must reach user space within the timeout. (On a PVM host /dev/kvm opens fine, but a stock kernel is
 * instruction-emulated ~100x slower and then dies; only a boot proves KVM works.) Results are cached by
 * host kernel, QEMU version and guest kernel. FORKD_ACCEL=kvm|tcg overrides.
 */
export async function probeAccel(guest: {
  vmlinux: string;
  initramfs: string;
  kernelKey: string;
}): Promise<AccelProbe> {
  const forced = process.env.FORKD_ACCEL;
  const qemuVersion = await new QemuVmm().version();
  const kvm = kvmFacts();
  const key = probeKey(qemuVersion, guest.kernelKey, kvm);
  if (forced === 'tcg' || forced === 'kvm') {
    return {
      accel: forced,
      reason: `forced by FORKD_ACCEL=${forced}`,
      kvm,
      probed_at: new Date().toISOString(),
      key,
    };
  }
  if (forced)
    throw new ForkdError(
      'bad_input',
      `FORKD_ACCEL=${forced} is not valid`,
      'use FORKD_ACCEL=kvm, tcg, or unset it',
    );
  const cached = readCachedProbe();
  if (cached && cached.key === key) return cached;
  let result: AccelProbe;
  if (!kvm.present || kvm.detail.includes('not accessible')) {
    result = {
      accel: 'tcg',
      reason: `${kvm.detail}: guests run under TCG (software emulation)`,
      kvm,
      probed_at: new Date().toISOString(),
      key,
    };
  } else {
    const boot = await bootProbe('kvm', guest.vmlinux, guest.initramfs);
    kvm.usable = boot.ok;
    result = boot.ok
      ? {
          accel: 'kvm',
          reason: `KVM booted the guest kernel in ${boot.ms} ms`,
          kvm,
          probed_at: new Date().toISOString(),
          key,
        }
      : {
          accel: 'tcg',
          reason: `KVM cannot run the stock guest kernel (${boot.detail})${kvm.pvm ? '; this host has PVM, which needs a PVM-built guest kernel' : ''}: guests run under TCG (software emulation, much slower)`,
          kvm,
          probed_at: new Date().toISOString(),
          key,
        };
  }
  writeCachedProbe(result);
  return result;
}

/**
 * The three kinds of host forkd tells apart: KVM that runs a stock guest kernel (a bare-metal host, or a
 * VM with nested virtualisation), KVM that cannot (PVM, or nested KVM without what a stock kernel needs:
 * the probe boot failed), and no usable KVM at all.
 */
export type HostKind = 'kvm' | 'kvm-no-stock-guests' | 'no-kvm';

export function hostKind(
  probe: AccelProbe | undefined,
  cpuinfo = readCpuinfo(),
): { kind: HostKind | undefined; detail: string } {
  const kvm = probe?.kvm ?? kvmFacts();
  const nested = /^flags\s*:.*\bhypervisor\b/m.test(cpuinfo) ? ' (this host is itself a VM: nested KVM)' : '';
  if (!kvm.present || kvm.detail.includes('not accessible'))
    return { kind: 'no-kvm', detail: `no usable KVM: ${kvm.detail}` };
  if (
    kvm.usable === true ||
    (kvm.usable === null && probe?.accel === 'kvm' && !probe.reason.startsWith('forced'))
  )
    return { kind: 'kvm', detail: `KVM runs stock guest kernels${nested}` };
  if (kvm.usable === false)
    return {
      kind: 'kvm-no-stock-guests',
      detail: kvm.pvm
        ? 'KVM is PVM (kvm_pvm): it cannot run a stock guest kernel, only PVM-built ones'
        : `KVM is present but could not boot a stock guest kernel${nested}`,
    };
  return {
    kind: undefined,
    detail: `${kvm.detail}; not yet probed whether it runs a stock guest kernel${kvm.pvm ? ' (PVM usually cannot)' : ''}`,
  };
}

/**
 * What a probe result depends on: the host kernel, QEMU, the guest kernel and the KVM device. A cache
 * that moved (a copied home directory, the host's cache seen from inside a VM, a kernel upgrade) must
 * not decide the accelerator for another host.
 */
function probeKey(qemuVersion: string, kernelKey: string, kvm: AccelProbe['kvm']): string {
  return [os.release(), qemuVersion, kernelKey, kvm.present, kvm.pvm].join('|');
}

/** The cached probe, if it was made on this host (and with this guest kernel, when one is named). */
export async function validCachedProbe(kernelKey?: string): Promise<AccelProbe | undefined> {
  const cached = readCachedProbe();
  if (!cached) return undefined;
  const want = probeKey(await new QemuVmm().version(), kernelKey ?? '', kvmFacts()).split('|');
  const have = cached.key.split('|');
  const same = want.every((v, i) => (i === 2 && kernelKey === undefined) || have[i] === v);
  return same ? cached : undefined;
}

function probeFile(): string {
  return path.join(cacheDir(), 'accel-probe.json');
}

export function readCachedProbe(): AccelProbe | undefined {
  try {
    return JSON.parse(fs.readFileSync(probeFile(), 'utf8')) as AccelProbe;
  } catch {
    return undefined;
  }
}

function writeCachedProbe(p: AccelProbe): void {
  fs.mkdirSync(path.dirname(probeFile()), { recursive: true });
  fs.writeFileSync(probeFile(), JSON.stringify(p, null, 2));
}

/** Boot vmlinux + initramfs with forkd.probe=1 (init prints a marker and powers off). */
export async function bootProbe(
  accel: Accel,
  vmlinux: string,
  initramfs: string,
): Promise<{ ok: boolean; ms: number; detail: string }> {
  // The TSC rate too, so that the probe never hangs on clock calibration (see tsc.ts).
  const tscArgs = tscCmdline(await hostTsc());
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-probe-'));
  const consoleLog = path.join(dir, 'console.log');
  const args = [
    '-machine',
    'microvm',
    ...accelArgs(accel),
    '-m',
    '256M',
    '-smp',
    '1',
    ...BASE_FLAGS,
    '-chardev',
    `file,id=con0,path=${consoleLog}`,
    '-serial',
    'chardev:con0',
    '-kernel',
    vmlinux,
    '-initrd',
    initramfs,
    '-append',
    ['console=ttyS0 quiet panic=-1 forkd.probe=1', ...tscArgs].join(' '),
  ];
  const t0 = Date.now();
  return new Promise((resolve) => {
    let stderr = '';
    const p = spawn(qemuBinary(), args, { stdio: ['ignore', 'ignore', 'pipe'] });
    p.stderr.on('data', (d) => (stderr += d));
    let done = false;
    const finish = (ok: boolean, detail: string) => {
      if (done) return;
      done = true;
      clearInterval(poll);
      clearTimeout(timer);
      try {
        p.kill('SIGKILL');
      } catch {
        /* gone */
      }
      fs.rmSync(dir, { recursive: true, force: true });
      resolve({ ok, ms: Date.now() - t0, detail });
    };
    const seen = () => {
      try {
        return fs.readFileSync(consoleLog, 'utf8').includes('FORKD-PROBE-OK');
      } catch {
        return false;
      }
    };
    const poll = setInterval(() => seen() && finish(true, 'ok'), 20);
    const limitMs = scaledMs(PROBE_TIMEOUT_MS);
    const timer = setTimeout(() => finish(false, `no boot within ${limitMs / 1000} s`), limitMs);
    p.on('error', (e) => finish(false, e.message));
    p.on('exit', (code, signal) => {
      if (seen()) finish(true, 'ok');
      else
        finish(
          false,
          `QEMU ${code === null ? `was killed by ${signal}` : `exited with code ${code}`}: ${stderr.trim().split('\n').slice(-2).join(' ') || 'no output'}`,
        );
    });
  });
}

/**
 * The accelerator this host runs guests under, for commands that have no kernel at hand (fork, doctor):
 * FORKD_ACCEL, else the cached probe, else a probe with the most recently built guest image.
 */
export async function currentAccel(): Promise<AccelProbe> {
  const forced = process.env.FORKD_ACCEL;
  if (forced) return probeAccel({ vmlinux: '', initramfs: '', kernelKey: 'forced' });
  const { listImages } = await import('../image/build.js');
  const img = listImages()[0];
  const cached = await validCachedProbe(img?.kernel.version);
  if (cached) return cached;
  const kvm = kvmFacts();
  if (!kvm.present)
    return {
      accel: 'tcg',
      reason: `${kvm.detail}: guests run under TCG`,
      kvm,
      probed_at: new Date().toISOString(),
      key: 'static',
    };
  if (!img)
    throw new ForkdError(
      'host_unsupported',
      'cannot tell whether KVM runs guests on this host: no guest kernel has been built to probe with',
      'run: forkd parent build --recipe python-numpy',
    );
  return probeAccel({
    vmlinux: img.kernel.vmlinux,
    initramfs: img.initramfs.path,
    kernelKey: img.kernel.version,
  });
}
