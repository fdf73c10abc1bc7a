import fs from 'node:fs';
import path from 'node:path';
import { run } from '../util/proc.js';
import { cacheDir } from '../util/paths.js';

/**
 * The host's TSC frequency, handed to TCG guests as `tsc_early_khz=`.
 *
 * Why: under TCG a guest's RDTSC returns the host's TSC, but the microvm machine has no HPET and no ACPI
 * PM timer, so the guest kernel can only calibrate its TSC against the PIT — an emulated loop that fails
 * when the host is slow or loaded ("tsc: Unable to calibrate against PIT"). The kernel then has no working
 * clock and never reaches init. Given the frequency, it skips calibration, and boots stop depending on
 * host load.
 */
export interface HostTsc {
  khz: number;
  /** Where the figure came from, for doctor and logs. */
  source: string;
}

export interface TscSources {
  sysfsKhz?: string | undefined;
  kernelLog?: string | undefined;
  cpuinfo?: string | undefined;
  hasCpufreq?: boolean;
}

const MIN_KHZ = 100_000;
const MAX_KHZ = 10_000_000;

function plausible(khz: number): boolean {
  return Number.isFinite(khz) && khz >= MIN_KHZ && khz <= MAX_KHZ;
}

/** "2700.000 MHz" → 2700000 kHz, exactly (the kernel prints kHz precision as MHz with 3 decimals). */
function mhzToKhz(s: string): number {
  const [whole, frac = ''] = s.split('.');
  return Number(whole) * 1000 + Number((frac + '000').slice(0, 3));
}

/**
 * Pick the most trustworthy figure from what the host exposes, best first: a kernel-provided sysfs value;
 * the kernel log's refined calibration, then its boot-time detection; /proc/cpuinfo's "cpu MHz" where no
 * cpufreq driver varies it (it is then the boot-time TSC figure); last, bogomips (2 × TSC MHz when the
 * delay loop runs on the TSC). Pure, so every branch is unit-tested.
 */
export function pickTsc(src: TscSources): HostTsc | undefined {
  const sysfs = Number(src.sysfsKhz?.trim());
  if (plausible(sysfs)) return { khz: sysfs, source: '/sys/devices/system/cpu/cpu0/tsc_freq_khz' };
  const log = src.kernelLog ?? '';
  const refined = /tsc: Refined TSC clocksource calibration: (\d+\.\d+) MHz/.exec(log);
  if (refined && plausible(mhzToKhz(refined[1]!)))
    return { khz: mhzToKhz(refined[1]!), source: 'kernel log (refined TSC calibration)' };
  const detected = /tsc: Detected (\d+\.\d+) MHz (?:TSC|processor)/.exec(log);
  if (detected && plausible(mhzToKhz(detected[1]!)))
    return { khz: mhzToKhz(detected[1]!), source: 'kernel log (boot-time TSC detection)' };
  const cpuinfo = src.cpuinfo ?? '';
  const flags = /^flags\s*:(.*)$/m.exec(cpuinfo)?.[1]?.split(/\s+/) ?? [];
  // Only an invariant TSC ticks at one rate whatever the core's clock does.
  if (!flags.includes('constant_tsc')) return undefined;
  const mhz = /^cpu MHz\s*:\s*(\d+\.\d+)/m.exec(cpuinfo)?.[1];
  if (mhz && !src.hasCpufreq && plausible(mhzToKhz(mhz)))
    return { khz: mhzToKhz(mhz), source: '/proc/cpuinfo (cpu MHz, no cpufreq driver)' };
  const bogo = /^bogomips\s*:\s*(\d+\.\d+)/m.exec(cpuinfo)?.[1];
  if (bogo) {
    const khz = Math.round(Number(bogo) * 500);
    if (plausible(khz)) return { khz, source: '/proc/cpuinfo (bogomips / 2)' };
  }
  return undefined;
}

function readOr(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

function cacheFile(): string {
  return path.join(cacheDir(), 'host-tsc.json');
}

let memo: { bootId: string; tsc: HostTsc | undefined } | undefined;

/**
 * The host's TSC frequency (FORKD_TSC_KHZ overrides). Cached per host boot: the kernel log that holds
 * the best figure is a ring buffer and rotates on a long-running host.
 */
export async function hostTsc(): Promise<HostTsc | undefined> {
  const forced = process.env.FORKD_TSC_KHZ;
  if (forced) {
    const khz = Number(forced);
    if (plausible(khz)) return { khz, source: 'FORKD_TSC_KHZ' };
  }
  const bootId = readOr('/proc/sys/kernel/random/boot_id')?.trim() ?? 'unknown';
  if (memo?.bootId === bootId) return memo.tsc;
  try {
    const c = JSON.parse(fs.readFileSync(cacheFile(), 'utf8')) as { bootId?: string; tsc?: HostTsc };
    if (c.bootId === bootId && c.tsc && plausible(c.tsc.khz)) {
      memo = { bootId, tsc: c.tsc };
      return c.tsc;
    }
  } catch {
    /* no cache yet */
  }
  let kernelLog: string | undefined;
  try {
    const r = await run('dmesg', []);
    if (r.code === 0) kernelLog = r.stdout;
  } catch {
    /* no dmesg, or not allowed */
  }
  const tsc = pickTsc({
    sysfsKhz: readOr('/sys/devices/system/cpu/cpu0/tsc_freq_khz'),
    kernelLog,
    cpuinfo: readOr('/proc/cpuinfo'),
    hasCpufreq: fs.existsSync('/sys/devices/system/cpu/cpu0/cpufreq'),
  });
  memo = { bootId, tsc };
  if (tsc) {
    try {
      fs.mkdirSync(path.dirname(cacheFile()), { recursive: true });
      fs.writeFileSync(cacheFile(), JSON.stringify({ bootId, tsc }));
    } catch {
      /* read-only cache: find it again next time */
    }
  }
  return tsc;
}

/** Kernel command-line words that pin the guest's TSC rate (none when the host's is unknown). */
export function tscCmdline(tsc: HostTsc | undefined): string[] {
  return tsc ? [`tsc_early_khz=${tsc.khz}`] : [];
}
