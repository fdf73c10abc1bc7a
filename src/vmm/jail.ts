import fs from 'node:fs';
import path from 'node:path';
import { randomInt } from 'node:crypto';
import { ForkdError } from '../util/errors.js';
import { commandExists, pidStartTime, run, sameProcessAlive } from '../util/proc.js';
import { spawnSync } from 'node:child_process';
import { detectMemoryCgroup, makeCgroup, removeCgroup } from '../host/cgroup.js';
import { shellQuote } from './qemu-argv.js';

/**
 * The VMM jail (after Firecracker's jailer). Each QEMU is started by a short shell script as root that
 *   - enters new mount, network, IPC and UTS namespaces (`unshare`); the network namespace is empty
 *     but for a tap the script creates in it, owned by the VMM's uid, which the daemon later moves
 *     into the sandbox's own namespace (the open tap keeps working);
 *   - chroots into a root of its own holding only: /usr read-only (the binary and its libraries), the
 *     device nodes this VMM needs, and bind mounts of its own files at their host paths (its `vm/` dir,
 *     disk overlay, RAM file; the read-only disk layers below them), so no argument changes;
 *   - moves itself into the VMM's own cgroup (`forkd/<name>`);
 *   - execs QEMU through `setpriv` as a uid/gid of its own (leased, never shared by two live
 *     VMMs), with no capabilities (bounding set cleared) and no_new_privs;
 * and QEMU itself adds its seccomp filter (-sandbox, SECCOMP_ARGS). Every step is an `exec`, so the
 * QEMU's pid is the one the daemon spawned.
 *
 * QEMU 7.2 opens a RAM file O_RDWR even to map it MAP_PRIVATE (8.2 falls back to read-only), so a
 * child needs write permission on its snapshot's memory image: images are mode 0660, group VM_GROUP,
 * which every jailed VMM has as a supplementary group. Only the images in a VMM's own mount namespace
 * can be opened at all.
 */
export const JAIL_UID_BASE = 0x3000_0000;
export const JAIL_UID_COUNT = 65536;
/** The group of files every jailed VMM may open read-write (memory images, see above). */
export const VM_GROUP = JAIL_UID_BASE - 1;

export const SECCOMP_ARGS = [
  '-sandbox',
  'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny',
];

export function jailStateDir(): string {
  return process.env.FORKD_JAIL_DIR || '/run/forkd-jail';
}

export type JailMode = 'on' | 'off';

export interface JailSupport {
  /** Whether VMMs are jailed here (FORKD_JAIL=off turns it off; =on makes a missing part an error). */
  mode: JailMode;
  /** What is missing, when not on. */
  missing: string[];
  requested: 'auto' | 'on' | 'off';
}

let cachedSupport: JailSupport | undefined;

/** What confinement this host allows; decided once per process. */
export async function jailSupport(): Promise<JailSupport> {
  if (cachedSupport) return cachedSupport;
  const raw = (process.env.FORKD_JAIL ?? 'auto').toLowerCase();
  if (!['auto', 'on', 'off'].includes(raw))
    throw new ForkdError(
      'bad_input',
      `FORKD_JAIL must be auto, on or off (got '${process.env.FORKD_JAIL}')`,
      'unset it (auto: jail every VMM where the host allows it)',
    );
  const requested = raw as JailSupport['requested'];
  const missing: string[] = [];
  if (requested !== 'off') {
    if (process.getuid?.() !== 0) missing.push('root (to create namespaces and drop to a VMM uid)');
    for (const cmd of ['unshare', 'setpriv', 'chroot', 'mount', 'mknod'])
      if (!commandExists(cmd)) missing.push(`${cmd} (util-linux / coreutils)`);
    if (!fs.existsSync('/usr/bin/setpriv')) missing.push('/usr/bin/setpriv');
    if (!(await qemuHasSeccomp())) missing.push('QEMU built with seccomp (-sandbox)');
    if (!detectMemoryCgroup()) missing.push('a cgroup memory controller');
  }
  const mode: JailMode = requested === 'off' || missing.length > 0 ? 'off' : 'on';
  if (requested === 'on' && missing.length)
    throw new ForkdError(
      'host_unsupported',
      `FORKD_JAIL=on, but this host cannot jail QEMU: missing ${missing.join(', ')}`,
      'run: forkd doctor (and forkd setup --yes), or unset FORKD_JAIL',
    );
  cachedSupport = { mode, missing, requested };
  return cachedSupport;
}

export async function jailEnabled(): Promise<boolean> {
  return (await jailSupport()).mode === 'on';
}

async function qemuHasSeccomp(): Promise<boolean> {
  // Option parsing stops at -version, after -sandbox was checked: a build without seccomp fails here.
  const bin = process.env.FORKD_QEMU || 'qemu-system-x86_64';
  const r = await run(bin, [...SECCOMP_ARGS, '-version']).catch(() => undefined);
  return Boolean(r && r.code === 0);
}

/** A VMM uid held from before its QEMU starts until it exits; the lease file is its record. */
export interface UidLease {
  uid: number;
  file: string;
}

interface LeaseRecord {
  owner: number;
  owner_start?: number | undefined;
  qemu?: number | undefined;
  qemu_start?: number | undefined;
}

function leaseDir(): string {
  return path.join(jailStateDir(), 'uids');
}

/**
 * A uid no live VMM on this host has (any daemon or one-shot fork): leases are files made with O_EXCL,
 * and one whose QEMU (or, before it started, whose owner) is gone is taken over.
 */
export function leaseUid(): UidLease {
  const dir = leaseDir();
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const start = randomInt(JAIL_UID_COUNT);
  const rec: LeaseRecord = { owner: process.pid, owner_start: pidStartTime(process.pid) };
  for (let k = 0; k < JAIL_UID_COUNT; k++) {
    const uid = JAIL_UID_BASE + ((start + k) % JAIL_UID_COUNT);
    const file = path.join(dir, String(uid));
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        fs.writeFileSync(file, JSON.stringify(rec), { flag: 'wx', mode: 0o600 });
        return { uid, file };
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
        if (!leaseIsStale(file)) break;
        fs.rmSync(file, { force: true });
      }
    }
  }
  throw new ForkdError('out_of_space', `all ${JAIL_UID_COUNT} VMM uids are leased`, 'stop some sandboxes');
}

function leaseIsStale(file: string): boolean {
  let r: LeaseRecord;
  try {
    r = JSON.parse(fs.readFileSync(file, 'utf8')) as LeaseRecord;
  } catch {
    return true; // unreadable or half-written by a process that died
  }
  if (typeof r.qemu === 'number') return !sameProcessAlive({ pid: r.qemu, start: r.qemu_start });
  return typeof r.owner !== 'number' || !sameProcessAlive({ pid: r.owner, start: r.owner_start });
}

/** The lease now follows the QEMU process (it outlives a daemon restart with it). */
export function bindLease(lease: UidLease, qemuPid: number): void {
  const rec: LeaseRecord = { owner: process.pid, qemu: qemuPid, qemu_start: pidStartTime(qemuPid) };
  fs.writeFileSync(lease.file, JSON.stringify(rec), { mode: 0o600 });
}

export function releaseLease(lease: UidLease): void {
  fs.rmSync(lease.file, { force: true });
}

/**
 * Whether an unprivileged process may use userfaultfd for kernel faults, which QEMU 7.2's
 * background-snapshot (live and diff branches) needs. Debian's default is no
 * (vm.unprivileged_userfaultfd=0); kernels before 5.2 have no such switch and allow it.
 */
export function unprivilegedUserfaultfd(): boolean {
  try {
    return fs.readFileSync('/proc/sys/vm/unprivileged_userfaultfd', 'utf8').trim() === '1';
  } catch {
    return true;
  }
}

/** Where each jailed VMM writes: sockets, console log, the overlays QEMU itself creates. */
export function vmDir(workDir: string): string {
  return path.join(workDir, 'vm');
}

export interface JailSpec {
  lease: UidLease;
  /** The cgroup leaf (forkd/<name>), one per VMM. */
  name: string;
  /** Its own dir (`vm/`), made and owned by its uid. */
  vmDir: string;
  /** Files it opens read-write, made by the daemon: given to its uid for its lifetime. */
  writable: string[];
  /** Files or dirs it only reads (kernel, firmware, the disk layers below its overlay). */
  readable: string[];
  /** Files it opens read-write but does not own (the snapshot's memory image of a child). */
  shared: string[];
  kvm: boolean;
  /** A tap for its NIC, created in its own network namespace. */
  tap?: string | undefined;
}

/** What a started jail holds; freed by `releaseJail` once its QEMU is gone. */
export interface JailRecord {
  uid: number;
  /** Its root dir on the host (mount points only; the mounts live in its own namespace). */
  root?: string | undefined;
  lease: string;
  cgroup: string | undefined;
  /** Files given to the VMM's uid, returned to root on release. */
  given: string[];
}

/**
 * Prepare the host side (ownership, the VMM's dir, its cgroup) and return the command that starts QEMU
 * jailed. `qemu` and `argv` are QEMU's own; the QEMU binary must be under /usr.
 */
export function jailCommand(
  spec: JailSpec,
  qemu: string,
  argv: string[],
): { cmd: string; args: string[]; record: JailRecord } {
  const uid = spec.lease.uid;
  fs.mkdirSync(spec.vmDir, { recursive: true, mode: 0o700 });
  fs.chownSync(spec.vmDir, uid, uid);
  fs.chmodSync(spec.vmDir, 0o700);
  for (const f of spec.writable) {
    if (!fs.existsSync(f)) fs.writeFileSync(f, '', { mode: 0o600 });
    fs.chownSync(f, uid, uid);
  }
  for (const f of spec.shared) shareWithVmms(f);
  const cg = detectMemoryCgroup();
  const cgroup = cg ? makeCgroup(cg, spec.name) : undefined;
  const record: JailRecord = { uid, lease: spec.lease.file, cgroup, given: [...spec.writable] };
  const root = path.join(jailStateDir(), 'roots', String(uid));
  const binary = resolveBinary(qemu);
  const binds: Bind[] = [
    { src: '/usr', ro: true },
    ...deviceNodes(spec.kvm, spec.tap !== undefined),
    { src: spec.vmDir, ro: false },
    ...spec.writable.map((src) => ({ src, ro: false })),
    ...spec.shared.map((src) => ({ src, ro: false })),
    ...unique(spec.readable)
      .filter((p) => !isUnderUsr(p))
      .map((src) => ({ src, ro: true })),
  ];
  const fstab = buildRoot(root, binds);
  record.root = root;
  const q = shellQuote;
  // One `mount` for every bind (its own fstab), so a jail costs a handful of execs, not one per file.
  const lines = [
    'set -e',
    `mount -a -T ${q(fstab)}`,
    ...(cgroup ? [`echo $$ > ${q(path.join(cgroup, 'cgroup.procs'))}`] : []),
    ...(spec.tap ? [`ip tuntap add dev ${q(spec.tap)} mode tap vnet_hdr user ${uid} group ${uid}`] : []),
    `exec chroot ${q(root)} /usr/bin/setpriv --reuid=${uid} --regid=${uid} --groups=${VM_GROUP} ` +
      `--inh-caps=-all --bounding-set=-all --no-new-privs -- ${q(binary)} "$@"`,
  ];
  return {
    cmd: 'unshare',
    args: [
      '--mount',
      '--propagation',
      'private',
      '--net',
      '--ipc',
      '--uts',
      '--',
      'sh',
      '-c',
      lines.join('\n'),
      'forkd-jail',
      ...SECCOMP_ARGS,
      ...argv,
    ],
    record,
  };
}

/** Free what a jail held on the host; its QEMU must have exited. Idempotent. */
export async function releaseJail(rec: JailRecord): Promise<void> {
  for (const f of rec.given) {
    try {
      fs.chownSync(f, 0, 0);
    } catch {
      /* removed with its dir already */
    }
  }
  if (rec.cgroup) await removeCgroup(rec.cgroup);
  if (rec.root) {
    fs.rmSync(rec.root, { recursive: true, force: true });
    fs.rmSync(`${rec.root}.fstab`, { force: true });
  }
  fs.rmSync(rec.lease, { force: true });
}

export const JAIL_RECORD = 'jail.json';

/** Persisted next to the VMM's work dir, so a crash or adoption still frees it. */
export function writeJailRecord(workDir: string, rec: JailRecord): void {
  fs.writeFileSync(path.join(workDir, JAIL_RECORD), JSON.stringify(rec));
}

export function readJailRecord(workDir: string): JailRecord | undefined {
  try {
    const r = JSON.parse(fs.readFileSync(path.join(workDir, JAIL_RECORD), 'utf8')) as JailRecord;
    if (typeof r.uid !== 'number' || typeof r.lease !== 'string' || !Array.isArray(r.given)) return undefined;
    // The record is the daemon's own (root-owned, outside vm/), but check its shape before acting on it.
    const lease = path.join(leaseDir(), String(r.uid));
    const cg = detectMemoryCgroup();
    const root = path.join(jailStateDir(), 'roots', String(r.uid));
    return {
      uid: r.uid,
      root,
      lease,
      cgroup: typeof r.cgroup === 'string' && cg && path.dirname(r.cgroup) === cg.root ? r.cgroup : undefined,
      given: r.given.filter((f): f is string => typeof f === 'string' && path.isAbsolute(f)),
    };
  } catch {
    return undefined;
  }
}

/** Memory images: root's, group VM_GROUP, 0660 (QEMU 7.2 needs O_RDWR for a MAP_PRIVATE map). */
export function shareWithVmms(file: string): void {
  const st = fs.statSync(file);
  if (st.uid !== 0 || st.gid !== VM_GROUP) fs.chownSync(file, 0, VM_GROUP);
  if ((st.mode & 0o777) !== 0o660) fs.chmodSync(file, 0o660);
}

/**
 * The VMM's root on the host (a plain root-owned dir under the jail state dir): mount points for its
 * binds at their host paths, /usr's links, the loader cache; and the fstab that mounts the binds
 * (bind, and read-only where asked) in the VMM's own mount namespace only.
 */
function buildRoot(root: string, binds: Bind[]): string {
  fs.rmSync(root, { recursive: true, force: true });
  fs.mkdirSync(root, { recursive: true, mode: 0o755 });
  fs.chmodSync(path.dirname(root), 0o700);
  for (const n of ['bin', 'lib', 'lib64', 'sbin']) {
    try {
      if (fs.lstatSync(`/${n}`).isSymbolicLink())
        fs.symlinkSync(fs.readlinkSync(`/${n}`), path.join(root, n));
    } catch {
      /* not on this host */
    }
  }
  fs.mkdirSync(path.join(root, 'etc'));
  if (fs.existsSync('/etc/ld.so.cache'))
    fs.copyFileSync('/etc/ld.so.cache', path.join(root, 'etc', 'ld.so.cache'));
  const lines: string[] = [];
  for (const b of binds) {
    const target = path.join(root, b.dst ?? b.src);
    if (fs.statSync(b.src).isDirectory()) fs.mkdirSync(target, { recursive: true });
    else {
      fs.mkdirSync(path.dirname(target), { recursive: true });
      fs.writeFileSync(target, '');
    }
    lines.push(`${fstabField(b.src)} ${fstabField(target)} none ${b.ro ? 'bind,ro' : 'bind'} 0 0`);
  }
  const fstab = `${root}.fstab`;
  fs.writeFileSync(fstab, lines.join('\n') + '\n', { mode: 0o600 });
  return fstab;
}

/** fstab escapes whitespace and backslashes as octal. */
function fstabField(p: string): string {
  return p.replace(/[\s\\]/g, (c) => `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`);
}

/**
 * Device nodes for jails, made once: null, urandom, and kvm / net/tun where a VMM needs them, mode
 * 0666, in a root-only dir on devtmpfs (a filesystem that allows device nodes; /run is nodev). A
 * jail bind-mounts each node it needs at its /dev path.
 */
interface Bind {
  src: string;
  ro: boolean;
  /** Where in the jail, when not at its own path (device nodes). */
  dst?: string;
}

function deviceDirRoot(): string {
  return process.env.FORKD_JAIL_DEV_DIR || '/dev/forkd-jail';
}

function deviceNodes(kvm: boolean, tun: boolean): Bind[] {
  const dir = deviceDir(kvm, tun);
  return ['null', 'urandom', ...(kvm ? ['kvm'] : []), ...(tun ? ['net/tun'] : [])].map((n) => ({
    src: path.join(dir, n),
    ro: false,
    dst: `/dev/${n}`,
  }));
}

function deviceDir(kvm: boolean, tun: boolean): string {
  const dir = path.join(deviceDirRoot(), `${kvm ? 'kvm' : 'nokvm'}-${tun ? 'tun' : 'notun'}`);
  if (fs.existsSync(path.join(dir, '.ready'))) return dir;
  fs.mkdirSync(deviceDirRoot(), { recursive: true, mode: 0o700 });
  fs.chmodSync(deviceDirRoot(), 0o700);
  fs.mkdirSync(path.join(dir, 'net'), { recursive: true, mode: 0o755 });
  const nodes = ['/dev/null', '/dev/urandom', ...(kvm ? ['/dev/kvm'] : []), ...(tun ? ['/dev/net/tun'] : [])];
  for (const p of nodes) {
    const rdev = fs.statSync(p).rdev;
    // Linux's new_encode_dev: minor bits 0-7 and 20-31, major bits 8-19.
    const major = (rdev >> 8) & 0xfff;
    const minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    const node = path.join(dir, p.slice('/dev/'.length));
    fs.rmSync(node, { force: true });
    const r = spawnSync('mknod', ['-m', '0666', node, 'c', String(major), String(minor)], {
      encoding: 'utf8',
    });
    if (r.status !== 0)
      throw new ForkdError(
        'host_unsupported',
        `cannot make the jail's device node ${node}: ${r.stderr}`,
        'forkd needs root',
      );
  }
  fs.writeFileSync(path.join(dir, '.ready'), '');
  return dir;
}

function resolveBinary(cmd: string): string {
  const abs = cmd.includes('/')
    ? path.resolve(cmd)
    : (process.env.PATH ?? '/usr/bin')
        .split(':')
        .map((d) => path.join(d, cmd))
        .find((p) => fs.existsSync(p));
  if (!abs) throw new ForkdError('host_unsupported', `${cmd} is not on PATH`, 'run: forkd setup --yes');
  const real = fs.realpathSync(abs);
  if (!isUnderUsr(real))
    throw new ForkdError(
      'host_unsupported',
      `the jailed VMM must be a binary under /usr (got ${real})`,
      'install QEMU from Debian (forkd setup --yes) or set FORKD_JAIL=off',
    );
  return real;
}

function isUnderUsr(p: string): boolean {
  return p === '/usr' || p.startsWith('/usr/');
}

function unique(xs: string[]): string[] {
  return [...new Set(xs)];
}

/**
 * The disk layers below an overlay, read from the qcow2 headers (backing file name at offset 8/16),
 * each resolved like QEMU does (relative to the file that names it). Raw layers end the chain.
 */
export function backingChain(file: string): string[] {
  const out: string[] = [];
  let cur = file;
  for (let depth = 0; depth < 64; depth++) {
    const fd = fs.openSync(cur, 'r');
    let next: string | undefined;
    try {
      const head = Buffer.alloc(20);
      fs.readSync(fd, head, 0, 20, 0);
      if (head.readUInt32BE(0) !== 0x514649fb) break; // not qcow2: a raw layer
      const off = Number(head.readBigUInt64BE(8));
      const len = head.readUInt32BE(16);
      if (off === 0 || len === 0 || len > 4096) break;
      const name = Buffer.alloc(len);
      fs.readSync(fd, name, 0, len, off);
      next = path.resolve(path.dirname(cur), name.toString('utf8'));
    } finally {
      fs.closeSync(fd);
    }
    if (!next) break;
    out.push(next);
    cur = next;
  }
  return out;
}
