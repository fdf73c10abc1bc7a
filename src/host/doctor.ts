import fs from 'node:fs';
import os from 'node:os';
import { spawn } from 'node:child_process';
import { snapshotsDir, runDir } from '../util/paths.js';
import { freeBytes } from '../util/fs.js';
import { bytes } from '../util/format.js';
import { commandExists, memAvailableMib } from '../util/proc.js';
import { qemuBinary, QemuVmm } from '../vmm/qemu.js';
import { jailSupport, unprivilegedUserfaultfd } from '../vmm/jail.js';
import { listImages } from '../image/build.js';
import { REQUIREMENTS, busyboxIsStatic, isProvided } from './requirements.js';
import { hostKind, kvmOpenError, probeAccel, validCachedProbe } from './accel.js';
import { kvmCpuModel } from './kvm-cpu.js';
import { KVM_CPU } from '../vmm/qemu-argv.js';
import { hostSpeed } from '../util/host-speed.js';
import { hostTsc } from './tsc.js';

export type Status = 'PASS' | 'WARN' | 'FAIL' | 'SKIP';
export interface Check {
  name: string;
  status: Status;
  detail: string;
  hint?: string;
}

const GiB = 1024 ** 3;

function check(name: string, status: Status, detail: string, hint?: string): Check {
  return hint ? { name, status, detail, hint } : { name, status, detail };
}

/** Every check of `forkd doctor`. Never changes the host; each non-PASS carries the fix. */
export async function runDoctor(opts: { probe?: boolean } = {}): Promise<Check[]> {
  const out: Check[] = [];
  const arch = os.arch();
  out.push(
    os.platform() === 'linux' && arch === 'x64'
      ? check('platform', 'PASS', `Linux ${os.release()} x86_64`)
      : check('platform', 'FAIL', `${os.platform()} ${arch}`, 'forkd needs Linux on x86_64'),
  );
  out.push(
    process.getuid?.() === 0
      ? check('privileges', 'PASS', 'running as root')
      : check(
          'privileges',
          'WARN',
          `running as uid ${process.getuid?.()}`,
          'building images, memory limits and network namespaces need root: sudo -E forkd ...',
        ),
  );

  const pvm = fs.existsSync('/sys/module/kvm_pvm');
  const img = listImages()[0];
  const haveQemu = commandExists(qemuBinary());
  let probe = haveQemu ? await validCachedProbe(img?.kernel.version) : undefined;
  if (!probe && img && opts.probe !== false && haveQemu)
    probe = await probeAccel({
      vmlinux: img.kernel.vmlinux,
      initramfs: img.initramfs.path,
      kernelKey: img.kernel.version,
    });
  // KVM, as one of three host kinds: runs stock guests / present but cannot / none.
  const kind = hostKind(probe);
  if (kind.kind === 'kvm') out.push(check('kvm', 'PASS', kind.detail));
  else if (kind.kind === 'no-kvm')
    out.push(
      check(
        'kvm',
        'WARN',
        kind.detail,
        fs.existsSync('/dev/kvm')
          ? 'add yourself to group kvm: usermod -aG kvm $USER'
          : 'enable virtualisation (kvm_intel/kvm_amd, or nested virtualisation for a VM) or run on bare metal',
      ),
    );
  else if (kind.kind === 'kvm-no-stock-guests')
    out.push(
      check(
        'kvm',
        'WARN',
        kind.detail,
        pvm
          ? 'only a PVM guest kernel (CONFIG_PVM_GUEST) would run under it; npm run test:kvm tests the KVM path nested under TCG instead'
          : 'enable nested virtualisation with nested paging for this VM, or run on bare metal',
      ),
    );
  else
    out.push(
      check('kvm', 'SKIP', kind.detail, 'run: forkd parent build --recipe python-numpy (then doctor probes)'),
    );
  if (haveQemu && !kvmOpenError()) {
    const cpu = await kvmCpuModel();
    out.push(
      check(
        'kvm cpu',
        'PASS',
        cpu === KVM_CPU
          ? `-cpu ${cpu}`
          : `-cpu ${cpu} (this host's KVM refuses the IA32_ARCH_CAPABILITIES MSR that QEMU sets for -cpu ${KVM_CPU})`,
      ),
    );
  }
  if (process.env.FORKD_ACCEL) {
    out.push(
      check(
        'accelerator',
        'WARN',
        `forced to ${process.env.FORKD_ACCEL} by FORKD_ACCEL`,
        'unset FORKD_ACCEL to probe',
      ),
    );
  } else if (!probe) {
    out.push(
      check(
        'accelerator',
        'SKIP',
        'not probed yet: needs a guest kernel',
        'run: forkd parent build --recipe python-numpy',
      ),
    );
  } else if (probe.accel === 'kvm') {
    out.push(check('accelerator', 'PASS', `kvm — ${probe.reason}`));
  } else {
    out.push(
      check(
        'accelerator',
        'WARN',
        `tcg — ${probe.reason}`,
        pvm
          ? "this host's KVM is PVM: only a PVM guest kernel (CONFIG_PVM_GUEST) would run under it; forks work under TCG but are slower"
          : 'enable hardware virtualisation for KVM speed; forks work under TCG but are slower',
      ),
    );
  }

  // TCG guests get the host's TSC rate on their command line; without it their boots can hang.
  const tsc = await hostTsc();
  const usesTcg = process.env.FORKD_ACCEL ? process.env.FORKD_ACCEL === 'tcg' : probe?.accel !== 'kvm';
  out.push(
    tsc
      ? check(
          'tsc',
          'PASS',
          `host TSC ${(tsc.khz / 1000).toFixed(3)} MHz, from ${tsc.source}; TCG guests boot with tsc_early_khz=${tsc.khz}`,
        )
      : check(
          'tsc',
          usesTcg ? 'WARN' : 'SKIP',
          'host TSC frequency unknown (no kernel log line, no invariant TSC in /proc/cpuinfo): TCG guests must calibrate against an emulated timer, which can hang their boot on a loaded host',
          "set FORKD_TSC_KHZ to the host's TSC frequency in kHz",
        ),
  );

  // Internal timeouts follow the host's measured speed (an emulated or overloaded host gets longer ones).
  const speed = hostSpeed();
  out.push(
    check(
      'host speed',
      speed.factor >= 5 ? 'WARN' : 'PASS',
      speed.source === 'FORKD_TIME_SCALE'
        ? `timeouts ×${speed.factor} (FORKD_TIME_SCALE)`
        : `CPU workload ${speed.workload_ms} ms (${speed.factor}× the reference host): internal timeouts ×${speed.factor}`,
      ...(speed.factor >= 5
        ? ['this host runs far slower than a normal one (emulated CPU?): everything works, slowly']
        : []),
    ),
  );

  // QEMU and the tools forkd drives.
  if (commandExists(qemuBinary())) {
    const v = await new QemuVmm().version().catch(() => 'unknown');
    const [maj = 0, min = 0] = v.split('.').map(Number);
    out.push(
      maj > 7 || (maj === 7 && min >= 2)
        ? check('qemu', 'PASS', `${qemuBinary()} ${v}`)
        : check(
            'qemu',
            'FAIL',
            `${qemuBinary()} ${v} is older than 7.2`,
            "install Debian bookworm's qemu-system-x86 (7.2) or newer",
          ),
    );
  } else {
    out.push(check('qemu', 'FAIL', `${qemuBinary()} not found`, 'run: forkd setup --yes'));
  }
  out.push(await jailCheck());
  out.push(egressCheck());
  const missing = REQUIREMENTS.filter((r) => r.pkg !== 'qemu-system-x86' && !isProvided(r)).map((r) => r.pkg);
  if (
    isProvided(REQUIREMENTS.find((r) => r.pkg === 'busybox-static')!) &&
    !(await busyboxIsStatic()) &&
    !missing.includes('busybox-static')
  )
    missing.push('busybox-static');
  out.push(
    missing.length
      ? check('host tools', 'FAIL', `missing: ${missing.join(', ')}`, 'run: forkd setup --yes')
      : check(
          'host tools',
          'PASS',
          REQUIREMENTS.filter((r) => r.pkg !== 'qemu-system-x86')
            .map((r) => r.pkg)
            .join(', '),
        ),
  );

  out.push(
    img
      ? check(
          'guest image',
          'PASS',
          listImages()
            .map((i) => `${i.recipe} (kernel ${i.kernel.release}, rootfs ${i.rootfs.key.slice(0, 12)})`)
            .join('; '),
        )
      : check(
          'guest image',
          'WARN',
          'no guest image built yet',
          'run: forkd parent build --recipe python-numpy',
        ),
  );

  // Storage.
  const snaps = snapshotsDir();
  let count = 0;
  try {
    count = fs.readdirSync(snaps).filter((n) => !n.startsWith('.')).length;
    out.push(check('snapshot dir', 'PASS', `${snaps} (${count} snapshot${count === 1 ? '' : 's'})`));
  } catch {
    out.push(check('snapshot dir', 'PASS', `${snaps} (created on first snapshot)`));
  }
  const free = freeBytes(snaps);
  out.push(
    free >= 5 * GiB
      ? check('snapshot dir space', 'PASS', `${bytes(free)} free`)
      : free >= GiB
        ? check(
            'snapshot dir space',
            'WARN',
            `${bytes(free)} free`,
            'each snapshot needs its guest RAM size on disk; free space or move XDG_DATA_HOME',
          )
        : check(
            'snapshot dir space',
            'FAIL',
            `${bytes(free)} free`,
            'free at least 1 GiB, or set XDG_DATA_HOME to a larger disk',
          ),
  );
  const runFree = freeBytes(runDir());
  out.push(
    runFree >= GiB
      ? check('work dir space', 'PASS', `${runDir()}: ${bytes(runFree)} free`)
      : check(
          'work dir space',
          'WARN',
          `${runDir()}: ${bytes(runFree)} free`,
          'child overlays live here; set FORKD_RUN_DIR to a larger filesystem',
        ),
  );

  // Kernel features for later branch/live modes and limits.
  const uffd = fs.existsSync('/proc/sys/vm/unprivileged_userfaultfd');
  out.push(
    uffd
      ? check(
          'userfaultfd',
          'PASS',
          `kernel has userfaultfd${fs.existsSync('/dev/userfaultfd') ? ' (+ /dev/userfaultfd)' : ''}; unprivileged=${fs.readFileSync('/proc/sys/vm/unprivileged_userfaultfd', 'utf8').trim()}`,
        )
      : check(
          'userfaultfd',
          'WARN',
          'kernel built without userfaultfd',
          'live branch (background snapshot) needs CONFIG_USERFAULTFD',
        ),
  );
  out.push(await memfdCheck());
  out.push(cgroupCheck());
  const tun = fs.existsSync('/dev/net/tun');
  const ip = commandExists('ip');
  out.push(
    tun && ip
      ? check('netns/tun', 'PASS', '/dev/net/tun present, iproute2 installed')
      : check(
          'netns/tun',
          'WARN',
          `${tun ? '' : '/dev/net/tun missing '}${ip ? '' : 'ip (iproute2) missing'}`.trim(),
          tun ? 'run: forkd setup --yes' : 'load the tun module: modprobe tun',
        ),
  );
  const avail = (memAvailableMib() ?? 0) * 1048576;
  out.push(
    avail >= 2 * GiB
      ? check('memory', 'PASS', `${bytes(avail)} available, ${os.cpus().length} CPUs`)
      : check('memory', 'WARN', `${bytes(avail)} available`, 'each child needs ~20-80 MiB private memory'),
  );
  return out;
}

function cgroupCheck(): Check {
  try {
    const ctrls = fs.readFileSync('/sys/fs/cgroup/cgroup.controllers', 'utf8');
    if (ctrls.split(/\s+/).includes('memory'))
      return check('cgroup memory', 'PASS', 'cgroup v2 with the memory controller');
  } catch {
    /* not a v2 root */
  }
  if (fs.existsSync('/sys/fs/cgroup/memory/memory.limit_in_bytes'))
    return check(
      'cgroup memory',
      'PASS',
      'cgroup v1 memory controller at /sys/fs/cgroup/memory (used for per-sandbox limits)',
    );
  return check(
    'cgroup memory',
    'WARN',
    'no cgroup memory controller (v2 or v1)',
    'per-sandbox memory limits need the memory cgroup: boot with cgroup_enable=memory',
  );
}

/** memfd: ask QEMU to create a memfd memory backend and quit. */
function memfdCheck(): Promise<Check> {
  if (!commandExists(qemuBinary()))
    return Promise.resolve(check('memfd', 'SKIP', 'needs QEMU to probe', 'run: forkd setup --yes'));
  return new Promise((resolve) => {
    const p = spawn(
      qemuBinary(),
      [
        '-machine',
        'none',
        '-nodefaults',
        '-display',
        'none',
        '-object',
        'memory-backend-memfd,id=m,size=4M',
        '-qmp',
        'stdio',
        '-S',
      ],
      {
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
    let err = '';
    p.stderr.on('data', (d) => (err += d));
    const t = setTimeout(() => p.kill('SIGKILL'), 5000);
    p.on('error', (e) => resolve(check('memfd', 'WARN', e.message)));
    p.on('close', (code) => {
      clearTimeout(t);
      resolve(
        code === 0
          ? check('memfd', 'PASS', 'memfd_create works (QEMU memory-backend-memfd)')
          : check(
              'memfd',
              'WARN',
              `memfd backend failed: ${err.trim() || `exit ${code}`}`,
              'kernel needs CONFIG_MEMFD_CREATE',
            ),
      );
    });
    p.stdin.end('{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n');
  });
}

/** Whether per-sandbox egress policies can be enforced here (network/egress-rules.ts). */
function egressCheck(): Check {
  if (!commandExists('nft'))
    return check(
      'egress policy',
      'WARN',
      'nft (nftables) is missing: sandboxes with a network namespace cannot start',
      'run: forkd setup --yes (or apt-get install nftables)',
    );
  return check(
    'egress policy',
    'PASS',
    "nftables in each sandbox namespace: IPv4 address/CIDR[:port] allow and deny lists, deny-all, domain names through each sandbox's resolver; TLS SNI / HTTP Host checked for addresses opened by name; the host and other sandboxes never reachable",
  );
}

/** What confinement each QEMU gets on this host (vmm/jail.ts). */
async function jailCheck(): Promise<Check> {
  let j;
  try {
    j = await jailSupport();
  } catch (e) {
    return check('vmm jail', 'FAIL', (e as Error).message, 'unset FORKD_JAIL or run: forkd setup --yes');
  }
  if (j.mode === 'on')
    return check(
      'vmm jail',
      'PASS',
      'each QEMU: own mount/net/IPC/UTS namespaces and a root holding only its own files, own uid/gid, own cgroup, no capabilities, no_new_privs, seccomp (-sandbox spawn/elevateprivileges/resourcecontrol/obsolete=deny)' +
        (unprivilegedUserfaultfd()
          ? ''
          : '; vm.unprivileged_userfaultfd=0, so live and diff branches copy RAM with the guest stopped'),
    );
  if (j.requested === 'off')
    return check('vmm jail', 'WARN', 'FORKD_JAIL=off: QEMU runs as root, unconfined', 'unset FORKD_JAIL');
  return check(
    'vmm jail',
    'WARN',
    `QEMU runs as root, unconfined: missing ${j.missing.join(', ')}`,
    'run as root with util-linux and Debian QEMU (forkd setup --yes)',
  );
}
