/**
 * POST /v1/tcp?port=N: a byte tunnel to 127.0.0.1:N inside the guest over one HTTP/2 stream (what the
 * daemon routes `<port>-<sandbox>.<domain>` requests and `forkd port-forward` through; no guest
 * network needed). 200 once connected, then bytes both ways until either side ends.
 */
import net from 'node:net';
import type http2 from 'node:http2';

type Stream = http2.ServerHttp2Stream;
type Send = (stream: Stream, status: number, body: unknown) => void;

export function tcpRoute(stream: Stream, query: URLSearchParams, send: Send): void {
  const port = Number(query.get('port'));
  if (!Number.isInteger(port) || port < 1 || port > 65535)
    return send(stream, 400, { error: '"port" must be 1..65535' });
  const sock = net.connect({ host: '127.0.0.1', port });
  let connected = false;
  sock.once('connect', () => {
    connected = true;
    if (stream.destroyed || stream.closed) return sock.destroy();
    stream.respond({ ':status': 200 });
    stream.pipe(sock);
    sock.pipe(stream);
  });
  sock.on('error', (e: NodeJS.ErrnoException) => {
    if (!connected)
      return send(stream, 502, {
        error: `nothing listens on port ${port} in the sandbox (${e.code ?? e.message})`,
        code: e.code ?? 'ECONNREFUSED',
      });
    stream.destroy();
  });
  stream.on('close', () => sock.destroy());
  sock.on('close', () => {
    if (connected && !stream.destroyed) stream.end();
  });
}
