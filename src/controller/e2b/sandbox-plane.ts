/**
 * Who a sandbox-plane request is for. The SDKs send every envd and code-interpreter request to one
 * origin (`E2B_SANDBOX_URL`) with `E2b-Sandbox-Id` and `E2b-Sandbox-Port` headers (49983 envd, 49999
 * code interpreter); the sandbox's envd access token comes as `X-Access-Token`.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { sameSecret } from '../auth.js';
import type { Controller } from '../controller.js';
import type { LiveSandbox } from '../sandboxes.js';
import { accessToken } from './view.js';
import { checkFileSignature } from './file-signature.js';

export const ENVD_PORT = 49983;
export const INTERPRETER_PORT = 49999;

export interface PlaneRequest {
  live: LiveSandbox;
  port: number;
  /** The guest account the request acts as: Basic auth's user, else E2B's default `user`. */
  user: string;
  /** Whether the sandbox has been killed (or has exited) since the request began. */
  gone: () => boolean;
}

declare module 'fastify' {
  interface FastifyRequest {
    e2b?: PlaneRequest;
  }
}

export const DEFAULT_USER = 'user';

/** `Authorization: Basic base64("<user>:")` selects the OS user on some envd calls. */
export function basicUser(header: string | undefined): string | undefined {
  if (!header?.startsWith('Basic ')) return undefined;
  const text = Buffer.from(header.slice(6).trim(), 'base64').toString('utf8');
  const user = text.split(':')[0];
  return user && /^[a-z_][a-z0-9_-]{0,31}$/.test(user) ? user : undefined;
}

/** E2B's proxy answers a request for a sandbox that is gone, unknown or paused with this 502. */
export function sandboxGone(reply: FastifyReply, id: string): FastifyReply {
  return reply
    .status(502)
    .header('content-type', 'application/json')
    .send({ message: 'The sandbox was not found', sandboxId: id, code: 502 });
}

/**
 * onRequest hook of the sandbox plane: resolve the sandbox, check its access token, note the user.
 * `/health` answers here: 204 for a running sandbox, 502 otherwise (what `isRunning()` reads).
 */
export function sandboxPlaneHook(ctl: Controller, wantPort: number) {
  return async (req: FastifyRequest, reply: FastifyReply) => {
    const id = String(req.headers['e2b-sandbox-id'] ?? '');
    const port = Number(req.headers['e2b-sandbox-port'] ?? wantPort);
    const query = new URLSearchParams(req.url.includes('?') ? req.url.slice(req.url.indexOf('?') + 1) : '');
    const signed = req.url.startsWith('/files') && query.has('signature');
    const op = req.method === 'GET' ? 'read' : 'write';
    if (port !== wantPort)
      return reply
        .status(404)
        .send({ code: 404, message: `nothing serves ${req.url.split('?')[0]} on sandbox port ${port}` });
    let live: LiveSandbox | undefined;
    if (id) live = ctl.sandboxes.live.get(id);
    else if (signed)
      // A signed URL names no sandbox (E2B_SANDBOX_URL is one origin for all): the signature covers
      // the sandbox's token, so at most one sandbox's token makes it valid.
      live = [...ctl.sandboxes.live.values()].find(
        (l) => checkFileSignature(query, op, accessToken(ctl, l.rec)).ok,
      );
    else
      return reply.status(400).send({
        code: 400,
        message: 'missing E2b-Sandbox-Id header: this is the E2B sandbox plane (E2B_SANDBOX_URL)',
      });
    if (!live && !id)
      return reply.status(401).send({ code: 401, message: 'invalid or expired file signature' });
    if (!live || live.rec.paused_at_unix !== null) return sandboxGone(reply, id);
    const token = accessToken(ctl, live.rec);
    if (signed) {
      const r = checkFileSignature(query, op, token);
      if (!r.ok) return reply.status(401).send({ code: 401, message: r.why });
    } else {
      // The code interpreter sends the envd token only to /execute; elsewhere its traffic token (which
      // forkd makes the same).
      const given = req.headers['x-access-token'] ?? req.headers['e2b-traffic-access-token'];
      if (typeof given !== 'string' || !sameSecret(given, token))
        return reply.status(401).send({
          code: 401,
          message: given
            ? 'invalid X-Access-Token for this sandbox'
            : 'missing X-Access-Token (the envdAccessToken of create/connect)',
        });
    }
    const found = live;
    req.e2b = {
      live,
      port,
      user: basicUser(req.headers.authorization) ?? DEFAULT_USER,
      gone: () => ctl.sandboxes.live.get(found.rec.id) !== found,
    };
  };
}
