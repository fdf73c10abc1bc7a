import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { run } from '../util/proc.js';
import { ForkdError } from '../util/errors.js';
import type { Reporter } from '../util/report.js';

/**
 * Packages installed with a root filesystem tree's own package manager (apt-get or apk), run chrooted
 * into it with the host's resolver: `--extra` for images, and recipe packages whose dependencies
 * debootstrap cannot order.
 */
export async function installPackages(tree: string, extras: string[], rep: Reporter): Promise<void> {
  const has = (p: string) => fs.existsSync(path.join(tree, p));
  let script: string;
  if (has('usr/bin/apt-get'))
    script = `apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ${extras.join(' ')} && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb`;
  else if (has('sbin/apk')) script = `apk add --no-cache --progress ${extras.join(' ')}`;
  else
    throw new ForkdError(
      'bad_input',
      'this image has no package manager forkd knows (apt-get or apk), so --extra cannot install into it',
      'build an image that already contains the packages, or use a Debian/Ubuntu/Alpine based image',
    );
  if (!has('bin/sh'))
    throw new ForkdError('bad_input', 'the image has no /bin/sh to run its package manager', 'drop --extra');
  rep.step(`installing ${extras.join(', ')} with the image's package manager`);
  const resolv = path.join(tree, 'etc', 'resolv.conf');
  const saved = fs.lstatSync(resolv, { throwIfNoEntry: false }) ? fs.readFileSync(resolv, 'utf8') : null;
  fs.rmSync(resolv, { force: true });
  fs.copyFileSync('/etc/resolv.conf', resolv);
  // Image layers carry no /dev (a runtime provides it); package managers need these few. Made as nodes
  // in the tree and removed after, never a bind mount of the host's /dev (a later rm -rf of the tree
  // must not reach it).
  const made = makeDevNodes(tree);
  let lines = 0;
  try {
    const r = await run('chroot', [tree, '/bin/sh', '-c', script], {
      env: {
        PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
        HOME: '/root',
        LANG: 'C.UTF-8',
      },
      onLine: () => rep.progress('installing packages', ++lines),
    });
    if (r.code !== 0)
      throw new ForkdError(
        'bad_input',
        `installing ${extras.join(', ')} failed (exit ${r.code}):\n${(r.stdout + r.stderr).trim().split('\n').slice(-10).join('\n')}`,
        "check the package names for this image's distribution",
      );
  } finally {
    for (const n of made) fs.rmSync(n, { force: true });
    fs.rmSync(resolv, { force: true });
    if (saved !== null) fs.writeFileSync(resolv, saved);
  }
}

const DEV_NODES: Array<[string, number, number]> = [
  ['null', 1, 3],
  ['zero', 1, 5],
  ['random', 1, 8],
  ['urandom', 1, 9],
];

function makeDevNodes(tree: string): string[] {
  const dev = path.join(tree, 'dev');
  const st = fs.lstatSync(dev, { throwIfNoEntry: false });
  if (st && !st.isDirectory())
    throw new ForkdError('bad_input', "the image's /dev is not a directory", 'drop --extra for this image');
  fs.mkdirSync(dev, { recursive: true, mode: 0o755 });
  const made: string[] = [];
  for (const [name, major, minor] of DEV_NODES) {
    const p = path.join(dev, name);
    if (fs.lstatSync(p, { throwIfNoEntry: false })) continue;
    const r = spawnSync('mknod', ['-m', '666', p, 'c', String(major), String(minor)], { encoding: 'utf8' });
    if (r.status !== 0)
      throw new ForkdError('host_command', `mknod ${p}: ${r.stderr.trim()}`, 'run forkd as root');
    made.push(p);
  }
  return made;
}
