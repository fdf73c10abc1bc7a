/**
 * Egress policies on real VMs, through the daemon: a test "internet" namespace holds two servers
 * (A = 10.250.8.2, B = 10.250.9.2; TCP 80 and 5432), and every check is a real connect from inside a
 * guest. Covers CIDR/port allow and deny, deny-all, the host never reachable, a policy replaced on a
 * running sandbox (audited, refusals counted), a root guest trying to get around it, inheritance by
 * the children of a branch, 20 restricted children at once, and nothing left after they are killed.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { cli, isolatedDirs, qemuProcessesUnder } from '../helpers/env.js';
import { INTERNET_A, INTERNET_B, startTestInternet, type TestInternet } from '../helpers/internet.js';
import { execOk, freePort, startDaemon, type Daemon } from '../helpers/daemon.js';
import { createSnapshot } from '../../src/snapshot/create.js';
import { stderrReporter } from '../../src/util/report.js';
import { Controller, type NetworkPolicy } from '../../src/sdk/index.js';
import { Sandbox as E2bSandbox } from 'e2b';
import type { SandboxInfo, SpawnResult } from '../../src/sdk/types.js';

const TAG = 'egress';
const A = INTERNET_A;
const B = INTERNET_B;
const HOST_ON_TEST_NET = '10.250.8.1';

let dirs: ReturnType<typeof isolatedDirs>;
let shm: string;
let daemon: Daemon;
let c: Controller;
let internet: TestInternet;
let hostService: net.Server;
let hostPort: number;

/** Resolve a name in the guest through its resolv.conf: the address, or 'unresolved'. */
async function lookup(id: string, name: string): Promise<string> {
  const out = await execOk(
    c,
    id,
    `python3 -c 'import socket\ntry: print(socket.gethostbyname("${name}"))\nexcept OSError: print("unresolved")'`,
  );
  return out.trim();
}

/**
 * A TCP connect from inside the guest: 'ok<port>' (the server answered), 'closed', 'refused' or
 * 'timeout'. With `send`, that is written first: `host:NAME` an HTTP request for NAME, `tls:NAME` a
 * real TLS ClientHello (Python's ssl) with SNI NAME, anything else as it is.
 */
async function reach(id: string, addr: string, port: number, send = ''): Promise<string> {
  const first = send.startsWith('host:')
    ? `s.sendall(b"GET / HTTP/1.1\\r\\nHost: ${send.slice(5)}\\r\\n\\r\\n")`
    : send.startsWith('tls:')
      ? `import ssl; o = ssl.MemoryBIO(); t = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), o, server_hostname="${send.slice(4)}")\n    try: t.do_handshake()\n    except ssl.SSLWantReadError: pass\n    s.sendall(o.read())`
      : send
        ? `s.sendall(b"${send}")`
        : 'pass';
  const script = [
    'import socket, sys',
    's = socket.socket()',
    's.settimeout(5)',
    'try:',
    `    s.connect(("${addr}", ${port}))`,
    `    ${first}`,
    '    print(s.recv(16).decode() or "closed")',
    'except socket.timeout: print("timeout")',
    'except OSError as e: print("refused", e.errno)',
  ].join('\n');
  const out = await execOk(c, id, `python3 -c '${script}'`);
  return out.trim().split(' ')[0]!;
}

async function spawnOk(opts: {
  n?: number;
  network?: NetworkPolicy;
  snapshotTag?: string;
  perChildNetns?: boolean;
}) {
  const res = await c.spawnSandboxes({ snapshotTag: opts.snapshotTag ?? TAG, ...opts });
  for (const r of res) assert.ok(r.ok, `spawn failed: ${r.error}`);
  return res as Array<SpawnResult & { id: string }>;
}

/**
 * The host-side pieces of these sandboxes' networking that still exist: their namespaces and their
 * host veths (found by the uplink gateway address). Only these sandboxes' own, so another forkd run on
 * the same host does not count.
 */
function hostVethOf(s: SpawnResult): string {
  const gw = uplinkGateway(s);
  const out = execFileSync('ip', ['-o', '-4', 'addr', 'show', 'to', `${gw}/32`], { encoding: 'utf8' });
  return out.trim().split(/\s+/)[1]!;
}
function stillThere(netns: string[], veths: string[]): string[] {
  const live = new Set(
    execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
      .split('\n')
      .map((l) => l.split(' ')[0]!),
  );
  return [...netns.filter((n) => live.has(n)), ...veths.filter((v) => fs.existsSync(`/sys/class/net/${v}`))];
}

describe('egress policies on real VMs', { timeout: 30 * 60_000 }, () => {
  before(async () => {
    dirs = isolatedDirs('egress');
    shm = fs.mkdtempSync('/dev/shm/forkd-test-');
    process.env.FORKD_SHM_DIR = shm;
    await createSnapshot(
      { tag: TAG, recipe: 'python-numpy', net: true, warmupEval: 'import socket' },
      stderrReporter(),
    );
    internet = await startTestInternet();
    // A service on the host on all addresses: no sandbox may reach it.
    hostService = net.createServer((s) => s.end('host'));
    await new Promise<void>((r) => hostService.listen(0, '0.0.0.0', r));
    hostPort = (hostService.address() as net.AddressInfo).port;
    const port = await freePort();
    daemon = await startDaemon({
      port,
      stateDir: path.join(dirs.data, 'ctl'),
      args: ['--dns-upstream', internet.dns],
    });
    c = new Controller({ baseUrl: daemon.url });
  });

  after(async () => {
    if (daemon) {
      for (const s of await c.listSandboxes().catch(() => [])) await c.killSandbox(s.id).catch(() => {});
      await daemon.stop();
    }
    for (const pid of qemuProcessesUnder(dirs.run)) process.kill(pid, 'SIGKILL');
    hostService?.close();
    internet?.close();
    fs.rmSync(shm, { recursive: true, force: true });
    dirs.cleanup();
  });

  it('open by default: both servers reachable; the host never is', async () => {
    const [s] = await spawnOk({ perChildNetns: true });
    assert.equal(s!.network_summary, 'open');
    assert.equal(await reach(s!.id, A, 80), 'ok80');
    assert.equal(await reach(s!.id, B, 5432), 'ok5432');
    assert.equal(await reach(s!.id, uplinkGateway(s!), hostPort), 'refused', 'its uplink gateway (the host)');
    assert.equal(await reach(s!.id, HOST_ON_TEST_NET, hostPort), 'refused', 'any host address');
    await c.killSandbox(s!.id);
  });

  it('CIDR and port rules, deny-all; replaced live, audited and counted; a root guest gains nothing', async () => {
    const [s] = await spawnOk({ network: { allowOut: [`${A}:80`], allowInternetAccess: false } });
    const id = s!.id;
    assert.ok(s!.netns, 'a policy gives the sandbox its own namespace');
    assert.equal(s!.network_summary, `deny all; allow ${A}:80`);
    assert.equal(await reach(id, A, 80), 'ok80');
    assert.equal(await reach(id, A, 5432), 'refused', 'only the allowed port');
    assert.equal(await reach(id, B, 80), 'refused', 'deny all');

    // Root in the guest: flush whatever firewall it has, add an address and use it as the source.
    await execOk(c, id, 'iptables -F 2>/dev/null; nft flush ruleset 2>/dev/null; true');
    await execOk(
      c,
      id,
      "ip addr add 10.42.0.77/24 dev $(ip -o -4 addr show | awk '/10\\.42\\.0\\.2\\//{print $2}')",
    );
    assert.equal(await reach(id, B, 80), 'refused', 'the policy is outside the guest');
    const spoofed = await execOk(
      c,
      id,
      `python3 -c 'import socket; s=socket.socket(); s.settimeout(5); s.bind(("10.42.0.77",0))\ntry: s.connect(("${B}",80)); print("ok")\nexcept OSError as e: print("refused" if e.errno != 99 else "no-such-address")'`,
    );
    assert.equal(spoofed.trim(), 'refused', 'another source address changes nothing');

    // Replaced live: the CIDR deny, A allowed by address (allow beats deny).
    const info = await c.updateNetwork(id, { denyOut: ['10.250.0.0/16'], allowOut: [B] });
    assert.equal(info.network_summary, `deny 10.250.0.0/16; allow ${B}`);
    assert.equal(await reach(id, B, 5432), 'ok5432');
    assert.equal(await reach(id, A, 80), 'refused');
    const bad = await fetch(`${daemon.url}/v1/sandboxes/${id}/network`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ deny_out: ['pypi.org'] }),
    });
    assert.equal(bad.status, 400);
    assert.match(((await bad.json()) as { error: string }).error, /domain names cannot be denied/);
    assert.equal(
      (await c.getSandbox(id)).network_summary,
      info.network_summary,
      'a refused change changes nothing',
    );

    const metrics = await c.metrics();
    const m = new RegExp(`forkd_egress_refused_packets_total\\{sandbox="${id}"\\} (\\d+)`).exec(metrics);
    assert.ok(m && Number(m[1]) >= 5, `refusals are counted across replacements (${m?.[1]})`);
    const audit = fs.readFileSync(path.join(dirs.data, 'ctl', 'audit.log'), 'utf8');
    const ev = audit
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { event?: string; sandbox?: string; after?: { allow_out: string[] } })
      .filter((e) => e.event === 'egress_policy_set' && e.sandbox === id);
    assert.equal(ev.length, 1, 'the change (and only the accepted one) is in the audit log');
    assert.deepEqual(ev[0]!.after!.allow_out, [B]);
    await c.killSandbox(id);
  });

  it('domains: enforced by name through the sandbox resolver, not by an address known in advance', async () => {
    const [s] = await spawnOk({ network: { allowOut: ['a.test'], allowInternetAccess: false } });
    const id = s!.id;
    assert.equal(await reach(id, A, 80), 'refused', "an allowed domain's address is closed until resolved");
    assert.equal(await lookup(id, 'b.test'), 'unresolved', 'a name the policy does not allow is refused');
    assert.equal(await reach(id, B, 80), 'refused', 'and its address stays closed');
    assert.equal(await lookup(id, 'a.test'), A);
    assert.equal(await reach(id, A, 80, 'host:a.test'), 'ok80', 'what the resolver returned is open');
    assert.equal(await reach(id, A, 443, 'tls:a.test'), 'ok443', 'TLS naming the allowed domain');
    assert.equal(await reach(id, A, 5432), 'ok5432', 'other ports of the address go straight through');
    assert.equal(await reach(id, B, 80), 'refused');
    // The SNI/Host check: a neighbour on the same address, or no name at all, gets nothing.
    assert.match(await reach(id, A, 80, 'host:c.test'), /^(closed|refused)$/, 'a co-hosted name (HTTP)');
    assert.match(await reach(id, A, 443, 'tls:c.test'), /^(closed|refused)$/, 'a co-hosted name (TLS)');
    assert.match(
      await reach(id, A, 80, 'hello\\r\\n\\r\\n'),
      /^(closed|refused)$/,
      'bytes that name nothing',
    );
    const [open] = await spawnOk({ perChildNetns: true });
    assert.equal(await lookup(open!.id, 'b.test'), B, 'an open policy resolves every name');
    assert.equal(await lookup(open!.id, 'nope.test'), 'unresolved');
    // The branch's children: each its own namespace and resolver, same guest address, same policy.
    await c.branchSandbox(id, { tag: 'egress-dns', mode: 'live' });
    const kids = await spawnOk({ snapshotTag: 'egress-dns', n: 2 });
    for (const k of kids) {
      assert.equal(await lookup(k.id, 'b.test'), 'unresolved');
      assert.equal(await lookup(k.id, 'a.test'), A);
      assert.equal(await reach(k.id, A, 80, 'host:a.test'), 'ok80');
    }
    for (const x of [s!, open!, ...kids]) await c.killSandbox(x.id);
    await c.deleteSnapshot('egress-dns');
  });

  it('the children of a branch keep its policy unless the spawn gives another', async () => {
    const [s] = await spawnOk({ network: { allowOut: [A], allowInternetAccess: false } });
    const snap = await c.branchSandbox(s!.id, { tag: 'egress-branch', mode: 'live' });
    assert.equal(snap.status, 'ready');
    const kids = await spawnOk({ snapshotTag: 'egress-branch', n: 2 });
    for (const k of kids) {
      assert.ok(k.netns, 'a child of a networked sandbox gets its own namespace on demand');
      assert.equal(k.network_summary, `deny all; allow ${A}`);
      assert.equal(await reach(k.id, A, 80), 'ok80');
      assert.equal(await reach(k.id, B, 80), 'refused');
    }
    const [open] = await spawnOk({ snapshotTag: 'egress-branch', network: {} });
    assert.equal(open!.network_summary, 'open');
    assert.equal(await reach(open!.id, B, 80), 'ok80', 'the spawn request overrides');
    const [none] = await spawnOk({ snapshotTag: 'egress-branch', perChildNetns: false });
    assert.equal(none!.netns, null);
    assert.equal(none!.network_summary, 'no network');
    for (const x of [s!, ...kids, open!, none!]) await c.killSandbox(x.id);
    await c.deleteSnapshot('egress-branch');
  });

  it('20 children with a policy at once, then nothing left after kill', async () => {
    const kids = await spawnOk({ n: 20, network: { denyOut: [`${B}`] } });
    assert.equal(new Set(kids.map((k) => k.netns)).size, 20);
    const veths = kids.map(hostVethOf);
    assert.equal(new Set(veths).size, 20);
    assert.deepEqual(
      stillThere(
        kids.map((k) => k.netns!),
        veths,
      ).length,
      40,
      'all present while they run',
    );
    const results = await Promise.all(
      kids.map(async (k) => [await reach(k.id, A, 80), await reach(k.id, B, 80)].join(' ')),
    );
    assert.deepEqual(results, new Array(20).fill('ok80 refused'));
    await Promise.all(kids.map((k) => c.killSandbox(k.id)));
    assert.deepEqual(
      stillThere(
        kids.map((k) => k.netns!),
        veths,
      ),
      [],
      'namespaces and veths are removed with their sandboxes',
    );
  });

  it('the official E2B SDK: network on create, updateNetwork, getInfo', async () => {
    process.env.E2B_API_URL = daemon.url;
    process.env.E2B_SANDBOX_URL = daemon.url;
    process.env.E2B_API_KEY = 'e2b_egress'; // the daemon runs without a token: any key
    const sbx = await E2bSandbox.create(TAG, { network: { allowOut: [A] }, allowInternetAccess: false });
    try {
      assert.equal(await reach(sbx.sandboxId, A, 80), 'ok80');
      assert.equal(await reach(sbx.sandboxId, B, 80), 'refused');
      let info = await sbx.getInfo();
      assert.equal(info.allowInternetAccess, false);
      await sbx.updateNetwork({ allowOut: ['b.test'], allowInternetAccess: false });
      assert.equal(await reach(sbx.sandboxId, A, 80), 'refused');
      assert.equal(await lookup(sbx.sandboxId, 'b.test'), B);
      assert.equal(await reach(sbx.sandboxId, B, 80, 'host:b.test'), 'ok80');
      info = await sbx.getInfo();
      assert.deepEqual((info.network as { allowOut?: string[] } | undefined)?.allowOut, ['b.test']);
      await assert.rejects(
        sbx.updateNetwork({ allowOut: ['10.0.0.1/8'] }),
        /host bits are set/,
        'a bad entry is a 400 the SDK reports',
      );
    } finally {
      await sbx.kill();
    }
  });

  it('CLI: spawn --allow-out/--deny-all, network shows and replaces, ls shows the policy', async () => {
    const env = { FORKD_URL: daemon.url };
    const sp = await cli(
      ['spawn', '--tag', TAG, '--deny-all', '--allow-out', `${A}:80,${B}:5432`, '--json'],
      { env },
    );
    assert.equal(sp.code, 0, sp.stderr);
    const [s] = JSON.parse(sp.stdout) as SandboxInfo[];
    const shown = await cli(['network', s!.id, '--json'], { env });
    assert.deepEqual(JSON.parse(shown.stdout).network.allow_out, [`${A}:80`, `${B}:5432`]);
    const ls = await cli(['ls'], { env });
    assert.match(ls.stdout, /EGRESS/);
    assert.ok(ls.stdout.includes(`deny all; allow ${A}:80,${B}:5432`), ls.stdout);
    const open = await cli(['network', s!.id, '--open'], { env });
    assert.equal(open.code, 0, open.stderr);
    assert.match(open.stdout, /: open/);
    assert.equal(await reach(s!.id, B, 80), 'ok80');
    const bad = await cli(['network', s!.id, '--allow-out', '10.0.0.1/8'], { env });
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /host bits are set \(did you mean 10\.0\.0\.0\/8\?\)/);
    await c.killSandbox(s!.id);
  });
});

/** The host's end of the sandbox's uplink: its namespace's default gateway. */
function uplinkGateway(s: SpawnResult): string {
  const out = execFileSync('ip', ['-n', s.netns!, 'route', 'show', 'default'], { encoding: 'utf8' });
  return /via (10\.201\.\d+\.\d+)/.exec(out)![1]!;
}
