import fs from 'node:fs';
import path from 'node:path';

/** Free bytes available to us on the filesystem holding `p` (or its nearest existing ancestor). */
export function freeBytes(p: string): number {
  let dir = p;
  while (!fs.existsSync(dir)) {
    const up = path.dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  const s = fs.statfsSync(dir);
  return Number(s.bavail) * Number(s.bsize);
}

/** Bytes allocated on disk (sparse-aware) under a file or directory. */
export function diskUsage(p: string): number {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(p);
  } catch {
    return 0;
  }
  if (st.isDirectory()) {
    let total = 0;
    for (const e of fs.readdirSync(p)) total += diskUsage(path.join(p, e));
    return total;
  }
  return st.blocks * 512;
}

/** Allocated bytes under several dirs, each inode counted once (hard links shared between them). */
export function uniqueDiskUsage(dirs: string[]): number {
  const seen = new Set<string>();
  let total = 0;
  const walk = (p: string) => {
    let st: fs.Stats;
    try {
      st = fs.lstatSync(p);
    } catch {
      return;
    }
    const key = `${st.dev}:${st.ino}`;
    if (seen.has(key)) return;
    seen.add(key);
    if (st.isDirectory()) for (const e of fs.readdirSync(p)) walk(path.join(p, e));
    else total += st.blocks * 512;
  };
  for (const d of dirs) walk(d);
  return total;
}

/** Hard-link `src` to `dst`, falling back to a copy when they are on different filesystems. */
export function linkOrCopy(src: string, dst: string): 'link' | 'copy' {
  try {
    fs.linkSync(src, dst);
    return 'link';
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'EXDEV' && code !== 'EPERM' && code !== 'EMLINK') throw e;
    fs.copyFileSync(src, dst);
    return 'copy';
  }
}

/** The names in a directory, or none when it does not exist (yet) or cannot be read. */
export function listDir(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch {
    return [];
  }
}

export function readJson<T = unknown>(file: string): T {
  return JSON.parse(fs.readFileSync(file, 'utf8')) as T;
}

/** Write a file so that a crash leaves either the old content or the new, never a torn one. */
export function writeFileDurable(file: string, data: string, mode = 0o644): void {
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w', mode);
  try {
    fs.writeSync(fd, data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
}
