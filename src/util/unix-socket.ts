import net from 'node:net';

/**
 * Connect to a unix socket that a process we just started may not have created yet: retry while it
 * does not exist or nobody listens, until the deadline (ms since the epoch), an abort, or `isAlive`
 * says the other side is gone. Any other error fails at once.
 */
export async function connectUnix(
  socketPath: string,
  opts: { deadline: number; retryMs: number; signal?: AbortSignal; isAlive?: () => boolean },
): Promise<net.Socket> {
  for (;;) {
    if (opts.signal?.aborted) throw new Error('connect aborted');
    try {
      return await new Promise<net.Socket>((resolve, reject) => {
        const s = net.createConnection(socketPath);
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      const retriable = code === 'ENOENT' || code === 'ECONNREFUSED';
      if (!retriable || Date.now() > opts.deadline || (opts.isAlive && !opts.isAlive())) throw e;
      await new Promise((r) => setTimeout(r, opts.retryMs));
    }
  }
}
