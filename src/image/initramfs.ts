import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { spawn, spawnSync } from 'node:child_process';
import { pipeline } from 'node:stream/promises';
import { createHash } from 'node:crypto';
import { cacheDir } from '../util/paths.js';
import { projectRoot } from '../util/project.js';
import { ForkdError } from '../util/errors.js';
import type { Reporter } from '../util/report.js';
import type { GuestKernel } from './kernel.js';
import { agentFiles, hashFiles } from './agent-files.js';

export const BUSYBOX = '/bin/busybox';

export function initScript(): string {
  return path.join(projectRoot(), 'src', 'guest', 'init', 'initramfs-init.sh');
}

/**
 * The initramfs: static busybox, the kernel modules in load order, our /init, and the agent (copied to a
 * tmpfs at /opt/forkd before switch_root). Keyed by its inputs, so an agent change rebuilds only this
 * (about a second) and never the Debian root.
 */
export function initramfsKey(kernel: GuestKernel): string {
  if (!fs.existsSync(BUSYBOX))
    throw new ForkdError(
      'host_unsupported',
      `${BUSYBOX} is missing (package busybox-static)`,
      'run: forkd setup --yes',
    );
  const h = createHash('sha256');
  h.update(`initramfs-v2\0${kernel.package}\0${kernel.version}\0${kernel.modules.join(',')}\0`);
  h.update(fs.readFileSync(BUSYBOX));
  h.update(fs.readFileSync(initScript()));
  h.update(hashFiles(agentFiles()));
  return h.digest('hex');
}

export async function ensureInitramfs(
  kernel: GuestKernel,
  rep: Reporter,
): Promise<{ path: string; key: string }> {
  const key = initramfsKey(kernel);
  const out = path.join(cacheDir(), 'initramfs', `${key.slice(0, 16)}.cpio.gz`);
  if (fs.existsSync(out)) return { path: out, key };
  rep.step('building initramfs (modules + agent)');
  const stage = fs.mkdtempSync(path.join(cacheDir(), 'initramfs-stage-'));
  try {
    for (const d of ['bin', 'etc', 'lib/modules', 'forkd'])
      fs.mkdirSync(path.join(stage, d), { recursive: true });
    fs.copyFileSync(BUSYBOX, path.join(stage, 'bin', 'busybox'));
    fs.chmodSync(path.join(stage, 'bin', 'busybox'), 0o755);
    fs.copyFileSync(initScript(), path.join(stage, 'init'));
    fs.chmodSync(path.join(stage, 'init'), 0o755);
    for (const m of kernel.modules)
      fs.copyFileSync(
        path.join(kernel.dir, 'modules', `${m}.ko`),
        path.join(stage, 'lib', 'modules', `${m}.ko`),
      );
    fs.writeFileSync(path.join(stage, 'etc', 'forkd-modules'), kernel.modules.join('\n') + '\n');
    for (const f of agentFiles()) {
      const dest = path.join(stage, 'forkd', f.dest);
      fs.mkdirSync(path.dirname(dest), { recursive: true });
      fs.copyFileSync(f.src, dest);
    }
    fs.chmodSync(path.join(stage, 'forkd', 'init'), 0o755);
    // The guest init's own shell and tools, usable in any root (applets as relative symlinks).
    const bb = path.join(stage, 'forkd', 'bin');
    fs.mkdirSync(bb, { recursive: true });
    fs.copyFileSync(BUSYBOX, path.join(bb, 'busybox'));
    fs.chmodSync(path.join(bb, 'busybox'), 0o755);
    for (const applet of busyboxApplets())
      if (applet !== 'busybox') fs.symlinkSync('busybox', path.join(bb, applet));
    fs.writeFileSync(path.join(stage, 'forkd', 'package.json'), '{ "type": "module" }\n');
    fs.mkdirSync(path.dirname(out), { recursive: true });
    const tmp = `${out}.tmp-${process.pid}`;
    await cpioGzip(stage, tmp);
    fs.renameSync(tmp, out);
    rep.ok(`initramfs ${path.basename(out)} (${(fs.statSync(out).size / 1048576).toFixed(1)} MiB)`);
    return { path: out, key };
  } finally {
    fs.rmSync(stage, { recursive: true, force: true });
  }
}

function busyboxApplets(): string[] {
  const r = spawnSync(BUSYBOX, ['--list'], { encoding: 'utf8' });
  if (r.status !== 0)
    throw new ForkdError('host_unsupported', `${BUSYBOX} --list failed`, 'run: forkd setup --yes');
  return r.stdout.split('\n').filter((a) => /^[a-z0-9_.[-]+$/.test(a) && a !== '[' && a !== '[[');
}

/** newc cpio of a directory (via find | cpio), gzip-compressed in-process. */
export async function cpioGzip(dir: string, out: string): Promise<void> {
  const find = spawn('find', ['.', '-print0'], { cwd: dir, stdio: ['ignore', 'pipe', 'inherit'] });
  const cpio = spawn('cpio', ['--null', '-o', '-H', 'newc', '--quiet', '--owner', '0:0'], {
    cwd: dir,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let err = '';
  cpio.stderr.on('data', (d) => (err += d));
  const failed = new Promise<never>((_, reject) => {
    cpio.on('error', (e) =>
      reject(new ForkdError('host_unsupported', `cpio: ${e.message}`, 'run: forkd setup --yes')),
    );
  });
  find.stdout.pipe(cpio.stdin);
  const done = pipeline(cpio.stdout, zlib.createGzip({ level: 6 }), fs.createWriteStream(out));
  await Promise.race([done, failed]);
  const code = await new Promise<number | null>((r) =>
    cpio.exitCode !== null ? r(cpio.exitCode) : cpio.on('close', r),
  );
  if (code !== 0) throw new Error(`cpio failed: ${err}`);
}
