/**
 * The outer VM `npm run test:kvm` runs forkd in on a host whose own KVM cannot run a stock guest kernel
 * (PVM, or none). QEMU's TCG emulates AMD SVM with nested paging, so the Debian kernel booted with
 * `-cpu max,+svm` loads kvm-amd and has a real /dev/kvm: inside, forkd runs the Linux KVM code path users
 * run, end to end (slowly: the outer machine is emulated).
 *
 * The outer root is the host's root filesystem, read-only over virtio-9p, under a tmpfs overlay; so
 * the repository, node, QEMU and the cached guest image are all there and the host is never written.
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cacheDir } from '../../src/util/paths.js';
import { ensureKernel, fetchKernelPackage, moduleLoadOrder } from '../../src/image/kernel.js';
import { BUSYBOX, cpioGzip } from '../../src/image/initramfs.js';
import { qemuBinary } from '../../src/vmm/qemu.js';
import { hostTsc, tscCmdline } from '../../src/host/tsc.js';
import type { Reporter } from '../../src/util/report.js';
import { ROOT } from '../helpers/env.js';

/** Loaded by the outer initramfs: enough to mount the 9p root under an overlay. */
const BOOT_MODULES = ['virtio_mmio', '9pnet_virtio', '9p', 'overlay'];
/** The parts of the module tree the outer machine may need (KVM, netfilter, veth, tun, filesystems). */
const TREE_PARTS = [
  'arch',
  'virt',
  'lib',
  'crypto',
  'net',
  'fs',
  'drivers/block',
  'drivers/net',
  'drivers/virtio',
  'drivers/crypto',
];

export interface OuterKit {
  vmlinux: string;
  initramfs: string;
  /** The kernel's module tree (pruned to TREE_PARTS, depmod run), bind-mounted at /lib/modules/<release>. */
  modulesDir: string;
  release: string;
}

function scriptPath(name: string): string {
  return path.join(ROOT, 'test', 'kvm', name);
}

/** Kernel (the same package guests boot), its module tree and the outer initramfs; cached by inputs. */
export async function ensureOuterKit(rep: Reporter): Promise<OuterKit> {
  const kernel = await ensureKernel(rep);
  // Keyed by the kernel package and the parts kept, so a change to either fetches the tree again.
  const parts = createHash('sha256').update(TREE_PARTS.join(',')).digest('hex').slice(0, 8);
  const dir = path.join(cacheDir(), 'kvm-outer', `${path.basename(kernel.dir)}-${parts}`);
  const modulesDir = path.join(dir, 'modules');
  if (!fs.existsSync(path.join(modulesDir, 'modules.dep'))) {
    rep.step(`fetching the module tree of ${kernel.package} ${kernel.version} for the outer VM`);
    const staging = `${dir}.staging-${process.pid}`;
    fs.rmSync(staging, { recursive: true, force: true });
    fs.mkdirSync(staging, { recursive: true });
    try {
      const { tree, release } = await fetchKernelPackage(kernel.package, kernel.version, staging);
      const from = path.join(tree, 'lib', 'modules', release);
      const to = path.join(staging, 'modules');
      for (const part of TREE_PARTS)
        fs.cpSync(path.join(from, 'kernel', part), path.join(to, 'kernel', part), { recursive: true });
      for (const f of fs.readdirSync(from))
        if (f.startsWith('modules.') && f.endsWith('builtin'))
          fs.copyFileSync(path.join(from, f), path.join(to, f));
      fs.rmSync(tree, { recursive: true, force: true });
      // depmod over the pruned tree, laid out as <base>/lib/modules/<release>.
      const base = path.join(staging, 'depmod');
      fs.mkdirSync(path.join(base, 'lib', 'modules'), { recursive: true });
      fs.renameSync(to, path.join(base, 'lib', 'modules', release));
      await runChecked('depmod', ['-b', base, release]);
      fs.renameSync(path.join(base, 'lib', 'modules', release), to);
      fs.rmSync(base, { recursive: true, force: true });
      fs.rmSync(dir, { recursive: true, force: true });
      fs.mkdirSync(path.dirname(dir), { recursive: true });
      fs.renameSync(staging, dir);
    } catch (e) {
      fs.rmSync(staging, { recursive: true, force: true });
      throw e;
    }
  }
  const order = moduleLoadOrder(fs.readFileSync(path.join(modulesDir, 'modules.dep'), 'utf8'), BOOT_MODULES);
  const h = createHash('sha256');
  h.update(`outer-v1\0${kernel.release}\0${order.join(',')}\0`);
  h.update(fs.readFileSync(BUSYBOX));
  h.update(fs.readFileSync(scriptPath('outer-init.sh')));
  const initramfs = path.join(dir, `initramfs-${h.digest('hex').slice(0, 16)}.cpio.gz`);
  if (!fs.existsSync(initramfs)) {
    rep.step('building the outer VM initramfs');
    const stage = fs.mkdtempSync(path.join(dir, 'stage-'));
    try {
      for (const d of ['bin', 'etc', 'lib/modules']) fs.mkdirSync(path.join(stage, d), { recursive: true });
      fs.copyFileSync(BUSYBOX, path.join(stage, 'bin', 'busybox'));
      fs.chmodSync(path.join(stage, 'bin', 'busybox'), 0o755);
      fs.copyFileSync(scriptPath('outer-init.sh'), path.join(stage, 'init'));
      fs.chmodSync(path.join(stage, 'init'), 0o755);
      const names: string[] = [];
      for (const rel of order) {
        const name = path.basename(rel, '.ko');
        fs.copyFileSync(path.join(modulesDir, rel), path.join(stage, 'lib', 'modules', `${name}.ko`));
        names.push(name);
      }
      fs.writeFileSync(path.join(stage, 'etc', 'outer-modules'), names.join('\n') + '\n');
      const tmp = `${initramfs}.tmp-${process.pid}`;
      await cpioGzip(stage, tmp);
      fs.renameSync(tmp, initramfs);
    } finally {
      fs.rmSync(stage, { recursive: true, force: true });
    }
  }
  return { vmlinux: kernel.vmlinux, initramfs, modulesDir, release: kernel.release };
}

function runChecked(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d) => (err += d));
    p.on('error', reject);
    p.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} failed: ${err.trim()}`))));
  });
}

/** RCU stall reports (about one a minute) after which a stuck outer vCPU is taken as never recovering. */
const STALL_REPORTS = 6;
/** No heartbeat from the outer VM's userland for this long: its clock stopped, it is wedged. */
const HEARTBEAT_LOST_MS = 4 * 60_000;

/**
 * The outer machine itself failed (its kernel panicked or wedged), as opposed to the suites failing.
 * QEMU's TCG emulation of SVM does that now and then while KVM runs a guest (seen: a kernel stack
 * corrupted during KVM_RUN, a vCPU stuck for good); the run can be tried again.
 */
export class OuterVmFailure extends Error {}

const shQuote = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

export interface OuterRun {
  /** Shell command run in the repository inside the outer VM. */
  job: string;
  env: Record<string, string>;
  memMib: number;
  cpus: number;
  /** Size of the scratch disk inside, its TMPDIR (sparse: the host stores only what is written). */
  scratchGib: number;
  /** Hard limit for the whole run, boot included. */
  timeoutMs: number;
  /** Each line the job writes, as it writes it. */
  onLine: (line: string) => void;
}

/** Boot the outer VM, run the job inside, power off. Resolves with the job's exit status. */
export async function runInOuterVm(
  kit: OuterKit,
  run: OuterRun,
): Promise<{ code: number; ms: number; console: string }> {
  const jobDir = fs.mkdtempSync(path.join(cacheDir(), 'kvm-outer', 'job-'));
  const consoleLog = path.join(jobDir, 'console.log');
  try {
    fs.copyFileSync(scriptPath('outer-stage2.sh'), path.join(jobDir, 'stage2.sh'));
    // TMPDIR inside is a real (sparse) disk, not tmpfs: the suites copy whole snapshots around, and in
    // RAM that would cap them at a fraction of the outer VM's memory.
    const scratch = path.join(jobDir, 'scratch.img');
    fs.closeSync(fs.openSync(scratch, 'w'));
    fs.truncateSync(scratch, run.scratchGib * 1024 ** 3);
    await runChecked('mkfs.ext4', ['-q', '-F', '-O', '^has_journal', '-E', 'lazy_itable_init=1', scratch]);
    const env: Record<string, string> = {
      HOME: '/root',
      PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      LANG: 'C.UTF-8',
      ...run.env,
      REPO: ROOT,
      KMODS: kit.modulesDir,
      RELEASE: kit.release,
      JOB: run.job,
    };
    fs.writeFileSync(
      path.join(jobDir, 'env.sh'),
      Object.entries(env)
        .map(([k, v]) => `export ${k}=${shQuote(v)}`)
        .join('\n') + '\n',
    );
    // The outer boot is under TCG: without the TSC rate its kernel may hang calibrating (host/tsc.ts).
    // Not tsc=reliable: with it, a vCPU of the outer machine stalled for good (RCU stall) while KVM ran
    // a guest; its kernel marks the TSC unstable and picks another clocksource, and KVM works.
    const tsc = tscCmdline(await hostTsc());
    const args = [
      '-machine',
      'microvm',
      '-accel',
      'tcg,thread=multi',
      '-cpu',
      'max,+svm',
      '-m',
      `${run.memMib}M`,
      '-smp',
      String(run.cpus),
      '-nodefaults',
      '-no-user-config',
      '-nographic',
      '-no-reboot',
      '-chardev',
      `file,id=con0,path=${consoleLog}`,
      '-serial',
      'chardev:con0',
      '-kernel',
      kit.vmlinux,
      '-initrd',
      kit.initramfs,
      '-append',
      ['console=ttyS0 quiet panic=-1', ...tsc].join(' '),
      '-fsdev',
      'local,id=hostroot,path=/,readonly=on,security_model=none,multidevs=remap',
      '-device',
      'virtio-9p-device,fsdev=hostroot,mount_tag=hostroot',
      '-fsdev',
      `local,id=job,path=${jobDir},security_model=none`,
      '-device',
      'virtio-9p-device,fsdev=job,mount_tag=job',
      '-drive',
      `file=${scratch},if=none,id=scratch,format=raw,cache=unsafe,discard=unmap`,
      '-device',
      'virtio-blk-device,drive=scratch',
    ];
    const t0 = Date.now();
    const outLog = path.join(jobDir, 'out.log');
    const qemu = spawn(qemuBinary(), args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    qemu.stderr.on('data', (d) => (stderr += d));
    // Follow the job's log as the outer VM writes it (through 9p, straight into jobDir).
    let offset = 0;
    let partial = '';
    const follow = () => {
      let fd: number;
      try {
        fd = fs.openSync(outLog, 'r');
      } catch {
        return;
      }
      try {
        const buf = Buffer.alloc(1 << 16);
        for (;;) {
          const n = fs.readSync(fd, buf, 0, buf.length, offset);
          if (n <= 0) break;
          offset += n;
          partial += buf.subarray(0, n).toString('utf8');
          const lines = partial.split('\n');
          partial = lines.pop()!;
          for (const l of lines) run.onLine(l);
        }
      } finally {
        fs.closeSync(fd);
      }
    };
    const tail = setInterval(follow, 1000);
    const exited = new Promise<number | null>((resolve) => qemu.on('close', (c) => resolve(c)));
    // Interrupted (Ctrl-C, CI's kill): the outer VM goes too, and with it everything inside.
    const onSignal = (sig: NodeJS.Signals) => {
      qemu.kill('SIGKILL');
      fs.rmSync(jobDir, { recursive: true, force: true });
      process.exit(sig === 'SIGINT' ? 130 : 143);
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    void exited.then(() => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    });
    const limit = new Promise<'timeout'>((resolve) =>
      setTimeout(() => resolve('timeout'), run.timeoutMs).unref(),
    );
    // A vCPU of the outer machine that stays stuck (the kernel repeats its RCU stall report about once a
    // minute) never comes back: give up after STALL_REPORTS of them instead of waiting for the limit.
    let stallTimer: NodeJS.Timeout | undefined;
    const heartbeat = path.join(jobDir, 'heartbeat');
    const stalled = new Promise<'stalled'>((resolve) => {
      stallTimer = setInterval(() => {
        const reports = readOr(consoleLog).match(/rcu_preempt detected stalls/g)?.length ?? 0;
        const beat = fs.statSync(heartbeat, { throwIfNoEntry: false })?.mtimeMs ?? t0;
        if (reports >= STALL_REPORTS || Date.now() - beat > HEARTBEAT_LOST_MS) resolve('stalled');
      }, 10_000);
      stallTimer.unref();
    });
    const first = await Promise.race([exited, limit, stalled]);
    clearInterval(stallTimer);
    clearInterval(tail);
    follow();
    if (partial) run.onLine(partial);
    const consoleText = readOr(consoleLog);
    if (first === 'stalled') {
      qemu.kill('SIGKILL');
      await exited;
      throw new OuterVmFailure(
        `the outer VM is wedged (a stuck vCPU: repeated RCU stalls, or no heartbeat for ${HEARTBEAT_LOST_MS / 60000} min); its console ends:\n${lastLines(consoleText, 30)}`,
      );
    }
    if (first === 'timeout') {
      qemu.kill('SIGKILL');
      await exited;
      throw new Error(
        `the outer VM did not finish within ${Math.round(run.timeoutMs / 60000)} min; its console ends:\n${lastLines(consoleText, 30)}`,
      );
    }
    const rc = readOr(path.join(jobDir, 'rc')).trim();
    if (!/^\d+$/.test(rc))
      throw new OuterVmFailure(
        `the outer VM stopped (QEMU exit ${first}) without the job's exit status${stderr ? `: ${stderr.trim()}` : ''}; its console ends:\n${lastLines(consoleText, 30)}`,
      );
    return { code: Number(rc), ms: Date.now() - t0, console: consoleText };
  } finally {
    fs.rmSync(jobDir, { recursive: true, force: true });
  }
}

function readOr(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

function lastLines(s: string, n: number): string {
  return s.trimEnd().split('\n').slice(-n).join('\n');
}
