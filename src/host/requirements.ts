import fs from 'node:fs';
import { commandExists, run } from '../util/proc.js';

/** What forkd needs on the host, as Debian packages and the files that prove each is installed. */
export interface Requirement {
  pkg: string;
  why: string;
  /** A command on PATH, or an absolute file path, that the package provides. */
  provides: string;
}

export const REQUIREMENTS: Requirement[] = [
  { pkg: 'qemu-system-x86', why: 'the VMM (microvm machine, QMP)', provides: 'qemu-system-x86_64' },
  { pkg: 'qemu-utils', why: 'qcow2 overlays (qemu-img)', provides: 'qemu-img' },
  { pkg: 'debootstrap', why: 'building the guest root filesystem', provides: 'debootstrap' },
  { pkg: 'e2fsprogs', why: 'ext4 images (mkfs.ext4 -d)', provides: 'mkfs.ext4' },
  { pkg: 'busybox-static', why: 'the guest initramfs', provides: '/bin/busybox' },
  { pkg: 'cpio', why: 'packing the initramfs', provides: 'cpio' },
  { pkg: 'kmod', why: 'resolving guest kernel module dependencies (depmod)', provides: 'depmod' },
  { pkg: 'xz-utils', why: 'decompressing the guest kernel', provides: 'xz' },
  { pkg: 'zstd', why: 'snapshot packs, zstd image layers', provides: 'zstd' },
  { pkg: 'attr', why: 'file capabilities from image layers (setfattr)', provides: 'setfattr' },
  { pkg: 'iproute2', why: 'network namespaces and taps', provides: 'ip' },
  {
    pkg: 'socat',
    why: 'writing migration streams (snapshots, branches) from a QEMU that may not spawn',
    provides: 'socat',
  },
  { pkg: 'iptables', why: 'NAT for per-sandbox network namespaces', provides: 'iptables' },
  { pkg: 'nftables', why: 'egress policies in per-sandbox network namespaces', provides: 'nft' },
  {
    pkg: 'util-linux',
    why: 'punching zero pages out of memory files (fallocate --dig-holes)',
    provides: 'fallocate',
  },
];

export function isProvided(r: Requirement): boolean {
  if (r.provides.startsWith('/')) return fs.existsSync(r.provides);
  return commandExists(r.provides);
}

/** busybox must be the static build: the initramfs has no libc. */
export async function busyboxIsStatic(): Promise<boolean> {
  if (!fs.existsSync('/bin/busybox')) return false;
  const r = await run('dpkg-query', ['-W', '-f=${Status}', 'busybox-static']).catch(() => undefined);
  return Boolean(r && r.stdout.includes('install ok installed'));
}

export async function missingPackages(): Promise<Requirement[]> {
  const out = REQUIREMENTS.filter((r) => !isProvided(r));
  if (!out.some((r) => r.pkg === 'busybox-static') && !(await busyboxIsStatic()))
    out.push(REQUIREMENTS.find((r) => r.pkg === 'busybox-static')!);
  return out;
}
