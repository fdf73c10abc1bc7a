import net from 'node:net';
import { randomInt } from 'node:crypto';
import { run, runOk } from '../util/proc.js';
import { GUEST_GATEWAY } from '../vmm/qemu-argv.js';
import { PROXY_PORTS } from './egress-proxy.js';
import { ForkdError } from '../util/errors.js';
import { commandExists } from '../util/proc.js';
import { checkIfName } from './tap.js';
import { UPLINK_POOL } from './netns.js';
import { parseDomain, parseEntry, type EgressPolicy, type EgressRule } from './egress-policy.js';

/**
 * The host side of an egress policy: one nftables table in the sandbox's own network namespace, on
 * the forward path of packets that come in from the guest's tap. The guest cannot reach it (it lives
 * outside the VM), so a root process in the guest flushing its own firewall changes nothing. Packets
 * are judged statelessly by destination, so a policy replaced on a running sandbox also cuts
 * connections it no longer allows; replies to allowed connections pass because they leave by the tap.
 */
export const EGRESS_TABLE = 'forkd_egress';

/** Refused whatever the policy: the host's end of every sandbox /30 and other sandboxes' uplinks. */
const ALWAYS_REFUSED = [UPLINK_POOL, '127.0.0.0/8', '0.0.0.0/8', '224.0.0.0/4', '255.255.255.255/32'];

export function nftAvailable(): boolean {
  return commandExists('nft');
}

function setElements(rules: EgressRule[], withPorts: boolean): string[] {
  return rules
    .filter((r) => (r.ports !== null) === withPorts)
    .map((r) => (withPorts ? `${r.cidr} . ${r.ports![0]}-${r.ports![1]}` : r.cidr));
}

function setDecl(name: string, elements: string[], withPorts: boolean): string {
  const type = withPorts ? 'ipv4_addr . inet_service' : 'ipv4_addr';
  const els = elements.length ? ` elements = { ${elements.join(', ')} }` : '';
  return `  set ${name} { type ${type}; flags interval;${els} }`;
}

/**
 * The whole table as one nft script. Applied with `nft -f`, it is one transaction: the old table is
 * deleted and the new one made atomically, so a packet never sees a half-replaced policy.
 */
export function renderEgressRules(tap: string, policy: EgressPolicy, opts: EgressOptions = {}): string {
  checkIfName(tap);
  const allow = policy.allow_out.filter((e) => !parseDomain(e)).map((e) => parseEntry(e, 'allow_out'));
  const deny = policy.deny_out.map((e) => parseEntry(e, 'deny_out'));
  const fromGuest = `iifname "${tap}"`;
  const dns = opts.dnsServer;
  if (dns !== undefined && !net.isIPv4(dns)) throw new Error(`bad resolver address ${dns}`);
  const gen = opts.generation ?? 1;
  const lines = [
    `add table inet ${EGRESS_TABLE}`,
    `delete table inet ${EGRESS_TABLE}`,
    `table inet ${EGRESS_TABLE} {`,
    '  counter refused { }',
    setDecl('allow', setElements(allow, false), false),
    setDecl('allow_ports', setElements(allow, true), true),
    setDecl('deny', setElements(deny, false), false),
    setDecl('deny_ports', setElements(deny, true), true),
    // Addresses the sandbox's resolver returned for allowed domains (allowResolved), each for its TTL.
    '  set resolved { type ipv4_addr; flags timeout; }',
    '  chain refuse {',
    '    counter name "refused"',
    '    meta l4proto tcp reject with tcp reset',
    '    reject with icmpx type admin-prohibited',
    '  }',
    '  chain forward {',
    '    type filter hook forward priority filter; policy accept;',
    `    ${fromGuest} meta nfproto ipv6 jump refuse`,
    ...(dns
      ? [
          `    ${fromGuest} ip daddr ${dns} udp dport 53 accept`,
          `    ${fromGuest} ip daddr ${dns} tcp dport { ${Object.values(PROXY_PORTS).join(', ')} } accept`,
        ]
      : []),
    `    ${fromGuest} ip daddr { ${ALWAYS_REFUSED.join(', ')} } jump refuse`,
    // A connection opened to a resolved address lives on when the address's TTL runs out, but not
    // past a replacement of the policy: the mark is this table's generation.
    `    ${fromGuest} ct mark ${gen} accept`,
    `    ${fromGuest} ip daddr @resolved ct mark set ${gen} accept`,
    `    ${fromGuest} ip daddr @allow accept`,
    `    ${fromGuest} meta l4proto { tcp, udp } ip daddr . th dport @allow_ports accept`,
    `    ${fromGuest} ip daddr @deny jump refuse`,
    `    ${fromGuest} meta l4proto { tcp, udp } ip daddr . th dport @deny_ports jump refuse`,
    ...(policy.allow_internet_access ? [] : [`    ${fromGuest} jump refuse`]),
    '  }',
    ...(dns
      ? [
          // The guest's resolv.conf names its gateway; the sandbox's resolver listens on the host end.
          '  chain prerouting {',
          '    type nat hook prerouting priority dstnat; policy accept;',
          `    ${fromGuest} ip daddr ${GUEST_GATEWAY} udp dport 53 dnat ip to ${dns}:53`,
          // Web traffic to an address opened by name must name an allowed server (egress-proxy.ts).
          ...Object.entries(PROXY_PORTS).map(
            ([port, to]) => `    ${fromGuest} ip daddr @resolved tcp dport ${port} dnat ip to ${dns}:${to}`,
          ),
          '  }',
        ]
      : []),
    // The namespace itself serves the guest nothing (its gateway address has no listeners).
    '  chain input {',
    '    type filter hook input priority filter; policy accept;',
    `    ${fromGuest} ct state established,related accept`,
    `    ${fromGuest} meta l4proto icmp accept`,
    `    ${fromGuest} jump refuse`,
    '  }',
    '}',
  ];
  return lines.join('\n') + '\n';
}

export interface EgressOptions {
  /** The host end of the sandbox's uplink, where its resolver listens (DNS to the gateway goes there). */
  dnsServer?: string | undefined;
  /** Differs on each replacement (1..2^31-1): connections marked by an older policy are judged again. */
  generation?: number;
}

/** Install or atomically replace the sandbox's policy in its namespace. */
export async function applyEgress(
  netns: string,
  tap: string,
  policy: EgressPolicy,
  opts: EgressOptions = {},
): Promise<void> {
  if (!nftAvailable())
    throw new ForkdError(
      'host_unsupported',
      'nft (nftables) is not installed; per-sandbox egress policies need it',
      'run: forkd setup --yes (or apt-get install nftables)',
    );
  const generation = opts.generation ?? 1 + randomInt(0x7ffffffe);
  await runOk('ip', ['netns', 'exec', netns, 'nft', '-f', '-'], {
    input: renderEgressRules(tap, policy, { ...opts, generation }),
  });
}

/**
 * Open `addrs` to the guest for `ttlSecs` (the resolver returned them for an allowed domain). `add`
 * alone would keep an existing entry's older timeout, so each is added, deleted and added again with
 * the new one, in one transaction.
 */
export async function allowResolved(netns: string, addrs: string[], ttlSecs: number): Promise<void> {
  const ok = addrs.filter((a) => net.isIPv4(a));
  if (!ok.length) return;
  const t = Math.max(30, Math.min(86_400, Math.ceil(ttlSecs)));
  const set = `inet ${EGRESS_TABLE} resolved`;
  const script = [
    `add element ${set} { ${ok.join(', ')} }`,
    `delete element ${set} { ${ok.join(', ')} }`,
    `add element ${set} { ${ok.map((a) => `${a} timeout ${t}s`).join(', ')} }`,
  ].join('\n');
  await runOk('ip', ['netns', 'exec', netns, 'nft', '-f', '-'], { input: script + '\n' });
}
/** Packets refused in the namespace since its policy was installed; undefined if it cannot be read. */
export async function refusedPackets(netns: string): Promise<number | undefined> {
  const r = await run('ip', [
    'netns',
    'exec',
    netns,
    'nft',
    '-j',
    'list',
    'counter',
    'inet',
    EGRESS_TABLE,
    'refused',
  ]);
  if (r.code !== 0) return undefined;
  try {
    const doc = JSON.parse(r.stdout) as { nftables?: Array<{ counter?: { packets?: number } }> };
    const c = doc.nftables?.find((x) => x.counter)?.counter;
    return typeof c?.packets === 'number' ? c.packets : undefined;
  } catch {
    return undefined;
  }
}
