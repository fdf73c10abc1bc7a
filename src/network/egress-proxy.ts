import net from 'node:net';
import { domainAllowed, type EgressPolicy } from './egress-policy.js';
import { serverName } from './server-name.js';

/**
 * The SNI/Host check for addresses opened by name. A guest's TCP connection to port 80 or 443 of an
 * address its resolver returned for an allowed domain is redirected (DNAT in its namespace) here, to
 * one listener per port on the host end of its uplink, so the socket says which sandbox it is. The
 * connection's first bytes must name an allowed domain (TLS SNI, HTTP Host); that name is resolved
 * again and the connection is made to its address. A co-hosted name the policy does not allow, or a
 * hard-coded address with no name, gets nothing: a CDN address opened for one name does not admit its
 * neighbours. Other ports of such an address go straight through (they carry no name to check).
 */
export const PROXY_PORTS = { 80: 15080, 443: 15443 } as const;

/** How long and how much a client may send before it has named its server. */
const NAME_TIMEOUT_MS = 10_000;
const NAME_MAX_BYTES = 16 * 1024;

export interface ProxyView {
  policy: EgressPolicy;
}

export class EgressProxy {
  private readonly servers = new Map<string, net.Server[]>();
  readonly refused = new Map<string, number>();

  constructor(
    private readonly opts: {
      view: (id: string) => ProxyView | undefined;
      /** IPv4 addresses of an allowed name (the resolvers' upstream). */
      resolve: (name: string) => Promise<string[]>;
      log: (msg: string) => void;
    },
  ) {}

  async open(id: string, addr: string): Promise<void> {
    this.close(id);
    const servers: net.Server[] = [];
    try {
      for (const [port, listen] of Object.entries(PROXY_PORTS)) {
        const srv = net.createServer((c) => this.handle(id, Number(port), c));
        srv.on('error', (e) => this.opts.log(`egress proxy for ${id}: ${e.message}`));
        await new Promise<void>((resolve, reject) => {
          srv.once('error', reject);
          srv.listen(listen, addr, () => {
            srv.off('error', reject);
            resolve();
          });
        });
        servers.push(srv);
      }
    } catch (e) {
      for (const s of servers) s.close();
      throw e;
    }
    this.servers.set(id, servers);
  }

  close(id: string): void {
    for (const s of this.servers.get(id) ?? []) s.close();
    this.servers.delete(id);
  }

  forget(id: string): void {
    this.close(id);
    this.refused.delete(id);
  }

  closeAll(): void {
    for (const id of [...this.servers.keys()]) this.close(id);
  }

  private handle(id: string, port: number, client: net.Socket): void {
    let buf = Buffer.alloc(0);
    const refuse = (why: string) => {
      this.refused.set(id, (this.refused.get(id) ?? 0) + 1);
      this.opts.log(`sandbox ${id}: egress to port ${port} refused: ${why}`);
      client.destroy();
    };
    const timer = setTimeout(() => refuse('no server name within 10 s'), NAME_TIMEOUT_MS);
    client.on('error', () => clearTimeout(timer));
    client.on('close', () => clearTimeout(timer));
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      const sn = serverName(buf);
      if (sn.kind === 'more' && buf.length < NAME_MAX_BYTES) return;
      client.off('data', onData);
      client.pause();
      clearTimeout(timer);
      if (sn.kind !== 'name') return refuse('the connection names no server (TLS SNI or HTTP Host)');
      const view = this.opts.view(id);
      if (!view || !domainAllowed(view.policy, sn.name))
        return refuse(`'${sn.name}' is not an allowed domain`);
      void this.opts.resolve(sn.name).then(
        (addrs) => {
          if (!addrs.length) return refuse(`'${sn.name}' did not resolve`);
          const up = net.connect(port, addrs[0]!, () => {
            up.write(buf);
            client.pipe(up);
            up.pipe(client);
            client.resume();
          });
          const end = () => {
            up.destroy();
            client.destroy();
          };
          up.on('error', end);
          client.on('error', end);
          up.on('close', () => client.end());
          client.on('close', () => up.destroy());
        },
        (e: unknown) => refuse(`'${sn.name}' did not resolve: ${(e as Error).message}`),
      );
    };
    client.on('data', onData);
  }
}
