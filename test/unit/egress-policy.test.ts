/**
 * Egress policies: parsing and validation (network/egress-policy.ts), how a spawn combines its own
 * policy with its snapshot's (controller/sandboxes.ts), and the nftables table they become
 * (network/egress-rules.ts), checked by nft itself in a throwaway namespace.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { describePolicy, normalizePolicy, OPEN_POLICY, parseEntry } from '../../src/network/egress-policy.js';
import {
  applyEgress,
  nftAvailable,
  refusedPackets,
  renderEgressRules,
} from '../../src/network/egress-rules.js';
import { effectiveNetwork } from '../../src/controller/sandboxes.js';
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
      ['pypi.org', /domain names are not enforced yet/],
      ['*.example.com', /domain names are not enforced yet/],
      ['::1', /IPv6 is not supported/],
      ['rm -rf /', /not an IPv4 address or CIDR/],
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

  it('normalizes a policy and reports every bad entry at once', () => {
    assert.deepEqual(normalizePolicy({ allow_out: ['1.2.3.4/32', '1.2.3.4', '10.0.0.0/8:5432'] }), {
      allow_out: ['1.2.3.4', '10.0.0.0/8:5432'],
      deny_out: [],
      allow_internet_access: true,
    });
    assert.throws(
      () => normalizePolicy({ allow_out: ['x.y'], deny_out: ['1.1.1.1/40'] }),
      /allow_out entry 'x\.y'.*; deny_out entry '1\.1\.1\.1\/40'/,
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
        } finally {
          process.kill(Number(srv), 'SIGKILL');
        }
      } finally {
        for (const ns of [g, s, n]) execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
      }
    });
  },
);
