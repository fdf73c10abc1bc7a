import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { cacheDir } from '../util/paths.js';
import { run, runOk } from '../util/proc.js';
import { ForkdError } from '../util/errors.js';
import type { Reporter } from '../util/report.js';

/** Modules the guest needs before its root is mounted (Debian builds virtio and ext4 as modules). */
export const GUEST_MODULES = [
  'crc32c_generic',
  'virtio_mmio',
  'virtio_blk',
  'ext4',
  'virtio_console',
  'virtio_net',
];

export interface GuestKernel {
  package: string;
  version: string;
  /** uname -r of the guest kernel */
  release: string;
  dir: string;
  /** Uncompressed ELF vmlinux (booted via PVH: no in-guest decompression, works under PVM too). */
  vmlinux: string;
  /** Module files in load order (dependencies first), relative to `dir/modules`. */
  modules: string[];
}

const META = 'kernel.json';

/** The Debian kernel package behind the linux-image-amd64 metapackage, e.g. linux-image-6.1.0-56-amd64. */
export async function resolveKernelPackage(): Promise<{ pkg: string; version: string }> {
  const override = process.env.FORKD_KERNEL_PACKAGE;
  let pkg = override;
  if (!pkg) {
    const lookup = async () =>
      /Depends:\s*(linux-image-[0-9][^\s]*-amd64)/.exec(
        (await run('apt-cache', ['depends', 'linux-image-amd64'])).stdout,
      )?.[1];
    pkg = await lookup();
    if (!pkg && process.getuid?.() === 0) {
      // A fresh machine has empty package lists; refresh them once.
      await run('apt-get', ['update', '-q'], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
      pkg = await lookup();
    }
    if (!pkg)
      throw new ForkdError(
        'host_unsupported',
        'cannot find the Debian kernel package (apt-cache knows no linux-image-amd64)',
        'run: apt-get update   (the package lists are empty or stale)',
      );
  }
  const show = await run('apt-cache', ['show', '--no-all-versions', pkg]);
  const version = /^Version:\s*(\S+)/m.exec(show.stdout)?.[1];
  if (!version)
    throw new ForkdError('host_unsupported', `apt-cache has no version for ${pkg}`, 'run: apt-get update');
  return { pkg, version };
}

export function kernelDir(pkg: string, version: string): string {
  return path.join(cacheDir(), 'kernel', `${pkg}_${version.replace(/[^A-Za-z0-9.+-]/g, '_')}`);
}

export function loadKernel(dir: string): GuestKernel | undefined {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, META), 'utf8')) as GuestKernel;
  } catch {
    return undefined;
  }
}

/** Download (apt-get download, never installed on the host), extract vmlinux and the needed modules. */
export async function ensureKernel(rep: Reporter): Promise<GuestKernel> {
  const { pkg, version } = await resolveKernelPackage();
  const dir = kernelDir(pkg, version);
  const have = loadKernel(dir);
  if (have && fs.existsSync(have.vmlinux)) return have;
  rep.step(`fetching guest kernel ${pkg} ${version}`);
  const staging = `${dir}.staging-${process.pid}`;
  fs.rmSync(staging, { recursive: true, force: true });
  fs.mkdirSync(staging, { recursive: true });
  try {
    const { tree: x, release } = await fetchKernelPackage(pkg, version, staging);
    const vmlinuz = path.join(x, 'boot', `vmlinuz-${release}`);
    rep.info('decompressing vmlinuz → vmlinux');
    await extractVmlinux(vmlinuz, path.join(staging, 'vmlinux'));
    const modRoot = path.join(x, 'lib', 'modules', release);
    const order = moduleLoadOrder(fs.readFileSync(path.join(modRoot, 'modules.dep'), 'utf8'), GUEST_MODULES);
    fs.mkdirSync(path.join(staging, 'modules'));
    const modules: string[] = [];
    for (const rel of order) {
      const name = path.basename(rel).replace(/\.ko(\.xz|\.zst)?$/, '');
      fs.copyFileSync(path.join(modRoot, rel), path.join(staging, 'modules', `${name}.ko`));
      modules.push(name);
    }
    fs.copyFileSync(path.join(x, 'boot', `config-${release}`), path.join(staging, 'config'));
    fs.rmSync(x, { recursive: true, force: true });
    const meta: GuestKernel = {
      package: pkg,
      version,
      release,
      dir,
      vmlinux: path.join(dir, 'vmlinux'),
      modules,
    };
    fs.writeFileSync(path.join(staging, META), JSON.stringify(meta, null, 2));
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(path.dirname(dir), { recursive: true });
    fs.renameSync(staging, dir);
    rep.ok(`guest kernel ${release} (${modules.length} modules)`);
    return meta;
  } catch (e) {
    fs.rmSync(staging, { recursive: true, force: true });
    throw e;
  }
}

/**
 * Download a Debian kernel package (apt-get download: never installed on the host) and unpack it into
 * `<dest>/x`, with modules.dep generated (the package ships none; its postinst would make it).
 */
export async function fetchKernelPackage(
  pkg: string,
  version: string,
  dest: string,
): Promise<{ tree: string; release: string }> {
  await runOk('apt-get', ['download', `${pkg}=${version}`], { cwd: dest });
  const deb = fs.readdirSync(dest).find((f) => f.endsWith('.deb'));
  if (!deb) throw new Error('apt-get download produced no .deb');
  const tree = path.join(dest, 'x');
  await runOk('dpkg-deb', ['-x', path.join(dest, deb), tree]);
  fs.rmSync(path.join(dest, deb));
  const release = fs.readdirSync(path.join(tree, 'lib', 'modules'))[0]!;
  await runOk('depmod', ['-b', tree, release]);
  return { tree, release };
}

/**
 * Resolve modules.dep into a load order: every module after all of its dependencies.
 * Returns paths relative to the modules directory.
 */
export function moduleLoadOrder(modulesDep: string, wanted: string[]): string[] {
  const deps = new Map<string, string[]>();
  const byName = new Map<string, string>();
  for (const line of modulesDep.split('\n')) {
    const [file, rest] = line.split(':');
    if (!file || rest === undefined) continue;
    deps.set(file, rest.trim() ? rest.trim().split(/\s+/) : []);
    byName.set(modName(file), file);
  }
  const out: string[] = [];
  const seen = new Set<string>();
  const visit = (file: string, stack: string[]) => {
    if (seen.has(file)) return;
    if (stack.includes(file)) throw new Error(`module dependency cycle: ${[...stack, file].join(' → ')}`);
    for (const d of deps.get(file) ?? []) visit(d, [...stack, file]);
    seen.add(file);
    out.push(file);
  };
  for (const w of wanted) {
    const file = byName.get(w.replaceAll('-', '_'));
    if (!file) throw new Error(`kernel module ${w} is not in this kernel`);
    visit(file, []);
  }
  return out;
}

function modName(file: string): string {
  return path
    .basename(file)
    .replace(/\.ko(\.xz|\.zst|\.gz)?$/, '')
    .replaceAll('-', '_');
}

/** A bzImage carries the kernel as an xz stream; cut it out and decompress it with xz(1). */
async function extractVmlinux(vmlinuz: string, out: string): Promise<void> {
  const data = fs.readFileSync(vmlinuz);
  const magic = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);
  const at = data.indexOf(magic);
  if (at < 0) throw new Error(`${vmlinuz}: no xz payload found (unsupported kernel compression)`);
  await new Promise<void>((resolve, reject) => {
    const outFd = fs.openSync(out, 'w');
    const xz = spawn('xz', ['-dc', '--single-stream'], { stdio: ['pipe', outFd, 'pipe'] });
    let err = '';
    xz.stderr!.on('data', (d) => (err += d));
    xz.on('error', (e) =>
      reject(new ForkdError('host_unsupported', `xz: ${e.message}`, 'run: forkd setup --yes')),
    );
    xz.on('close', (code) => {
      fs.closeSync(outFd);
      if (code === 0) resolve();
      else reject(new Error(`xz failed: ${err}`));
    });
    xz.stdin!.on('error', () => {});
    xz.stdin!.end(data.subarray(at));
  });
  const head = Buffer.alloc(4);
  const fd = fs.openSync(out, 'r');
  fs.readSync(fd, head, 0, 4, 0);
  fs.closeSync(fd);
  if (!head.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46])))
    throw new Error('decompressed kernel is not an ELF vmlinux');
}
