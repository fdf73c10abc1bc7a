import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { ForkdError } from '../util/errors.js';
import { GUEST_RUNTIME_DIR } from '../protocol/agent-api.js';

/**
 * The agent's own runtime, put into image root filesystems at RUNTIME_DIR: this host's Node binary, the
 * shared libraries it links (its ldd closure) and their dynamic loader. The guest init starts the agent
 * as `ld.so --library-path lib node`, so it runs the same on Debian, Alpine (musl), distroless or a
 * busybox-only image, and never uses or changes the image's own libraries: the library path applies to
 * the agent alone, not to the commands it runs.
 */
export const RUNTIME_DIR = GUEST_RUNTIME_DIR.slice(1);

export interface RuntimeFile {
  /** Path under RUNTIME_DIR. */
  dest: string;
  src: string;
}

export function runtimeFiles(nodeBin = process.execPath): RuntimeFile[] {
  const r = spawnSync('ldd', [nodeBin], { encoding: 'utf8' });
  if (r.status !== 0)
    throw new ForkdError('host_unsupported', `ldd ${nodeBin} failed: ${r.stderr.trim()}`, 'install libc-bin');
  const files: RuntimeFile[] = [{ dest: 'node', src: nodeBin }];
  let loader: string | undefined;
  for (const line of r.stdout.split('\n')) {
    const lib = /^\s*(\S+) => (\/\S+) \(/.exec(line);
    if (lib) {
      files.push({ dest: `lib/${lib[1]}`, src: fs.realpathSync(lib[2]!) });
      continue;
    }
    const ld = /^\s*(\/\S*ld-linux\S*) \(/.exec(line);
    if (ld) loader = fs.realpathSync(ld[1]!);
  }
  if (!loader)
    throw new ForkdError(
      'host_unsupported',
      `${nodeBin} is not a dynamically linked glibc program (no loader in ldd's output)`,
      'run forkd with a glibc build of Node 20 (Debian/Ubuntu or nodejs.org)',
    );
  files.push({ dest: 'ld.so', src: loader });
  return files;
}

/**
 * Key of the runtime: a different host Node (or library) rebuilds image root filesystems. Each file
 * counts by identity (inode, size, mtime), not content: this runs on every `from-image` and `run`, and
 * hashing ~100 MiB of Node each time would be most of a cached build; an upgrade replaces the files.
 */
export function runtimeKey(files = runtimeFiles()): string {
  const h = createHash('sha256');
  for (const f of files) {
    const st = fs.statSync(f.src);
    h.update(`${f.dest}\0${f.src}\0${st.ino}\0${st.size}\0${st.mtimeMs}\0`);
  }
  return h.digest('hex');
}

/** Copy the runtime into a root filesystem tree (root-owned, read-only to everyone else). */
export function installRuntime(tree: string, files = runtimeFiles()): number {
  const dir = path.join(tree, RUNTIME_DIR);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(path.join(dir, 'lib'), { recursive: true, mode: 0o755 });
  let bytes = 0;
  for (const f of files) {
    const dst = path.join(dir, f.dest);
    fs.copyFileSync(f.src, dst);
    fs.chmodSync(dst, 0o755);
    bytes += fs.statSync(dst).size;
  }
  return bytes;
}
