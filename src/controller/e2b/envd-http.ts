/**
 * envd's plain HTTP routes on the sandbox plane: `/health` and `/files` (read; write as multipart, one
 * or many files, or as a raw stream, gzip allowed). Files go through the guest agent streamed both
 * ways; relative paths are the user's home, and what is written belongs to that user.
 */
import path from 'node:path';
import type { Readable } from 'node:stream';
import zlib from 'node:zlib';
import multipart from '@fastify/multipart';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { AgentError } from '../../agent-client/client.js';
import type { PlaneRequest } from './sandbox-plane.js';

/** A guest user's home, for relative paths (E2B: `/home/user`). */
export function homeOf(user: string): string {
  return user === 'root' ? '/root' : `/home/${user}`;
}

/** An absolute, normalized guest path for what the SDK sent (relative to the user's home). */
export function guestPath(p: string, user: string): string | undefined {
  if (!p || p.includes('\0')) return undefined;
  return path.posix.resolve(homeOf(user), p);
}

function plane(req: FastifyRequest): PlaneRequest {
  return req.e2b!;
}

/** envd's JSON error, with the status the SDK maps to its error classes. */
function envdError(reply: FastifyReply, status: number, message: string): FastifyReply {
  return reply.status(status).header('content-type', 'application/json').send({ code: status, message });
}

function agentStatus(e: unknown): number {
  if (e instanceof AgentError) {
    if (e.status === 404 || e.status === 400 || e.status === 401) return e.status;
    if (e.code === 'ENOSPC') return 507;
    if (e.status === 403) return 403;
  }
  return 500;
}

export function envdHttpRoutes(): FastifyPluginAsync {
  return async (app) => {
    await app.register(multipart, {
      // A part's filename is its target path in multi-file writes: keep its directories.
      preservePath: true,
      // Whole files stream through to the guest: no size limit here beyond the guest's disk.
      limits: { fileSize: Number.MAX_SAFE_INTEGER, files: 10_000, fields: 100, parts: 10_100 },
    });

    app.get('/health', { schema: { hide: true } }, async (_req, reply) => reply.status(204).send());

    app.get('/files', { schema: { hide: true } }, async (req, reply) => {
      const { live, user } = plane(req);
      const q = req.query as Record<string, string | undefined>;
      const who = q.username || user;
      const p = guestPath(q.path ?? '', who);
      if (!p) return envdError(reply, 400, '"path" must name a file');
      const agent = await live.guest.agent();
      let file: { stream: Readable; size: number | undefined };
      try {
        file = await agent.readFile(p);
      } catch (e) {
        const status = agentStatus(e);
        return envdError(reply, status, status === 404 ? `path '${p}' does not exist` : (e as Error).message);
      }
      void reply.header('content-type', 'application/octet-stream');
      if (file.size !== undefined) void reply.header('content-length', String(file.size));
      return reply.send(file.stream);
    });

    app.post('/files', { schema: { hide: true } }, async (req, reply) => {
      const { live, user } = plane(req);
      const q = req.query as Record<string, string | undefined>;
      const who = q.username || user;
      const agent = await live.guest.agent();
      const written: { path: string; name: string; type: 'file' }[] = [];
      const write = async (target: string, body: Readable) => {
        const p = guestPath(target, who);
        if (!p) throw Object.assign(new Error(`bad path '${target}'`), { statusCode: 400 });
        await agent.writeFile(p, body, undefined, who);
        written.push({ path: p, name: path.posix.basename(p), type: 'file' });
      };
      try {
        if (req.isMultipart()) {
          for await (const part of req.parts()) {
            if (part.type !== 'file') continue;
            // One file: the query's path. Several (no path in the query): each part's filename.
            await write(q.path ?? part.filename, part.file);
          }
        } else {
          if (!q.path) return envdError(reply, 400, 'a raw upload needs the target in ?path=');
          let body = req.body as Readable;
          if (/gzip/i.test(String(req.headers['content-encoding'] ?? '')))
            body = body.pipe(zlib.createGunzip());
          await write(q.path, body);
        }
      } catch (e) {
        const s = (e as { statusCode?: number }).statusCode;
        return envdError(reply, s && s < 500 ? s : agentStatus(e), (e as Error).message);
      }
      if (!written.length) return envdError(reply, 400, 'no file in the upload (multipart field "file")');
      return written;
    });
  };
}
