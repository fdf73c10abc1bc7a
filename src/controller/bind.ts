import net from 'node:net';
import { ForkdError } from '../util/errors.js';

/** Parse --bind HOST:PORT (IPv6 in brackets). */
export function parseBind(bind: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(bind);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535)
    throw new ForkdError(
      'bad_input',
      `--bind must be HOST:PORT (got '${bind}')`,
      'e.g. --bind 127.0.0.1:8889',
    );
  return { host: (m[1] ?? m[2])!, port };
}

/** Unauthenticated listening is allowed only on these. */
export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  if (net.isIPv4(host)) return host.startsWith('127.');
  return host === '::1';
}
