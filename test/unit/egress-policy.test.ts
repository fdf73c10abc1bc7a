/**
 * Egress policies: parsing and validation (network/egress-policy.ts), how a spawn combines its own
 * policy with its snapshot's (controller/sandboxes.ts), and the nftables table they become
 * (network/egress-rules.ts), checked by nft itself in a throwaway namespace.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  deniesAll,
  describePolicy,
  domainAllowed,
  normalizePolicy,
  OPEN_POLICY,
  parseEntry,
} from '../../src/network/egress-policy.js';
import {
  applyEgress,
  nftAvailable,
  refusedPackets,
  renderEgressRules,
} from '../../src/network/egress-rules.js';
import { effectiveNetwork } from '../../src/controller/sandboxes.js';
import { SandboxDns } from '../../src/network/dns.js';
import dgram from 'node:dgram';
import dnsPacket from 'dns-packet';
import { ForkdError } from '../../src/util/errors.js';

describe('egress policy model', () => {
  it('parses addresses, CIDRs, ports and port ranges, and "all"', () => {
    assert.deepEqual(parseEntry('10.0.0.0/8:5432'), { cidr: '10.0.0.0/8', ports: [5432, 5432] });
    assert.deepEqual(parseEntry(' 1.2.3.4 '), { cidr: '1.2.3.4/32', ports: null });
    assert.deepEqual(parseEntry('1.2.3.4:8000-8100'), { cidr: '1.2.3.4/32', ports: [8000, 8100] });
    assert.deepEqual(parseEntry('ALL'), { cidr: '0.0.0.0/0', ports: null });
    assert.deepEqual(parseEntry('0.0.0.0/0'), { cidr: '0.0.0.0/0', ports: null });
  });

  it('refuses bad entries by name, with what is accepted', () => {
    const bad: Array<[string, RegExp]> = [
      ['10.0.0.1/8', /host bits are set \(did you mean 10\.0\.0\.0\/8\?\)/],
      ['300.1.1.1', /not an IPv4 address/],
      ['1.2.3.4/33', /longer than 32/],
      ['1.2.3.4:0', /not within 1-65535/],
      ['1.2.3.4:90-80', /low to high/],
      ['1.2.3.4:70000', /not within 1-65535/],
      ['pypi.org', /domain names cannot be denied/],
      ['*.example.com', /domain names cannot be denied/],
      ['::1', /IPv6 is not supported/],
      ['rm -rf /', /not an IPv4 address, CIDR or domain name/],
    ];
    for (const [entry, why] of bad)
      assert.throws(
        () => parseEntry(entry, 'deny_out'),
        (e: unknown) =>
          e instanceof ForkdError &&
          e.code === 'bad_input' &&
          e.message.includes(`deny_out entry '${entry}'`) &&
          why.test(e.message) &&
          /CIDR/.test(e.hint ?? ''),
        entry,
      );
  });

  it('allow_out takes domain names and wildcards; they match by name', () => {
    const p = normalizePolicy({
      allow_out: ['PyPI.org.', '*.pythonhosted.org', '10.0.0.0/8'],
      deny_out: ['all'],
    });
    assert.deepEqual(p.allow_out, ['pypi.org', '*.pythonhosted.org', '10.0.0.0/8']);
    assert.ok(domainAllowed(p, 'pypi.org'));
    assert.ok(domainAllowed(p, 'PYPI.ORG.'));
    assert.ok(!domainAllowed(p, 'www.pypi.org'), 'a plain name is not its subdomains');
    assert.ok(domainAllowed(p, 'files.pythonhosted.org'));
    assert.ok(!domainAllowed(p, 'pythonhosted.org'), 'a wildcard is not its apex');
    assert.ok(!domainAllowed(p, 'evilpythonhosted.org'));
    assert.ok(deniesAll(p));
    assert.ok(!deniesAll(OPEN_POLICY));
    assert.throws(() => normalizePolicy({ allow_out: ['a..b'] }), /not an IPv4 address, CIDR or domain name/);
    assert.throws(() => normalizePolicy({ allow_out: [`${'a'.repeat(64)}.com`] }), /domain name/);
  });

  it('normalizes a policy and reports every bad entry at once', () => {
    assert.deepEqual(normalizePolicy({ allow_out: ['1.2.3.4/32', '1.2.3.4', '10.0.0.0/8:5432'] }), {
      allow_out: ['1.2.3.4', '10.0.0.0/8:5432'],
      deny_out: [],
      allow_internet_access: true,
    });
    assert.throws(
      () => normalizePolicy({ allow_out: ['x..y'], deny_out: ['1.1.1.1/40'] }),
      /allow_out entry 'x\.\.y'.*; deny_out entry '1\.1\.1\.1\/40'/,
    );
  });

  it('summarizes a policy in one line', () => {
    assert.equal(describePolicy(null), '-');
    assert.equal(describePolicy(OPEN_POLICY), 'open');
    assert.equal(
      describePolicy({ allow_out: ['10.0.0.0/8:5432'], deny_out: [], allow_internet_access: false }),
      'deny all; allow 10.0.0.0/8:5432',
    );
    assert.equal(
      describePolicy({ allow_out: ['1.2.3.4'], deny_out: ['1.2.3.0/24'], allow_internet_access: true }),
      'deny 1.2.3.0/24; allow 1.2.3.4',
    );
  });

  it('a spawn inherits its snapshot network and policy unless it gives its own', () => {
    const restricted = { allow_out: ['10.0.0.0/8'], deny_out: [], allow_internet_access: false };
    const fromSnap = { netns: true, egress: restricted };
    assert.deepEqual(effectiveNetwork(fromSnap, {}), { netns: true, egress: restricted });
    assert.deepEqual(effectiveNetwork(fromSnap, { egress: OPEN_POLICY }), {
      netns: true,
      egress: OPEN_POLICY,
    });
    assert.deepEqual(effectiveNetwork(fromSnap, { per_child_netns: false }), { netns: false, egress: null });
    assert.deepEqual(effectiveNetwork(undefined, {}), { netns: false, egress: null });
    assert.deepEqual(effectiveNetwork(undefined, { egress: restricted }), {
      netns: true,
      egress: restricted,
    });
    assert.throws(
      () => effectiveNetwork(undefined, { egress: restricted, per_child_netns: false }),
      /needs a network namespace/,
    );
    // A snapshot's policy is checked again: packs are untrusted.
    assert.throws(
      () => effectiveNetwork({ netns: true, egress: { ...restricted, allow_out: ['10.0.0.1/8'] } }, {}),
      /host bits are set/,
    );
  });

  it('renders one atomic nft transaction: the old table deleted and the new one made', () => {
    const rules = renderEgressRules('tap0', {
      allow_out: ['10.0.0.0/8:5432', '1.2.3.4'],
      deny_out: ['all'],
      allow_internet_access: true,
    });
    const lines = rules.split('\n');
    assert.equal(lines[0], 'add table inet forkd_egress');
    assert.equal(lines[1], 'delete table inet forkd_egress');
    assert.match(rules, /set allow \{ type ipv4_addr; flags interval; elements = \{ 1\.2\.3\.4\/32 \} \}/);
    assert.match(rules, /elements = \{ 10\.0\.0\.0\/8 \. 5432-5432 \}/);
    assert.match(rules, /set deny \{[^}]*elements = \{ 0\.0\.0\.0\/0 \}/);
    assert.throws(() => renderEgressRules('tap0; drop', OPEN_POLICY), /invalid interface name/);
  });
});

/** A reply's rcode and answer addresses (@types/dns-packet leaves `rcode` out). */
function decoded(b: Buffer | undefined): { rcode: string; addrs: unknown[] } {
  const p = dnsPacket.decode(b!) as dnsPacket.DecodedPacket & { rcode: string };
  return { rcode: p.rcode, addrs: (p.answers ?? []).map((a) => (a as { data?: unknown }).data) };
}

function query(name: string, type: 'A' | 'AAAA' = 'A'): Buffer {
  return dnsPacket.encode({
    type: 'query',
    id: 7,
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ type, name }],
  });
}

/** A real DNS server on loopback serving A records for `zone` (the resolvers' upstream). */
async function zoneServer(zone: Record<string, string>): Promise<{ port: number; close: () => void }> {
  const sock = dgram.createSocket('udp4');
  sock.on('message', (msg, r) => {
    const q = dnsPacket.decode(msg);
    const name = q.questions![0]!.name;
    const addr = zone[name];
    const answers: dnsPacket.Answer[] =
      addr && q.questions![0]!.type === 'A' ? [{ type: 'A', name, ttl: 60, data: addr }] : [];
    sock.send(
      dnsPacket.encode({
        type: 'response',
        id: q.id,
        flags: addr ? 0 : 3,
        questions: q.questions,
        answers,
      }),
      r.port,
      r.address,
    );
  });
  await new Promise<void>((res) => sock.bind(0, '127.0.0.1', res));
  return { port: sock.address().port, close: () => sock.close() };
}

const ip = (...a: string[]) => execFileSync('ip', a, { stdio: 'pipe' });
const inNs = (ns: string, cmd: string[]) =>
  execFileSync('ip', ['netns', 'exec', ns, ...cmd], { stdio: 'pipe' });

/**
 * Three namespaces: "guest" (10.42.0.2) behind "sandbox" (its gateway, where the policy lives) in front
 * of "net" holding two servers (198.18.0.10 and 198.18.1.10, TCP ports 80 and 5432). What the guest
 * can reach is measured with real TCP connects.
 */
describe(
  'egress rules enforced by nftables (namespaces, no VM)',
  { skip: !nftAvailable() && 'nft missing' },
  () => {
    it('allow beats deny, CIDR and port rules, deny-all, live replacement, counters', async () => {
      const id = randomBytes(3).toString('hex');
      const [g, s, n] = [`fkeg-g-${id}`, `fkeg-s-${id}`, `fkeg-n-${id}`];
      try {
        for (const ns of [g, s, n]) ip('netns', 'add', ns);
        ip('-n', s, 'link', 'add', 'tapx', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', g);
        ip('-n', s, 'link', 'add', 'up0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', n);
        ip('-n', g, 'addr', 'add', '10.42.0.2/24', 'dev', 'eth0');
        ip('-n', s, 'addr', 'add', '10.42.0.1/24', 'dev', 'tapx');
        ip('-n', s, 'addr', 'add', '198.18.255.1/16', 'dev', 'up0');
        for (const a of ['198.18.0.10/16', '198.18.1.10/16']) ip('-n', n, 'addr', 'add', a, 'dev', 'eth0');
        for (const [ns, dev] of [
          [g, 'eth0'],
          [s, 'tapx'],
          [s, 'up0'],
          [n, 'eth0'],
          [g, 'lo'],
          [n, 'lo'],
        ] as const)
          ip('-n', ns, 'link', 'set', dev, 'up');
        ip('-n', g, 'route', 'add', 'default', 'via', '10.42.0.1');
        ip('-n', n, 'route', 'add', '10.42.0.0/24', 'via', '198.18.255.1');
        inNs(s, ['sysctl', '-qw', 'net.ipv4.ip_forward=1']);
        const server = `require('net').createServer(c=>c.end('ok')).listen(80);require('net').createServer(c=>c.end('ok')).listen(5432)`;
        const srv = execFileSync(
          'sh',
          ['-c', `ip netns exec ${n} ${process.execPath} -e "${server}" >/dev/null 2>&1 & echo $!`],
          {
            encoding: 'utf8',
          },
        ).trim();
        try {
          await new Promise((r) => setTimeout(r, 700));
          // From the guest: 'ok', or 'refused' (reset/ICMP admin-prohibited: fast, no timeout).
          const reach = (addr: string, port: number): string => {
            const js = `const s=require('net').connect(${port},'${addr}');s.setTimeout(3000,()=>{console.log('timeout');process.exit()});s.on('data',d=>{console.log(String(d));process.exit()});s.on('error',e=>{console.log('refused '+e.code);process.exit()})`;
            return String(inNs(g, [process.execPath, '-e', js])).trim();
          };
          const A = '198.18.0.10';
          const B = '198.18.1.10';
          await applyEgress(s, 'tapx', OPEN_POLICY);
          assert.equal(reach(A, 80), 'ok');
          assert.equal(reach(B, 5432), 'ok');
          assert.match(reach('10.201.0.1', 80), /^refused/, 'the host side of sandbox uplinks never');
          assert.match(reach('10.42.0.1', 22), /^refused/, 'the namespace itself serves nothing');

          await applyEgress(s, 'tapx', normalizePolicy({ deny_out: ['198.18.1.0/24'] }));
          assert.equal(reach(A, 80), 'ok');
          assert.match(reach(B, 80), /^refused ECONNREFUSED/);

          await applyEgress(
            s,
            'tapx',
            normalizePolicy({ allow_out: [`${B}:5432`], allow_internet_access: false }),
          );
          assert.match(reach(A, 80), /^refused/, 'deny all');
          assert.match(reach(B, 80), /^refused/, 'only the allowed port');
          assert.equal(reach(B, 5432), 'ok', 'allow beats deny all');

          await applyEgress(s, 'tapx', normalizePolicy({ allow_out: [A], deny_out: ['all'] }));
          assert.equal(reach(A, 80), 'ok');
          assert.match(reach(B, 5432), /^refused/);
          const refused = await refusedPackets(s);
          assert.ok(refused !== undefined && refused >= 1, `refused packets are counted (${refused})`);
          const tables = String(inNs(s, ['nft', 'list', 'tables']));
          assert.equal(tables.trim().split('\n').length, 1, 'replacing leaves one table');

          // Domains: the sandbox's resolver (asking a real DNS server on loopback) opens what it returned.
          const upstream = await zoneServer({ 'b.test': B, 'a.test': A });
          try {
            const policy = normalizePolicy({ allow_out: ['b.test'], allow_internet_access: false });
            await applyEgress(s, 'tapx', policy);
            const resolver = new SandboxDns({
              view: () => ({ policy, netns: s }),
              log: () => {},
              upstream: [`127.0.0.1:${upstream.port}`],
            });
            assert.match(reach(B, 80), /^refused/, 'not before it was resolved');
            assert.deepEqual(decoded(await resolver.answer('sb', query('b.test'))), {
              rcode: 'NOERROR',
              addrs: [B],
            });
            assert.equal(reach(B, 80), 'ok', 'the answer opened its address');
            assert.match(reach(A, 80), /^refused/, 'and nothing else');
            assert.equal(decoded(await resolver.answer('sb', query('a.test'))).rcode, 'REFUSED');
            assert.match(reach(A, 80), /^refused/, 'a refused name opens nothing');
            assert.equal(
              await resolver.answer('sb', Buffer.from('garbage')),
              undefined,
              'garbage gets no reply',
            );
            assert.deepEqual(
              decoded(await resolver.answer('sb', query('b.test', 'AAAA'))),
              { rcode: 'NOERROR', addrs: [] },
              'IPv4 only',
            );
            // A replaced policy starts with no resolved addresses.
            await applyEgress(s, 'tapx', policy);
            assert.match(reach(B, 80), /^refused/);
          } finally {
            upstream.close();
          }
        } finally {
          process.kill(Number(srv), 'SIGKILL');
        }
      } finally {
        for (const ns of [g, s, n]) execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
      }
    });
  },
);
