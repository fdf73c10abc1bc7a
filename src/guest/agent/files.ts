/**
 * Filesystem routes of the guest agent: streamed read and write, list, stat, remove, mkdir.
 * Writes go to a temporary file in the same directory and are renamed into place, so a reader never
 * sees a half-written file and an interrupted upload leaves the old content.
 */
import fs from 'node:fs';
import path from 'node:path';
import http2 from 'node:http2';
import { pipeline } from 'node:stream/promises';
import type { FileEntry } from '../../protocol/agent-api.js';
import { groupName, userName, type GuestUser } from './users.js';

type Stream = http2.ServerHttp2Stream;
type Send = (stream: Stream, status: number, body: unknown) => void;

function errStatus(e: unknown): number {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOENT' || code === 'ENOTDIR') return 404;
  if (code === 'EISDIR' || code === 'ENOTEMPTY' || code === 'EEXIST' || code === 'EINVAL') return 400;
  if (code === 'EACCES' || code === 'EPERM') return 403;
  return 500;
}

function errBody(e: unknown, p: string): { error: string; code?: string } {
  const err = e as NodeJS.ErrnoException;
  return { error: `${p}: ${err.message}`, ...(err.code ? { code: err.code } : {}) };
}

export function checkPath(p: unknown): string | undefined {
  if (typeof p !== 'string' || !p.startsWith('/')) return undefined;
  if (p.includes('\0')) return undefined;
  return path.posix.normalize(p);
}

export function entry(p: string, st: fs.Stats): FileEntry {
  const e: FileEntry = {
    name: path.posix.basename(p) || '/',
    path: p,
    type: st.isDirectory() ? 'dir' : st.isFile() ? 'file' : st.isSymbolicLink() ? 'symlink' : 'other',
    size: st.size,
    mode: st.mode & 0o7777,
    mtime_ms: Math.trunc(st.mtimeMs),
    uid: st.uid,
    gid: st.gid,
    owner: userName(st.uid),
    group: groupName(st.gid),
  };
  if (st.isSymbolicLink()) {
    try {
      e.symlink_target = fs.readlinkSync(p);
    } catch {
      /* vanished meanwhile */
    }
  }
  return e;
}

/** The directories `mkdir -p dir` would create, outermost first. */
function missingDirs(dir: string): string[] {
  const out: string[] = [];
  for (let d = dir; !fs.existsSync(d); d = path.posix.dirname(d)) out.unshift(d);
  return out;
}

/** Give what a request created to `owner` (a guest account): files written as E2B's user are theirs. */
async function chownAll(paths: string[], owner: GuestUser | undefined): Promise<void> {
  if (!owner || owner.uid === 0) return;
  for (const p of paths) await fs.promises.lchown(p, owner.uid, owner.gid);
}

export async function readFileRoute(stream: Stream, p: string, send: Send): Promise<void> {
  let fh: fs.promises.FileHandle;
  try {
    fh = await fs.promises.open(p, 'r');
    const st = await fh.stat();
    if (st.isDirectory()) {
      await fh.close();
      return send(stream, 400, {
        error: `${p} is a directory; list it with GET /v1/files/list`,
        code: 'EISDIR',
      });
    }
    stream.respond({
      ':status': 200,
      'content-type': 'application/octet-stream',
      ...(st.isFile() ? { 'content-length': String(st.size) } : {}),
    });
  } catch (e) {
    return send(stream, errStatus(e), errBody(e, p));
  }
  try {
    await pipeline(fh.createReadStream(), stream);
  } catch {
    stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
  }
}

export async function writeFileRoute(
  stream: Stream,
  p: string,
  mode: number | undefined,
  owner: GuestUser | undefined,
  send: Send,
): Promise<void> {
  const dir = path.posix.dirname(p);
  const tmp = path.posix.join(
    dir,
    `.forkd-upload-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}`,
  );
  try {
    const created = missingDirs(dir);
    await fs.promises.mkdir(dir, { recursive: true });
    await chownAll(created, owner);
    await pipeline(stream, fs.createWriteStream(tmp, { mode: mode ?? 0o644 }));
    if (mode !== undefined) await fs.promises.chmod(tmp, mode);
    await chownAll([tmp], owner);
    await fs.promises.rename(tmp, p);
    const st = await fs.promises.stat(p);
    send(stream, 200, entry(p, st));
  } catch (e) {
    await fs.promises.rm(tmp, { force: true }).catch(() => {});
    send(stream, errStatus(e), errBody(e, p));
  }
}

export async function listRoute(stream: Stream, p: string, depth: number, send: Send): Promise<void> {
  const out: FileEntry[] = [];
  const walk = async (dir: string, level: number) => {
    const names = (await fs.promises.readdir(dir)).sort();
    for (const n of names) {
      const full = path.posix.join(dir, n);
      let st: fs.Stats;
      try {
        st = await fs.promises.lstat(full);
      } catch {
        continue; // vanished meanwhile
      }
      out.push(entry(full, st));
      if (st.isDirectory() && level < depth && out.length < 100_000) await walk(full, level + 1);
    }
  };
  try {
    const st = await fs.promises.stat(p);
    if (!st.isDirectory()) return send(stream, 400, { error: `${p} is not a directory`, code: 'ENOTDIR' });
    await walk(p, 1);
    send(stream, 200, { entries: out });
  } catch (e) {
    send(stream, errStatus(e), errBody(e, p));
  }
}

export async function statRoute(stream: Stream, p: string, send: Send): Promise<void> {
  try {
    send(stream, 200, entry(p, await fs.promises.lstat(p)));
  } catch (e) {
    send(stream, errStatus(e), errBody(e, p));
  }
}

export async function removeRoute(stream: Stream, p: string, recursive: boolean, send: Send): Promise<void> {
  try {
    const st = await fs.promises.lstat(p);
    if (st.isDirectory()) await fs.promises.rm(p, { recursive });
    else await fs.promises.unlink(p);
    send(stream, 200, { removed: p });
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ERR_FS_EISDIR' || err.code === 'EISDIR')
      return send(stream, 400, { error: `${p} is a directory; pass recursive: true`, code: 'EISDIR' });
    send(stream, errStatus(e), errBody(e, p));
  }
}

/** mkdir -p; the entry says whether the directory is new (`created`). */
export async function mkdirRoute(
  stream: Stream,
  p: string,
  owner: GuestUser | undefined,
  send: Send,
): Promise<void> {
  try {
    const created = missingDirs(p);
    await fs.promises.mkdir(p, { recursive: true });
    await chownAll(created, owner);
    send(stream, 200, { ...entry(p, await fs.promises.stat(p)), created: created.length > 0 });
  } catch (e) {
    send(stream, errStatus(e), errBody(e, p));
  }
}

/** rename(2), creating the destination's parent directories; answers the destination's entry. */
export async function moveRoute(
  stream: Stream,
  from: string,
  to: string,
  owner: GuestUser | undefined,
  send: Send,
): Promise<void> {
  try {
    await fs.promises.lstat(from);
    const created = missingDirs(path.posix.dirname(to));
    await fs.promises.mkdir(path.posix.dirname(to), { recursive: true });
    await chownAll(created, owner);
    await fs.promises.rename(from, to);
    send(stream, 200, entry(to, await fs.promises.lstat(to)));
  } catch (e) {
    send(stream, errStatus(e), errBody(e, from));
  }
}
