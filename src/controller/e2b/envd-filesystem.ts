/**
 * envd's `filesystem.Filesystem` service over the guest agent's file routes: stat, list (with depth),
 * mkdir, move, remove. Relative paths are the user's home; what is created belongs to the user.
 */
import { Code, ConnectError, type ServiceImpl } from '@connectrpc/connect';
import { timestampFromMs } from '@bufbuild/protobuf/wkt';
import { AgentError } from '../../agent-client/client.js';
import type { FileEntry } from '../../protocol/agent-api.js';
import type { MessageInitShape } from '@bufbuild/protobuf';
import type { NdjsonStream } from '../../agent-client/ndjson-stream.js';
import type { WatchEvent } from '../../protocol/agent-api.js';
import { planeOf, relayAgentStream, toConnectError } from './connect-util.js';
import { guestPath } from './envd-http.js';
import { EventType, Filesystem, FileType, WatchDirResponseSchema } from './gen/filesystem/filesystem_pb.js';

/** `ls -l`'s permission text for a type and mode ("-rw-r--r--", "drwxr-xr-x"). */
export function permissionsText(type: FileEntry['type'], mode: number): string {
  const t = type === 'dir' ? 'd' : type === 'symlink' ? 'l' : '-';
  let out = t;
  for (let shift = 6; shift >= 0; shift -= 3) {
    const bits = (mode >> shift) & 7;
    out += (bits & 4 ? 'r' : '-') + (bits & 2 ? 'w' : '-') + (bits & 1 ? 'x' : '-');
  }
  return out;
}

export function entryInfo(e: FileEntry) {
  return {
    name: e.name,
    type:
      e.type === 'file'
        ? FileType.FILE
        : e.type === 'dir'
          ? FileType.DIRECTORY
          : e.type === 'symlink'
            ? FileType.SYMLINK
            : FileType.UNSPECIFIED,
    path: e.path,
    size: BigInt(e.size),
    mode: e.mode & 0o777,
    permissions: permissionsText(e.type, e.mode),
    owner: e.owner ?? String(e.uid ?? ''),
    group: e.group ?? String(e.gid ?? ''),
    modifiedTime: timestampFromMs(e.mtime_ms),
    ...(e.symlink_target !== undefined ? { symlinkTarget: e.symlink_target } : {}),
  };
}

function pathOf(p: string, user: string): string {
  const g = guestPath(p, user);
  if (!g) throw new ConnectError(`bad path '${p}'`, Code.InvalidArgument);
  return g;
}

const notFoundOr = (e: unknown, p: string) =>
  e instanceof AgentError && e.status === 404
    ? new ConnectError(`path '${p}' does not exist`, Code.NotFound)
    : toConnectError(e);

export const filesystemService: Partial<ServiceImpl<typeof Filesystem>> = {
  async stat(req, ctx) {
    const { live, user } = planeOf(ctx);
    const p = pathOf(req.path, user);
    try {
      return { entry: entryInfo(await (await live.guest.agent()).statFile(p)) };
    } catch (e) {
      throw notFoundOr(e, p);
    }
  },

  async listDir(req, ctx) {
    const { live, user } = planeOf(ctx);
    const p = pathOf(req.path, user);
    const depth = req.depth || 1;
    if (depth > 64) throw new ConnectError('depth must be 1..64', Code.InvalidArgument);
    try {
      const { entries } = await (await live.guest.agent()).listFiles(p, depth);
      return { entries: entries.map(entryInfo).sort((a, b) => a.path.localeCompare(b.path)) };
    } catch (e) {
      throw notFoundOr(e, p);
    }
  },

  async makeDir(req, ctx) {
    const { live, user } = planeOf(ctx);
    const p = pathOf(req.path, user);
    let e: FileEntry;
    try {
      e = await (await live.guest.agent()).makeDir(p, user);
    } catch (err) {
      throw toConnectError(err);
    }
    if (e.created === false) throw new ConnectError(`directory '${p}' already exists`, Code.AlreadyExists);
    return { entry: entryInfo(e) };
  },

  async move(req, ctx) {
    const { live, user } = planeOf(ctx);
    const from = pathOf(req.source, user);
    const to = pathOf(req.destination, user);
    try {
      return { entry: entryInfo(await (await live.guest.agent()).moveFile(from, to, user)) };
    } catch (e) {
      throw notFoundOr(e, from);
    }
  },

  async remove(req, ctx) {
    const { live, user } = planeOf(ctx);
    const p = pathOf(req.path, user);
    try {
      await (await live.guest.agent()).removeFile(p, true);
    } catch (e) {
      // Removing what is not there is not an error (E2B's own tests rely on it).
      if (!(e instanceof AgentError && e.status === 404)) throw toConnectError(e);
    }
    return {};
  },

  async *watchDir(req, ctx) {
    const { live, user } = planeOf(ctx);
    const p = pathOf(req.path, user);
    let stream: NdjsonStream<WatchEvent>;
    try {
      stream = await (await live.guest.agent()).watchDir(p, req.recursive);
    } catch (e) {
      throw notFoundOr(e, p);
    }
    yield* relayAgentStream<WatchEvent, MessageInitShape<typeof WatchDirResponseSchema>>(
      stream,
      ctx,
      'watch',
      (ev): MessageInitShape<typeof WatchDirResponseSchema> =>
        ev.type === 'start'
          ? { event: { case: 'start', value: {} } }
          : {
              event: {
                case: 'filesystem',
                value: {
                  name: ev.name,
                  type:
                    ev.op === 'create'
                      ? EventType.CREATE
                      : ev.op === 'write'
                        ? EventType.WRITE
                        : EventType.REMOVE,
                },
              },
            },
      () => ({ event: { case: 'keepalive', value: {} } }),
    );
  },
};
