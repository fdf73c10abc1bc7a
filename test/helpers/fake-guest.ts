import http2 from 'node:http2';
import net from 'node:net';
import path from 'node:path';
import { HelloScanner, ackFrame } from '../../src/protocol/resync.js';

export type Handler = (stream: http2.ServerHttp2Stream, path: string, raw: net.Socket) => void;

export const PING = {
  ok: true,
  agent_version: 1,
  pid: 42,
  uptime_s: 1,
  hostname: 'g',
  sandbox_id: null,
  node_version: 'v18',
  python: { ready: true },
  epoch: 1,
};

/**
 * A stand-in for the guest side of the agent channel that speaks the real handshake and real HTTP/2,
 * and can misbehave the ways a hostile guest can: wrong replies, garbage, half frames, a restart.
 */
export class FakeGuest {
  readonly socketPath: string;
  handler: Handler = (s) => {
    s.respond({ ':status': 200, 'content-type': 'application/json' });
    s.end(JSON.stringify(PING));
  };
  connections = 0;
  private readonly sockets = new Set<net.Socket>();
  private raw: net.Socket | undefined;
  private readonly server: net.Server;
  private readonly h2 = http2.createServer();

  constructor(dir: string) {
    this.socketPath = path.join(dir, `agent-${Math.random().toString(16).slice(2)}.sock`);
    this.h2.on('stream', (stream, headers) => {
      stream.on('error', () => {});
      // The session's own `socket` is a proxy that refuses writes; misbehaving needs the raw one.
      this.handler(stream, String(headers[':path']), this.raw!);
    });
    this.h2.on('sessionError', () => {});
    this.server = net.createServer((sock) => {
      this.connections++;
      this.sockets.add(sock);
      sock.on('close', () => this.sockets.delete(sock));
      sock.on('error', () => {});
      const scanner = new HelloScanner();
      const onData = (d: Buffer) => {
        const r = scanner.push(d);
        if (!r.hello) return;
        sock.off('data', onData);
        sock.pause();
        this.raw = sock;
        sock.write(ackFrame(r.hello.nonce));
        if (r.hello.rest.length) sock.unshift(r.hello.rest);
        this.h2.emit('connection', sock);
      };
      sock.on('data', onData);
    });
  }
  listen(): Promise<void> {
    return new Promise((r) => this.server.listen(this.socketPath, r));
  }
  close(): void {
    for (const s of this.sockets) s.destroy();
    this.server.close();
  }
}
