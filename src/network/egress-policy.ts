import net from 'node:net';
import { z } from 'zod';
import { ForkdError } from '../util/errors.js';

/**
 * Where a sandbox may connect out to. Entries are IPv4 addresses or CIDRs, each optionally with a port
 * or port range (`10.0.0.0/8:5432`, `1.2.3.4:8000-8100`; a port entry covers TCP and UDP), or `all`
 * (= 0.0.0.0/0); `allow_out` may also name domains (`pypi.org`, or `*.pythonhosted.org` for its
 * subdomains). Decision for a packet from the guest, first match wins:
 *   1. its destination matches `allow_out`, or is an address the sandbox's resolver returned for an
 *      allowed domain: accepted (allowed entries beat denied ones, as in E2B);
 *   2. it matches `deny_out`: refused;
 *   3. otherwise accepted, unless `allow_internet_access` is false.
 * The host itself and other sandboxes are never reachable, whatever the policy says. The resolver
 * (network/dns.ts) answers every name while the policy lets the internet out, and only allowed domains
 * once it denies all.
 */
export interface EgressPolicy {
  allow_out: string[];
  deny_out: string[];
  allow_internet_access: boolean;
}

/** The default: egress to everywhere (the host and other sandboxes excepted). */
export const OPEN_POLICY: EgressPolicy = { allow_out: [], deny_out: [], allow_internet_access: true };

/** One parsed entry: an IPv4 CIDR, and a port range or none (all ports, all protocols). */
export interface EgressRule {
  cidr: string;
  ports: [number, number] | null;
}

const MAX_ENTRIES = 256;

const Entry = z.string().min(1).max(64);
export const EgressPolicySchema = z
  .object({
    allow_out: z.array(Entry).max(MAX_ENTRIES).default([]),
    deny_out: z.array(Entry).max(MAX_ENTRIES).default([]),
    allow_internet_access: z.boolean().default(true),
  })
  .strict();

/** A domain entry of `allow_out`: the name, and whether it stands for its subdomains (`*.name`). */
export interface DomainRule {
  name: string;
  wildcard: boolean;
}

const LABEL = /^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/;

/** A domain entry (`example.com`, `*.example.com`), or undefined when `s` is not shaped like one. */
export function parseDomain(raw: string): DomainRule | undefined {
  let s = raw.trim().toLowerCase().replace(/\.$/, '');
  const wildcard = s.startsWith('*.');
  if (wildcard) s = s.slice(2);
  const labels = s.split('.');
  if (s.length > 253 || labels.length < 2 || !labels.every((l) => LABEL.test(l))) return undefined;
  if (/^\d+$/.test(labels[labels.length - 1]!)) return undefined; // an address, not a name
  return { name: s, wildcard };
}

export function domainString(d: DomainRule): string {
  return d.wildcard ? `*.${d.name}` : d.name;
}

/** Whether `name` (as the guest asked for it) is one of the policy's allowed domains. */
export function domainAllowed(p: EgressPolicy, name: string): boolean {
  const q = name.toLowerCase().replace(/\.$/, '');
  for (const e of p.allow_out) {
    const d = parseDomain(e);
    if (!d) continue;
    if (d.wildcard ? q.endsWith(`.${d.name}`) : q === d.name) return true;
  }
  return false;
}

/** Whether the policy refuses whatever it does not allow (then DNS answers allowed domains only). */
export function deniesAll(p: EgressPolicy): boolean {
  return !p.allow_internet_access || p.deny_out.includes('all');
}

/** Parse one address entry; a ForkdError names what is wrong with it and what is accepted. */
export function parseEntry(raw: string, list = 'allow_out'): EgressRule {
  const s = raw.trim().toLowerCase();
  if (s === 'all' || s === '0.0.0.0/0') return { cidr: '0.0.0.0/0', ports: null };
  const m = /^([0-9.]+)(?:\/(\d{1,2}))?(?::(\d{1,5})(?:-(\d{1,5}))?)?$/.exec(s);
  const bad = (why: string): never => {
    throw new ForkdError(
      'bad_input',
      `${list} entry '${raw}': ${why}`,
      'give an IPv4 address or CIDR, optionally with :PORT or :LOW-HIGH (e.g. 10.0.0.0/8:5432), or "all"',
    );
  };
  if (!m) {
    if (s.includes(':') && !s.includes('.')) bad('IPv6 is not supported (guests have IPv4 only)');
    if (parseDomain(s))
      bad(
        list === 'deny_out'
          ? 'domain names cannot be denied (a guest can connect by address): allow the domains it may use and deny all'
          : 'a domain name where an address was expected',
      );
    bad('not an IPv4 address, CIDR or domain name');
  }
  const [, addr, bits, lo, hi] = m!;
  if (!net.isIPv4(addr!)) bad(`'${addr}' is not an IPv4 address`);
  const prefix = bits === undefined ? 32 : Number(bits);
  if (prefix > 32) bad(`prefix /${prefix} is longer than 32`);
  const base = (ipToInt(addr!) & maskOf(prefix)) >>> 0;
  if (base !== ipToInt(addr!)) bad(`host bits are set (did you mean ${intToIp(base)}/${prefix}?)`);
  let ports: [number, number] | null = null;
  if (lo !== undefined) {
    const a = Number(lo);
    const b = hi === undefined ? a : Number(hi);
    if (a < 1 || b > 65535 || a > b) bad(`port range ${a}-${b} is not within 1-65535, low to high`);
    ports = [a, b];
  }
  return { cidr: `${intToIp(base)}/${prefix}`, ports };
}

/** Validate and normalize a policy (entries trimmed, lowercased, de-duplicated; all errors at once). */
export function normalizePolicy(p: Partial<EgressPolicy>): EgressPolicy {
  const errors: string[] = [];
  const norm = (list: 'allow_out' | 'deny_out'): string[] => {
    const out = new Set<string>();
    for (const e of p[list] ?? []) {
      try {
        const d = list === 'allow_out' && !/^[0-9./:-]+$/.test(e.trim()) ? parseDomain(e) : undefined;
        out.add(d ? domainString(d) : entryString(parseEntry(e, list)));
      } catch (err) {
        errors.push((err as Error).message);
      }
    }
    return [...out];
  };
  const policy = {
    allow_out: norm('allow_out'),
    deny_out: norm('deny_out'),
    allow_internet_access: p.allow_internet_access ?? true,
  };
  if (errors.length)
    throw new ForkdError(
      'bad_input',
      `egress policy: ${errors.join('; ')}`,
      'give IPv4 addresses or CIDRs, optionally with :PORT or :LOW-HIGH (e.g. 10.0.0.0/8:5432), "all", or in allow_out domain names (pypi.org, *.pythonhosted.org)',
    );
  return policy;
}

export function entryString(r: EgressRule): string {
  if (!r.ports) return r.cidr === '0.0.0.0/0' ? 'all' : r.cidr.replace(/\/32$/, '');
  const port = r.ports[0] === r.ports[1] ? `${r.ports[0]}` : `${r.ports[0]}-${r.ports[1]}`;
  return `${r.cidr.replace(/\/32$/, '')}:${port}`;
}

/** Whether the policy lets everything out (no rule beyond the fixed host/sandbox guard). */
export function isOpen(p: EgressPolicy): boolean {
  return p.allow_internet_access && p.deny_out.length === 0;
}

/** A one-line summary for listings: `open`, `deny all`, `deny all, allow 10.0.0.0/8:5432`... */
export function describePolicy(p: EgressPolicy | null): string {
  if (!p) return '-';
  const denyAll = !p.allow_internet_access || p.deny_out.includes('all');
  const parts: string[] = [];
  if (denyAll) parts.push('deny all');
  else if (p.deny_out.length) parts.push(`deny ${p.deny_out.join(',')}`);
  if (p.allow_out.length && !(isOpen(p) && !denyAll)) parts.push(`allow ${p.allow_out.join(',')}`);
  return parts.length ? parts.join('; ') : 'open';
}

export function ipToInt(ip: string): number {
  return ip.split('.').reduce((acc, o) => ((acc << 8) | Number(o)) >>> 0, 0);
}

function intToIp(n: number): string {
  return [24, 16, 8, 0].map((s) => (n >>> s) & 255).join('.');
}

function maskOf(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}
