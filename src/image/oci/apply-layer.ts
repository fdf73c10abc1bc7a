import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { spawnSync } from 'node:child_process';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { ForkdError } from '../../util/errors.js';
import { hashingStream } from '../../util/hash.js';
import { zstdDecompressFrom } from '../../util/zstd.js';

const MAX_SYMLINK_HOPS = 40;

export class HostileLayer extends ForkdError {
  constructor(layer: string, entry: string, why: string) {
    super(
      'bad_input',
      `${layer}: entry '${entry}' ${why}; the image was refused and nothing of it was kept`,
      'the image is damaged or hostile: do not use it',
    );
  }
}

/**
 * Resolve `rel` (already free of `..`) inside `root` as if `root` were `/`: symlinks met on the way are
 * followed within the tree (absolute targets are rooted at `root`, as a container sees them), and one
 * that would climb above the root is refused. Missing parents are created. The last component is not
 * followed: it is what the entry itself replaces.
 */
export function resolveInRoot(
  root: string,
  rel: string,
  onEscape: (via: string) => never,
  opts: { followLast?: boolean } = {},
): string {
  const todo = rel.split('/').filter((c) => c && c !== '.');
  const last = opts.followLast ? undefined : todo.pop();
  const at: string[] = [];
  let hops = 0;
  while (todo.length) {
    const c = todo.shift()!;
    if (c === '..') {
      if (!at.length) onEscape('/..');
      at.pop();
      continue;
    }
    const p = path.join(root, ...at, c);
    const st = fs.lstatSync(p, { throwIfNoEntry: false });
    if (st?.isSymbolicLink()) {
      if (++hops > MAX_SYMLINK_HOPS) onEscape(`${[...at, c].join('/')} (a symlink loop)`);
      const target = fs.readlinkSync(p);
      const parts = target.split('/').filter((x) => x && x !== '.');
      if (target.startsWith('/')) at.length = 0;
      // A relative target that climbs above the root is hostile: a container would stop at `/`, but no
      // honest image needs that.
      let depth = at.length;
      for (const x of parts)
        if ((depth += x === '..' ? -1 : 1) < 0) onEscape(`${[...at, c].join('/')} -> ${target}`);
      todo.unshift(...parts);
      continue;
    }
    if (!st) fs.mkdirSync(p, { mode: 0o755 });
    else if (!st.isDirectory()) {
      // A file where a later entry needs a directory: the later layer wins.
      fs.rmSync(p, { force: true });
      fs.mkdirSync(p, { mode: 0o755 });
    }
    at.push(c);
  }
  return last === undefined ? path.join(root, ...at) : path.join(root, ...at, last);
}

/** Normalised entry name (no leading `./` or `/`), or a refusal when it climbs with `..`. */
function entryName(raw: string, layer: string): string {
  if (raw.includes('\0'))
    throw new HostileLayer(layer, raw.replace(/\0/g, '\\0'), 'has a NUL byte in its name');
  const parts = raw.split('/').filter((c) => c && c !== '.');
  if (parts.includes('..'))
    throw new HostileLayer(layer, raw, 'climbs out of the image with ".." (path traversal)');
  return parts.join('/');
}

/** The decompressed stream of a layer blob, told by its first bytes (registries mislabel media types). */
async function openLayer(file: string): Promise<{ stream: Readable; done: Promise<void> }> {
  const fd = fs.openSync(file, 'r');
  const head = Buffer.alloc(4);
  fs.readSync(fd, head, 0, 4, 0);
  if (head[0] === 0x1f && head[1] === 0x8b) {
    fs.closeSync(fd);
    return { stream: fs.createReadStream(file).pipe(zlib.createGunzip()), done: Promise.resolve() };
  }
  if (head.readUInt32LE(0) === 0xfd2fb528) {
    const z = zstdDecompressFrom(fd, `decompressing layer ${path.basename(file)}`);
    fs.closeSync(fd);
    return { stream: z.stdout!, done: z.done };
  }
  fs.closeSync(fd);
  return { stream: fs.createReadStream(file), done: Promise.resolve() };
}

function removeTree(p: string): void {
  fs.rmSync(p, { recursive: true, force: true });
}

/** Clear what is at `p` unless it is a directory and a directory is wanted. */
function makeRoom(p: string, wantDir: boolean): void {
  const st = fs.lstatSync(p, { throwIfNoEntry: false });
  if (!st) return;
  if (wantDir && st.isDirectory()) return;
  if (st.isDirectory()) removeTree(p);
  else fs.unlinkSync(p);
}

export interface LayerStats {
  entries: number;
  bytes: number;
  whiteouts: number;
}

/**
 * Apply one layer tarball to `root` the way a container runtime does: whiteouts (`.wh.NAME`) delete,
 * an opaque marker (`.wh..wh..opq`) hides what lower layers put in its directory, later entries
 * replace earlier ones; ownership, modes, times, xattrs, hard links, symlinks are kept. Device nodes
 * are kept under /dev only; an entry that would land outside `root` refuses the whole image. The
 * uncompressed stream must hash to `diffId` (the config's rootfs.diff_ids), checked after the fact.
 */
export async function applyLayer(
  root: string,
  file: string,
  diffId: string,
  layer: string,
  onBytes?: (n: number) => void,
): Promise<LayerStats> {
  const { stream, done } = await openLayer(file);
  const hs = hashingStream((_, total) => onBytes?.(total));
  const ex = tar.extract();
  const touched = new Set<string>();
  const xattrs: string[] = [];
  const dirTimes: Array<[string, Date]> = [];
  const stats: LayerStats = { entries: 0, bytes: 0, whiteouts: 0 };
  ex.on('entry', (h, source, next) => {
    // tar-stream's entries are streamx streams; node's pipeline takes them as readables.
    const body = source as unknown as Readable;
    const work = async () => {
      const name = entryName(h.name, layer);
      const escape = (via: string): never => {
        throw new HostileLayer(layer, h.name, `goes through ${via}, which leads outside the image`);
      };
      stats.entries++;
      if (!name) return void (await drain(body)); // the root itself
      const base = path.posix.basename(name);
      const parentRel = path.posix.dirname(name) === '.' ? '' : path.posix.dirname(name);
      if (base === '.wh..wh..opq') {
        stats.whiteouts++;
        const dir = resolveInRoot(root, parentRel, escape, { followLast: true });
        for (const e of fs.readdirSync(dir)) {
          const p = path.join(dir, e);
          if (!touched.has(p)) removeTree(p);
        }
        return void (await drain(body));
      }
      if (base.startsWith('.wh.')) {
        stats.whiteouts++;
        const target = resolveInRoot(root, `${parentRel}/${base.slice(4)}`, escape);
        removeTree(target);
        return void (await drain(body));
      }
      const dest = resolveInRoot(root, name, escape);
      touched.add(dest);
      const mode = (h.mode ?? 0o644) & 0o7777;
      switch (h.type) {
        case 'directory':
          makeRoom(dest, true);
          if (!fs.existsSync(dest)) fs.mkdirSync(dest);
          await drain(body);
          break;
        case 'file':
        case 'contiguous-file': {
          makeRoom(dest, false);
          // 'wx': O_EXCL never follows a symlink someone could have put here.
          await pipeline(body, fs.createWriteStream(dest, { flags: 'wx', mode: 0o600 }));
          stats.bytes += h.size ?? 0;
          break;
        }
        case 'symlink':
          makeRoom(dest, false);
          fs.symlinkSync(h.linkname ?? '', dest);
          await drain(body);
          break;
        case 'link': {
          const targetName = entryName(h.linkname ?? '', layer);
          const target = resolveInRoot(root, targetName, escape);
          const st = fs.lstatSync(target, { throwIfNoEntry: false });
          if (!st || st.isDirectory())
            throw new HostileLayer(
              layer,
              h.name,
              `is a hard link to '${h.linkname}', which is ${st ? 'a directory' : 'missing'}`,
            );
          makeRoom(dest, false);
          fs.linkSync(target, dest);
          await drain(body);
          return; // a hard link shares its target's owner and mode
        }
        case 'character-device':
        case 'block-device':
        case 'fifo': {
          const isDev = h.type !== 'fifo';
          // The guest mounts devtmpfs over /dev; a device node anywhere else is a way into host-like access.
          if (isDev && !(name === 'dev' || name.startsWith('dev/')))
            throw new HostileLayer(layer, h.name, 'is a device node outside /dev');
          makeRoom(dest, false);
          const args = isDev
            ? [
                '-m',
                mode.toString(8),
                dest,
                h.type === 'block-device' ? 'b' : 'c',
                String(h.devmajor ?? 0),
                String(h.devminor ?? 0),
              ]
            : ['-m', mode.toString(8), dest, 'p'];
          const r = spawnSync('mknod', args, { encoding: 'utf8' });
          if (r.status !== 0)
            throw new ForkdError('host_command', `mknod ${dest}: ${r.stderr.trim()}`, 'run forkd as root');
          await drain(body);
          break;
        }
        default:
          // Other types (GNU sparse, ...) are not filesystem objects we keep.
          await drain(body);
          return;
      }
      fs.lchownSync(dest, h.uid ?? 0, h.gid ?? 0);
      // chmod after chown: chown clears set-id bits.
      if (h.type !== 'symlink') fs.chmodSync(dest, mode);
      const mtime = h.mtime ?? new Date(0);
      if (h.type === 'directory') dirTimes.push([dest, mtime]);
      else fs.lutimesSync(dest, mtime, mtime);
      for (const [k, v] of Object.entries(h.pax ?? {}))
        if (k.startsWith('SCHILY.xattr.')) {
          const attr = k.slice('SCHILY.xattr.'.length);
          // Only what a guest needs: file capabilities and user attributes; never trusted.* or SELinux labels.
          if (attr === 'security.capability' || attr.startsWith('user.'))
            xattrs.push(
              `# file: ${escapePath(dest)}\n${attr}=0x${Buffer.from(v, 'latin1').toString('hex')}\n`,
            );
        }
    };
    work().then(() => next(), next);
  });
  await pipeline(stream, hs.stream, ex);
  await done;
  const got = `sha256:${hs.digest()}`;
  if (got !== diffId)
    throw new ForkdError(
      'bad_input',
      `${layer}: its content hashes to ${got}, but the image config says ${diffId}; the image was refused`,
      'the image is damaged or was altered',
    );
  // Directory times last: creating their children changed them.
  for (const [d, t] of dirTimes.reverse()) fs.utimesSync(d, t, t);
  if (xattrs.length) {
    const r = spawnSync('setfattr', ['-h', '--restore=-'], { input: xattrs.join('\n'), encoding: 'utf8' });
    if (r.error || r.status !== 0)
      throw new ForkdError(
        'host_command',
        `setting file capabilities from ${layer} failed: ${r.error?.message ?? r.stderr.trim()}`,
        'run: forkd setup --yes (installs attr)',
      );
  }
  return stats;
}

/** getfattr's dump format quotes a path's unusual bytes as octal escapes. */
function escapePath(p: string): string {
  return Array.from(Buffer.from(p))
    .map((b) =>
      b > 0x20 && b < 0x7f && b !== 0x5c && b !== 0x3d
        ? String.fromCharCode(b)
        : `\\${b.toString(8).padStart(3, '0')}`,
    )
    .join('');
}

function drain(s: Readable): Promise<void> {
  return new Promise((resolve, reject) => {
    s.on('end', resolve);
    s.on('error', reject);
    s.resume();
  });
}
