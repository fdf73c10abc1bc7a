/**
 * Ports inside sandboxes, reached through the daemon with no guest networking: each connection is a
 * TCP tunnel over the sandbox's agent channel (the agent's /v1/tcp).
 *  - E2B's routing: a request whose Host is `<port>-<sandboxID>.<domain>` (what `sandbox.getHost(port)`
 *    gives) goes to that port in that sandbox, WebSocket and other upgrades included, bodies streamed.
 *  - `forkd port-forward`: `GET /v1/sandboxes/:id/ports/:port` with `Upgrade: forkd-tcp` becomes a raw
 *    byte stream to the port (bearer-authenticated like the rest of forkd's API).
 * These run before fastify (server.ts): a proxied request is not an API request.
 */
import http from 'node:http';
import type { Duplex } from 'node:stream';
import { checkBearer, sameSecret } from '../auth.js';
import type { Controller } from '../controller.js';
import type { LiveSandbox } from '../sandboxes.js';
import { accessToken } from './view.js';
import { errorMessage } from '../../util/errors.js';

const HOST_RE = /^(\d{1,5})-([a-z0-9][a-z0-9-]{0,62})\./i;
const FORWARD_RE = /^\/v1\/sandboxes\/([A-Za-z0-9_-]{1,64})\/ports\/(\d{1,5})\/?$/;

/** The port and sandbox a Host header names (`<port>-<id>.<domain>[:<listener port>]`), if any. */
export function portTarget(host: string | undefined): { port: number; id: string } | undefined {
  const m = host ? HOST_RE.exec(host) : null;
  if (!m) return undefined;
  const port = Number(m[1]);
  return port >= 1 && port <= 65535 ? { port, id: m[2]!.toLowerCase() } : undefined;
}

interface Refusal {
  status: number;
  body: Record<string, unknown>;
}

const isRefusal = (x: object): x is Refusal => 'body' in x && 'status' in x && !('pipe' in x);

export class PortProxy {
  constructor(
    private readonly ctl: Controller,
    private readonly token: string | undefined,
  ) {}

  /** Whether `req` is for a sandbox port (by Host) rather than for the daemon's API. */
  handles(req: http.IncomingMessage): boolean {
    return portTarget(req.headers.host) !== undefined;
  }

  private sandbox(id: string): LiveSandbox | Refusal {
    const live = this.ctl.sandboxes.live.get(id);
    if (!live || live.rec.paused_at_unix !== null)
      return { status: 502, body: { message: 'The sandbox was not found', sandboxId: id, code: 502 } };
    return live;
  }

  /** With a daemon token, E2B port traffic carries the sandbox's traffic token (its access token). */
  private authorized(req: http.IncomingMessage, live: LiveSandbox): Refusal | undefined {
    if (!this.token) return undefined;
    const given = req.headers['e2b-traffic-access-token'] ?? req.headers['x-access-token'];
    if (typeof given === 'string' && sameSecret(given, accessToken(this.ctl, live.rec))) return undefined;
    return {
      status: 401,
      body: { code: 401, message: 'send the sandbox traffic token as E2B-Traffic-Access-Token' },
    };
  }

  private async tunnel(live: LiveSandbox, port: number): Promise<Duplex | Refusal> {
    try {
      return await (await live.guest.agent()).openTcp(port);
    } catch (e) {
      return {
        status: 502,
        body: { code: 502, message: errorMessage(e), sandboxId: live.rec.id, port },
      };
    }
  }

  /** A plain HTTP request for a sandbox port: forwarded, response streamed back. */
  async request(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const refuse = (r: Refusal): void => {
      if (res.headersSent) res.destroy();
      else res.writeHead(r.status, { 'content-type': 'application/json' }).end(JSON.stringify(r.body));
    };
    const { port, id } = portTarget(req.headers.host)!;
    const live = this.sandbox(id);
    if (isRefusal(live)) return void refuse(live);
    const denied = this.authorized(req, live);
    if (denied) return void refuse(denied);
    const tun = await this.tunnel(live, port);
    if (isRefusal(tun)) return void refuse(tun);
    const out = http.request(
      {
        createConnection: () => tun as unknown as import('node:net').Socket,
        method: req.method,
        path: req.url,
        // One request per tunnel: the guest server sees no keep-alive it would hold open.
        headers: { ...req.headers, connection: 'close' },
      },
      (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        up.pipe(res);
      },
    );
    out.on('error', (e) =>
      refuse({ status: 502, body: { code: 502, message: `port ${port}: ${e.message}` } }),
    );
    res.on('close', () => tun.destroy());
    req.pipe(out);
  }

  /** An upgrade (WebSocket...) for a sandbox port, or a `forkd port-forward` stream; false if neither. */
  async upgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): Promise<boolean> {
    const refuse = (r: Refusal) => {
      const body = JSON.stringify(r.body);
      socket.end(
        `HTTP/1.1 ${r.status} ${http.STATUS_CODES[r.status]}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
      );
    };
    socket.on('error', () => {});
    const byHost = portTarget(req.headers.host);
    const fwd = byHost ? null : FORWARD_RE.exec((req.url ?? '').split('?')[0]!);
    if (!byHost && !(fwd && String(req.headers.upgrade).toLowerCase() === 'forkd-tcp')) return false;
    const id = byHost ? byHost.id : fwd![1]!;
    const port = byHost ? byHost.port : Number(fwd![2]);
    if (!(port >= 1 && port <= 65535)) {
      refuse({ status: 400, body: { error: `port ${port} is not 1..65535`, code: 'bad_input' } });
      return true;
    }
    if (!byHost && this.token && checkBearer(req.headers.authorization, this.token) !== 'ok') {
      refuse({ status: 401, body: { error: 'missing or invalid bearer token', code: 'unauthorized' } });
      return true;
    }
    const live = this.sandbox(id);
    if (isRefusal(live)) {
      refuse(live);
      return true;
    }
    const denied = byHost ? this.authorized(req, live) : undefined;
    if (denied) {
      refuse(denied);
      return true;
    }
    const tun = await this.tunnel(live, port);
    if (isRefusal(tun)) {
      refuse(tun);
      return true;
    }
    if (byHost) {
      // The guest server answers the upgrade itself: pass the request on as it came.
      const lines = [`${req.method} ${req.url} HTTP/1.1`];
      for (let i = 0; i < req.rawHeaders.length; i += 2)
        lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
      tun.write(lines.join('\r\n') + '\r\n\r\n');
    } else
      socket.write('HTTP/1.1 101 Switching Protocols\r\nupgrade: forkd-tcp\r\nconnection: Upgrade\r\n\r\n');
    if (head.length) tun.write(head);
    socket.pipe(tun).on('error', () => socket.destroy());
    tun.pipe(socket).on('error', () => tun.destroy());
    socket.on('close', () => tun.destroy());
    tun.on('close', () => socket.destroy());
    return true;
  }
}
