import dgram from 'node:dgram';
import { Resolver } from 'node:dns/promises';
import dnsPacket from 'dns-packet';
import { deniesAll, domainAllowed, type EgressPolicy } from './egress-policy.js';
import { allowResolved } from './egress-rules.js';

/**
 * The resolver of sandboxes with a network namespace: one UDP socket per sandbox, on the host end of
 * its uplink (the guest's resolv.conf names its gateway, and the namespace forwards port 53 there), so
 * which socket a query arrives on says which sandbox asked, and a guest cannot pose as another.
 *
 * Domain rules are enforced by name, when asked: a name the policy allows is resolved upstream and the
 * addresses returned are opened in that sandbox's firewall, for their TTL, before the answer leaves;
 * once the policy denies all, any other name is REFUSED. Only A queries are resolved (guests are
 * IPv4-only: AAAA and other types get an empty answer), one question per query, over UDP.
 */
export interface SandboxDnsView {
  policy: EgressPolicy;
  netns: string;
}

const RD = 0x100;
const RA = 0x80;
const RCODE = { NOERROR: 0, SERVFAIL: 2, NXDOMAIN: 3, REFUSED: 5 } as const;
/** Answers carry at most this TTL, so the guest asks again (and the firewall entry is renewed). */
const MAX_TTL = 300;
/** Firewall entries last at least this long, so lookups within it need no nft run. */
const OPEN_SECS_MIN = 120;

export interface DnsStats {
  answered: number;
  refused: number;
}

export class SandboxDns {
  private readonly sockets = new Map<string, dgram.Socket>();
  private readonly resolver: Resolver;
  readonly stats = new Map<string, DnsStats>();
  /** Per sandbox: addresses opened in its firewall and when their entries expire (ms since epoch). */
  private readonly opened = new Map<string, Map<string, number>>();

  constructor(
    private readonly opts: {
      /** The sandbox's current policy and namespace; undefined once it is gone. */
      view: (id: string) => SandboxDnsView | undefined;
      log: (msg: string) => void;
      /** `host[:port]` servers to ask; default: the host's own (/etc/resolv.conf). */
      upstream?: string[] | undefined;
    },
  ) {
    this.resolver = new Resolver({ timeout: 3000, tries: 2 });
    if (opts.upstream?.length) this.resolver.setServers(opts.upstream);
  }

  /** The IPv4 addresses of `name`, from the upstream resolvers (the egress proxy asks again here). */
  async lookup4(name: string): Promise<string[]> {
    return this.resolver.resolve4(name);
  }

  /** Listen for sandbox `id` on `addr`:53 (its uplink's host address, which exists while it lives). */
  async open(id: string, addr: string): Promise<void> {
    this.close(id);
    const sock = dgram.createSocket({ type: 'udp4', reuseAddr: true });
    sock.on('message', (msg, rinfo) => {
      void this.answer(id, msg).then(
        (reply) => reply && sock.send(reply, rinfo.port, rinfo.address),
        (e: unknown) => this.opts.log(`dns for ${id}: ${(e as Error).message}`),
      );
    });
    sock.on('error', (e) => this.opts.log(`dns socket for ${id}: ${e.message}`));
    await new Promise<void>((resolve, reject) => {
      sock.once('error', reject);
      sock.bind(53, addr, () => {
        sock.off('error', reject);
        resolve();
      });
    });
    this.sockets.set(id, sock);
    this.stats.set(id, this.stats.get(id) ?? { answered: 0, refused: 0 });
  }

  close(id: string): void {
    this.sockets.get(id)?.close();
    this.sockets.delete(id);
  }

  forget(id: string): void {
    this.close(id);
    this.stats.delete(id);
    this.opened.delete(id);
  }

  /** The sandbox's firewall was replaced: nothing it opened is open any more. */
  policyReplaced(id: string): void {
    this.opened.delete(id);
  }

  closeAll(): void {
    for (const id of [...this.sockets.keys()]) this.close(id);
  }

  /** The reply to one datagram from sandbox `id`; undefined for what is not a query (dropped). */
  async answer(id: string, msg: Buffer): Promise<Buffer | undefined> {
    let q: dnsPacket.Packet;
    try {
      q = dnsPacket.decode(msg);
    } catch {
      return undefined; // not DNS: no reply to garbage
    }
    if (q.type !== 'query' || q.questions?.length !== 1) return undefined;
    const question = q.questions[0]!;
    const stats = this.stats.get(id) ?? { answered: 0, refused: 0 };
    const reply = (rcode: number, answers: dnsPacket.Answer[] = []) =>
      dnsPacket.encode({
        type: 'response',
        id: q.id ?? 0,
        flags: RD | RA | rcode,
        questions: [question],
        answers,
      });
    const view = this.opts.view(id);
    const name = question.name.toLowerCase();
    const byDomain = view !== undefined && domainAllowed(view.policy, name);
    if (!view || (!byDomain && deniesAll(view.policy))) {
      stats.refused++;
      return reply(RCODE.REFUSED);
    }
    stats.answered++;
    if (question.type !== 'A') return reply(RCODE.NOERROR);
    let records: Array<{ address: string; ttl: number }>;
    try {
      records = await this.resolver.resolve4(name, { ttl: true });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOTFOUND') return reply(RCODE.NXDOMAIN);
      if (code === 'ENODATA') return reply(RCODE.NOERROR);
      return reply(RCODE.SERVFAIL);
    }
    const ttl = Math.min(MAX_TTL, ...records.map((r) => r.ttl));
    // Opened before the guest learns the addresses, so its first connect already passes. An entry that
    // outlives this answer's TTL by a margin is left as it is (saves an nft run per repeated lookup).
    if (byDomain) {
      const open = this.opened.get(id) ?? new Map<string, number>();
      const now = Date.now();
      const stale = records.filter((r) => (open.get(r.address) ?? 0) < now + (ttl + 10) * 1000);
      if (stale.length) {
        const secs = Math.max(ttl + 30, OPEN_SECS_MIN);
        await allowResolved(
          view.netns,
          stale.map((r) => r.address),
          secs,
        );
        for (const r of stale) open.set(r.address, now + secs * 1000);
        this.opened.set(id, open);
      }
    }
    return reply(
      RCODE.NOERROR,
      records.map((r) => ({ type: 'A', name: question.name, ttl, data: r.address })),
    );
  }
}
