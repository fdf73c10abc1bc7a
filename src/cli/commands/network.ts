import type { Command } from 'commander';
import type { NetworkPolicy } from '../../sdk/controller.js';
import { normalizePolicy } from '../../network/egress-policy.js';
import { out, printJson } from '../output.js';

/** The egress flags, shared by `spawn` and `network`. */
export interface PolicyFlags {
  allowOut?: string[];
  denyOut?: string[];
  denyAll?: boolean;
}

/** Repeatable; each value may also be a comma-separated list. */
const collect = (v: string, prev: string[] = []) => [
  ...prev,
  ...v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean),
];

export function policyOptions(cmd: Command): Command {
  return cmd
    .option(
      '--allow-out <entry>',
      'always reachable: IPv4, CIDR, either with :PORT or :LOW-HIGH, or "all" (repeatable, or a,b)',
      collect,
    )
    .option('--deny-out <entry>', 'not reachable (same forms; --allow-out wins)', collect)
    .option('--deny-all', 'nothing is reachable but --allow-out entries');
}

/** The policy the flags give, or undefined when none was given. Checked here, before any request. */
export function policyFromFlags(o: PolicyFlags): NetworkPolicy | undefined {
  if (!o.allowOut && !o.denyOut && !o.denyAll) return undefined;
  const p = normalizePolicy({
    allow_out: o.allowOut ?? [],
    deny_out: o.denyOut ?? [],
    allow_internet_access: !o.denyAll,
  });
  return { allowOut: p.allow_out, denyOut: p.deny_out, allowInternetAccess: p.allow_internet_access };
}

/** `forkd network SB` output: the policy in full, one line per part. */
export function printPolicy(
  s: {
    id: string;
    network: { allow_out: string[]; deny_out: string[]; allow_internet_access: boolean } | null;
    network_summary: string;
  },
  json: boolean,
): void {
  if (json) return printJson({ id: s.id, network: s.network, summary: s.network_summary });
  out(`${s.id}: ${s.network_summary}`);
  if (!s.network) return;
  out(`  allow_out: ${s.network.allow_out.join(', ') || '—'}`);
  out(`  deny_out:  ${s.network.deny_out.join(', ') || '—'}`);
  out(`  internet:  ${s.network.allow_internet_access ? 'allowed unless denied' : 'denied unless allowed'}`);
}
