import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { cacheDir } from '../util/paths.js';
import { run, runOk } from '../util/proc.js';
import { ForkdError } from '../util/errors.js';
import { freeBytes } from '../util/fs.js';
import { sha256File } from '../util/hash.js';
import type { Reporter } from '../util/report.js';
import type { Recipe } from './recipes.js';
import { installPackages } from './chroot-install.js';

export const SUITE = 'bookworm';
const ROOTFS_FORMAT = 'rootfs-v2';

export interface RootfsImage {
  key: string;
  path: string;
  sizeMib: number;
  packages: string[];
  mirror: string;
  sha256: string;
  created_at: string;
}

/** The Debian mirror: FORKD_DEBIAN_MIRROR, else the host's own apt source, else deb.debian.org. */
export function debianMirror(): string {
  if (process.env.FORKD_DEBIAN_MIRROR) return process.env.FORKD_DEBIAN_MIRROR;
  for (const f of ['/etc/apt/sources.list.d/debian.sources', '/etc/apt/sources.list']) {
    try {
      const text = fs.readFileSync(f, 'utf8');
      const m =
        /^URIs:\s*(\S+\/debian)\/?\s*$/m.exec(text) ??
        /^deb\s+(?:\[[^\]]*\]\s+)?(\S+\/debian)\/?\s/m.exec(text);
      if (m) return m[1]!;
    } catch {
      /* not present */
    }
  }
  return 'http://deb.debian.org/debian';
}

export function rootfsKey(recipe: Recipe, sizeMib: number, mirror: string): string {
  const input = JSON.stringify({
    f: ROOTFS_FORMAT,
    suite: SUITE,
    variant: 'minbase',
    packages: [...recipe.packages].sort(),
    ...(recipe.aptPackages?.length ? { apt: [...recipe.aptPackages].sort() } : {}),
    sizeMib,
    mirror,
  });
  return createHash('sha256').update(input).digest('hex');
}

export function loadRootfs(dir: string): RootfsImage | undefined {
  try {
    const meta = JSON.parse(fs.readFileSync(path.join(dir, 'rootfs.json'), 'utf8')) as RootfsImage;
    return fs.existsSync(meta.path) ? meta : undefined;
  } catch {
    return undefined;
  }
}

/**
 * debootstrap the recipe's packages into a tree, trim it, and make an ext4 image of it (mkfs.ext4 -d:
 * no loop devices or mounts needed). The image is cached by its inputs and never modified afterwards:
 * snapshots stack qcow2 layers on top of it.
 */
export async function ensureRootfs(recipe: Recipe, sizeMib: number, rep: Reporter): Promise<RootfsImage> {
  const mirror = debianMirror();
  const key = rootfsKey(recipe, sizeMib, mirror);
  const dir = path.join(cacheDir(), 'rootfs', key.slice(0, 16));
  const have = loadRootfs(dir);
  if (have) return have;
  if (process.getuid?.() !== 0)
    throw new ForkdError(
      'host_unsupported',
      'building a guest root filesystem needs root (debootstrap)',
      'run forkd as root',
    );
  const need = 1.5 * 1024 ** 3;
  if (freeBytes(cacheDir()) < need)
    throw new ForkdError(
      'out_of_space',
      `not enough free disk under ${cacheDir()} to build a root filesystem (need ~1.5 GiB)`,
      'free some space or point XDG_CACHE_HOME elsewhere',
    );
  const staging = `${dir}.staging-${process.pid}`;
  const tree = path.join(staging, 'tree');
  fs.rmSync(staging, { recursive: true, force: true });
  fs.mkdirSync(staging, { recursive: true });
  try {
    rep.step(`debootstrap ${SUITE} (${recipe.packages.join(', ')}) from ${mirror}`);
    const t0 = Date.now();
    // debootstrap prints one "I: Retrieving/Validating/Unpacking/Configuring <pkg>" line per step.
    let steps = 0;
    const r = await run(
      'debootstrap',
      ['--variant=minbase', `--include=${recipe.packages.join(',')}`, SUITE, tree, mirror],
      {
        env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
        onLine: (l) => {
          const m = /^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) /.exec(l);
          if (m) rep.progress(`debootstrap: ${m[1]!.toLowerCase()}`, ++steps);
        },
      },
    );
    if (r.code !== 0) {
      const tail = (r.stdout + r.stderr).trim().split('\n').slice(-12).join('\n');
      throw new ForkdError(
        'host_unsupported',
        `debootstrap failed (exit ${r.code}):\n${tail}`,
        'check that the Debian mirror is reachable and the package names exist (apt-cache policy NAME)',
      );
    }
    rep.info(`debootstrap done in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    if (recipe.aptPackages?.length) await installPackages(tree, recipe.aptPackages, rep);
    trimTree(tree);
    addDefaultUser(tree);
    rep.step(`making ext4 image (${sizeMib} MiB, sparse)`);
    const img = path.join(staging, 'rootfs.ext4');
    await makeExt4(tree, img, sizeMib);
    fs.rmSync(tree, { recursive: true, force: true });
    const finalPath = path.join(dir, 'rootfs.ext4');
    const meta: RootfsImage = {
      key,
      path: finalPath,
      sizeMib,
      packages: recipe.packages,
      mirror,
      sha256: await sha256File(img),
      created_at: new Date().toISOString(),
    };
    fs.chmodSync(img, 0o444);
    fs.writeFileSync(path.join(staging, 'rootfs.json'), JSON.stringify(meta, null, 2));
    fs.rmSync(dir, { recursive: true, force: true });
    fs.renameSync(staging, dir);
    rep.ok(`root filesystem ${key.slice(0, 16)} (${sizeMib} MiB)`);
    return meta;
  } catch (e) {
    fs.rmSync(staging, { recursive: true, force: true });
    throw e;
  }
}

/** An ext4 image of a tree (mkfs.ext4 -d keeps owners, modes, links, devices and xattrs; no mounts). */
export async function makeExt4(tree: string, out: string, sizeMib: number): Promise<void> {
  await runOk('mkfs.ext4', [
    '-q',
    '-F',
    '-L',
    'forkd-root',
    '-m',
    '0',
    '-E',
    'lazy_itable_init=0,lazy_journal_init=0',
    '-d',
    tree,
    out,
    `${sizeMib}M`,
  ]);
}

/**
 * E2B's default account: its SDKs run commands and resolve relative paths as `user` (uid 1000, home
 * /home/user, bash). Written into the tree's account files directly: nothing runs inside the tree.
 */
export function addDefaultUser(tree: string, name = 'user', id = 1000): void {
  const etc = path.join(tree, 'etc');
  const has = (file: string) =>
    fs.existsSync(file) &&
    fs
      .readFileSync(file, 'utf8')
      .split('\n')
      .some((l) => l.startsWith(`${name}:`));
  const add = (file: string, line: string, mode: number) => {
    if (has(file)) return;
    const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
    fs.writeFileSync(file, `${text}${text && !text.endsWith('\n') ? '\n' : ''}${line}\n`, { mode });
  };
  add(path.join(etc, 'passwd'), `${name}:x:${id}:${id}::/home/${name}:/bin/bash`, 0o644);
  add(path.join(etc, 'group'), `${name}:x:${id}:`, 0o644);
  add(path.join(etc, 'shadow'), `${name}:!:19000:0:99999:7:::`, 0o640);
  const home = path.join(tree, 'home', name);
  fs.mkdirSync(home, { recursive: true, mode: 0o755 });
  for (const f of ['.bashrc', '.profile']) {
    const skel = path.join(etc, 'skel', f);
    if (fs.existsSync(skel) && !fs.existsSync(path.join(home, f))) fs.copyFileSync(skel, path.join(home, f));
  }
  for (const p of [home, ...fs.readdirSync(home).map((f) => path.join(home, f))]) fs.chownSync(p, id, id);
}

/** Remove what a sandbox never needs: package caches, docs, man pages, non-English locales. */
function trimTree(tree: string): void {
  for (const rel of [
    'var/cache/apt/archives',
    'var/lib/apt/lists',
    'usr/share/doc',
    'usr/share/man',
    'usr/share/info',
  ]) {
    const p = path.join(tree, rel);
    if (!fs.existsSync(p)) continue;
    for (const e of fs.readdirSync(p)) {
      if (e === 'partial' || e === 'lock') continue;
      fs.rmSync(path.join(p, e), { recursive: true, force: true });
    }
  }
  const locales = path.join(tree, 'usr/share/locale');
  if (fs.existsSync(locales))
    for (const e of fs.readdirSync(locales))
      if (!e.startsWith('en')) fs.rmSync(path.join(locales, e), { recursive: true, force: true });
}
