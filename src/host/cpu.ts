import fs from 'node:fs';

/**
 * The instruction-set features of this host's CPU that a KVM guest sees through `-cpu host`. A guest
 * saved on one CPU and restored on another keeps using what it found at boot (glibc, numpy and V8 pick
 * AVX2/AVX-512 code paths once), so a snapshot records these, and a host missing any is refused.
 * Only ISA features count: Linux's own synthetic flags differ between kernels on the same CPU.
 */
const ISA_FEATURE =
  /^(sse\w*|ssse3|avx\w*|fma\w*|f16c|bmi\d|adx|aes|pclmulqdq|sha_ni|rdrand|rdseed|movbe|popcnt|xsave\w*|clflushopt|clwb|vaes|vpclmulqdq|gfni|erms|fsrm|abm|pku|amx\w*|cx16|lm|pdpe1gb)$/;

export interface HostCpu {
  model: string;
  /** ISA features, sorted */
  flags: string[];
}

export function hostCpu(cpuinfo = readCpuinfo()): HostCpu {
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? 'unknown';
  const flags = (/^flags\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? '')
    .split(/\s+/)
    .filter((f) => ISA_FEATURE.test(f));
  return { model, flags: [...new Set(flags)].sort() };
}

/** Features the snapshot's CPU had that this one lacks (empty: compatible). */
export function missingCpuFeatures(saved: HostCpu, here: HostCpu = hostCpu()): string[] {
  const have = new Set(here.flags);
  return saved.flags.filter((f) => !have.has(f));
}

export function readCpuinfo(): string {
  try {
    return fs.readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    return '';
  }
}
