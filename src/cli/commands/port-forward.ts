import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import type { Command } from 'commander';
import { ForkdError } from '../../util/errors.js';
import { fail, intArg, out, printJson } from '../output.js';
import { controllerFrom, daemonError, daemonOptions } from './daemon.js';

/**
 * `forkd port-forward SB PORT`: a local TCP port whose every connection reaches PORT inside the
 * sandbox, tunnelled through the daemon and the sandbox's agent channel (no guest network needed).
 */
export function registerPortForward(program: Command): void {
  daemonOptions(
    program
      .command('port-forward <sandbox> <port>')
      .description('forward a local TCP port to a port inside a sandbox (through the daemon)')
      .option('--local <port>', 'local port to listen on (default: the same number; 0 = any free one)')
      .option('--bind <address>', 'local address to listen on', '127.0.0.1')
      .option('--json', 'machine-readable output (one line once listening)'),
  ).action(
    async (
      id: string,
      portArg: string,
      o: { local?: string; bind: string; json?: boolean; daemonUrl?: string; daemonToken?: string },
    ) => {
      const c = controllerFrom(o);
      try {
        if (!/^[A-Za-z0-9_-]{1,64}$/.test(id))
          throw new ForkdError('bad_input', `'${id}' is not a sandbox id`, 'list them with forkd ls');
        const port = inRange('PORT', intArg('PORT')(portArg), 1);
        const localPort = o.local === undefined ? port : inRange('--local', intArg('--local')(o.local), 0);
        await c.getSandbox(id); // a clear error now rather than on the first connection
        const base = new URL(c.baseUrl);
        const token = o.daemonToken ?? process.env.FORKD_TOKEN;
        const server = net.createServer((local) => {
          local.on('error', () => {});
          const req = (base.protocol === 'https:' ? https : http).request({
            host: base.hostname,
            port: base.port || (base.protocol === 'https:' ? 443 : 80),
            path: `/v1/sandboxes/${id}/ports/${port}`,
            headers: {
              connection: 'Upgrade',
              upgrade: 'forkd-tcp',
              ...(token ? { authorization: `Bearer ${token}` } : {}),
            },
          });
          req.on('upgrade', (_res, sock, head) => {
            if (head.length) local.write(head);
            local.pipe(sock);
            sock.pipe(local);
            sock.on('error', () => local.destroy());
            sock.on('close', () => local.destroy());
            local.on('close', () => sock.destroy());
          });
          req.on('response', (res) => {
            let body = '';
            res.setEncoding('utf8');
            res.on('data', (d: string) => (body += d.slice(0, 2000)));
            res.on('end', () => {
              let msg = body;
              try {
                const j = JSON.parse(body) as { error?: string; message?: string };
                msg = j.error ?? j.message ?? body;
              } catch {
                /* not JSON */
              }
              process.stderr.write(`forkd port-forward: ${id}:${port}: HTTP ${res.statusCode}: ${msg}\n`);
              local.destroy();
            });
          });
          req.on('error', (e) => {
            process.stderr.write(
              `forkd port-forward: cannot reach the daemon at ${c.baseUrl}: ${e.message}\n`,
            );
            local.destroy();
          });
          req.end();
        });
        await new Promise<void>((resolve, reject) => {
          server.once('error', (e: NodeJS.ErrnoException) =>
            reject(
              new ForkdError(
                'bad_input',
                `cannot listen on ${o.bind}:${localPort}: ${e.code ?? e.message}`,
                'pick another with --local PORT',
              ),
            ),
          );
          server.listen(localPort, o.bind, () => resolve());
        });
        const actual = (server.address() as net.AddressInfo).port;
        if (o.json) printJson({ local: `${o.bind}:${actual}`, sandbox: id, port });
        else out(`forwarding ${o.bind}:${actual} → ${id} port ${port} (Ctrl-C to stop)`);
      } catch (e) {
        fail(daemonError(e, c.baseUrl), Boolean(o.json));
      }
    },
  );
}

function inRange(name: string, n: number, min: number): number {
  if (n < min || n > 65535) throw new ForkdError('bad_input', `${name} must be ${min}..65535 (got ${n})`);
  return n;
}
