import fs from 'node:fs';
import { run, runOk } from '../util/proc.js';
import { ForkdError } from '../util/errors.js';
import { GATEWAY_MAC, GUEST_GATEWAY } from '../vmm/qemu-argv.js';
import { deleteLink } from './tap.js';
import { PROXY_PORTS } from './egress-proxy.js';

/**
 * One network namespace per sandbox, made on demand and removed with it. Inside: the sandbox's tap
 * (as the guest's gateway 10.42.0.1/24, so every child keeps the parent's guest IP) and one end of a
 * veth pair; the other end is in the host namespace on a private /30 out of 10.201.0.0/16. Traffic from
 * the guest is masqueraded twice (in the namespace to its veth address, on the host out of the uplink).
 */
export const UPLINK_POOL = '10.201.0.0/16';
const MAX_INDEX = 16383;

export interface ChildNet {
  netns: string;
  index: number;
  hostVeth: string;
  hostAddr: string;
  nsAddr: string;
}

export function netFor(id: string, index: number): ChildNet {
  if (!Number.isInteger(index) || index < 0 || index > MAX_INDEX) throw new Error(`bad net index ${index}`);
  const base = index * 4;
  const a = (n: number) => `10.201.${(base + n) >> 8}.${(base + n) & 255}`;
  return {
    netns: `forkd-${id}`,
    index,
    hostVeth: hostVethName(index),
    hostAddr: a(1),
    nsAddr: a(2),
  };
}

function hostVethName(index: number): string {
  return `fkh${index.toString(36)}`;
}

/** Whether slot `index`'s host veth exists: another daemon or fork on this host holds the slot. */
function slotHeldOnHost(index: number): boolean {
  return fs.existsSync(`/sys/class/net/${hostVethName(index)}`);
}

/**
 * Smallest index not used by a live sandbox of ours, nor held on this host by anyone else (a second
 * daemon with its own state shares the host's namespace, addresses and link names).
 */
export function allocIndex(used: Iterable<number>, heldOnHost = slotHeldOnHost): number {
  const set = new Set(used);
  for (let i = 0; i <= MAX_INDEX; i++) if (!set.has(i) && !heldOnHost(i)) return i;
  throw new ForkdError('out_of_space', 'all 16384 per-sandbox network slots are in use');
}

async function iptablesEnsure(args: string[], netns?: string, first = false): Promise<void> {
  const pre = netns ? ['ip', 'netns', 'exec', netns, 'iptables'] : ['iptables'];
  const check = await run(pre[0]!, [...pre.slice(1), '-C', ...args]);
  if (check.code === 0) return;
  await runOk(pre[0]!, [...pre.slice(1), first ? '-I' : '-A', ...args]);
}

let hostReady = false;

/** Host side, once per daemon: forwarding and NAT for the per-sandbox /30s (idempotent). */
export async function ensureHostNat(): Promise<void> {
  if (hostReady) return;
  if ((await run('iptables', ['-V'])).code !== 0)
    throw new ForkdError(
      'host_unsupported',
      'iptables is not installed; per-sandbox networking needs it for NAT',
      'run: forkd setup --yes (or apt-get install iptables)',
    );
  fs.writeFileSync('/proc/sys/net/ipv4/ip_forward', '1\n');
  await iptablesEnsure([
    'POSTROUTING',
    '-t',
    'nat',
    '-s',
    UPLINK_POOL,
    '!',
    '-d',
    UPLINK_POOL,
    '-j',
    'MASQUERADE',
  ]);
  await iptablesEnsure(['FORWARD', '-s', UPLINK_POOL, '-j', 'ACCEPT']);
  // Sandboxes never open connections to the host itself (any of its addresses, through their gateway):
  // host services bound to 0.0.0.0 are not for guests. First in INPUT, ahead of any host ACCEPT rule.
  await iptablesEnsure(
    [
      'INPUT',
      '-s',
      UPLINK_POOL,
      '-m',
      'conntrack',
      '--ctstate',
      'NEW',
      '-j',
      'REJECT',
      '--reject-with',
      'icmp-admin-prohibited',
    ],
    undefined,
    true,
  );
  // ...except DNS to their own resolvers (network/dns.ts) and the egress proxy (egress-proxy.ts),
  // each on the host end of its uplink.
  await iptablesEnsure(
    ['INPUT', '-s', UPLINK_POOL, '-d', UPLINK_POOL, '-p', 'udp', '--dport', '53', '-j', 'ACCEPT'],
    undefined,
    true,
  );
  await iptablesEnsure(
    [
      'INPUT',
      '-s',
      UPLINK_POOL,
      '-d',
      UPLINK_POOL,
      '-p',
      'tcp',
      '-m',
      'multiport',
      '--dports',
      Object.values(PROXY_PORTS).join(','),
      '-j',
      'ACCEPT',
    ],
    undefined,
    true,
  );
  await iptablesEnsure([
    'FORWARD',
    '-d',
    UPLINK_POOL,
    '-m',
    'conntrack',
    '--ctstate',
    'RELATED,ESTABLISHED',
    '-j',
    'ACCEPT',
  ]);
  hostReady = true;
}

/**
 * Create the namespace and move `tap` (already attached to the sandbox's QEMU) into it: from the host
 * namespace, or from the namespace of process `tapPid` (a jailed QEMU makes its tap in its own).
 */
export async function setupChildNet(net: ChildNet, tap: string, tapPid?: number): Promise<void> {
  await ensureHostNat();
  const ns = net.netns;
  const nsVeth = 'eth0';
  await runOk('ip', ['netns', 'add', ns]);
  try {
    if (tapPid !== undefined)
      await runOk('nsenter', [`--net=/proc/${tapPid}/ns/net`, 'ip', 'link', 'set', tap, 'netns', ns]);
    else await runOk('ip', ['link', 'set', tap, 'netns', ns]);
    await runOk('ip', ['link', 'add', net.hostVeth, 'type', 'veth', 'peer', 'name', nsVeth, 'netns', ns]);
    await runOk('ip', ['addr', 'add', `${net.hostAddr}/30`, 'dev', net.hostVeth]);
    await runOk('ip', ['link', 'set', net.hostVeth, 'up']);
    const inNs = (args: string[]) => runOk('ip', ['-n', ns, ...args]);
    await inNs(['link', 'set', 'lo', 'up']);
    await inNs(['link', 'set', tap, 'address', GATEWAY_MAC]);
    await inNs(['addr', 'add', `${GUEST_GATEWAY}/24`, 'dev', tap]);
    await inNs(['link', 'set', tap, 'up']);
    await inNs(['addr', 'add', `${net.nsAddr}/30`, 'dev', nsVeth]);
    await inNs(['link', 'set', nsVeth, 'up']);
    await inNs(['route', 'add', 'default', 'via', net.hostAddr]);
    await runOk('ip', ['netns', 'exec', ns, 'sh', '-c', 'echo 1 > /proc/sys/net/ipv4/ip_forward']);
    await iptablesEnsure(['POSTROUTING', '-t', 'nat', '-o', nsVeth, '-j', 'MASQUERADE'], ns);
  } catch (e) {
    await teardownChildNet(net);
    throw new ForkdError('host_unsupported', `network namespace ${ns}: ${(e as Error).message}`);
  }
}

/** Remove the namespace (which destroys the tap and the veth pair with it). Idempotent. */
export async function teardownChildNet(net: ChildNet): Promise<void> {
  await deleteLink(net.hostVeth);
  await run('ip', ['netns', 'del', net.netns]);
}

export function netnsExists(ns: string): boolean {
  return fs.existsSync(`/var/run/netns/${ns}`) || fs.existsSync(`/run/netns/${ns}`);
}
