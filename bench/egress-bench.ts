/**
 * What egress policies cost, side by side in one run, through the daemon and a test "internet"
 * namespace (test/helpers/internet.ts; nothing leaves the host):
 *  - spawn of a networked child (own namespace, veth, nftables table, resolver) vs a non-networked one,
 *    alternating;
 *  - inside the guest (timed by the guest's own clock, so the exec round trip is not counted): TCP
 *    connect by address with no policy vs a deny-all policy allowing that address; name lookup with an
 *    open policy (resolved, nothing opened) vs an allowed domain (resolved and opened in the firewall),
 *    first lookup in a fresh sandbox and repeated ones; lookup + connect (an HTTP request: with an
 *    allowed domain it goes through the SNI/Host check of egress-proxy.ts).
 *
 *   npm run bench:egress [-- --reps 5]
 */
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { isolatedBenchDirs, runBench, writeBenchResults } from './results.js';
import { createSnapshot } from '../src/snapshot/create.js';
import { currentAccel } from '../src/host/accel.js';
import { median, table } from '../src/util/format.js';
import { stderrReporter } from '../src/util/report.js';
import { Controller as Daemon } from '../src/controller/controller.js';
import { buildServer } from '../src/controller/server.js';
import { Controller, type NetworkPolicy } from '../src/sdk/controller.js';
import { startTestInternet } from '../test/helpers/internet.js';

const TAG = 'egress-bench';
const { base, cleanup } = isolatedBenchDirs('egress-bench');
const r1 = (x: number) => Math.round(x * 10) / 10;

/** Guest-side timings in ms: one lookup (first), `n` more lookups, `n` connects, `n` lookup+connects. */
const PROBE = (host: string, addr: string, n: number) => `
import socket, time, json
def conn(a):
    s = socket.create_connection((a, 80), timeout=5)
    s.sendall(b"GET / HTTP/1.1\\r\\nHost: a.test\\r\\n\\r\\n"); s.recv(8); s.close()
def t(f):
    t0 = time.perf_counter(); f(); return (time.perf_counter() - t0) * 1000
out = {"first_lookup": t(lambda: socket.gethostbyname("${host}")) if "${host}" else None}
out["lookup"] = [t(lambda: socket.gethostbyname("${host}")) for _ in range(${n})] if "${host}" else []
out["connect"] = [t(lambda: conn("${addr}")) for _ in range(${n})]
out["lookup_connect"] = [t(lambda: conn(socket.gethostbyname("${host}"))) for _ in range(${n})] if "${host}" else []
print(json.dumps(out))`;

interface Probe {
  first_lookup: number | null;
  lookup: number[];
  connect: number[];
  lookup_connect: number[];
}

runBench(async () => {
  const argReps = process.argv.indexOf('--reps');
  const reps = argReps > 0 ? Number(process.argv[argReps + 1]) : 5;
  const accel = (await currentAccel()).accel;
  await createSnapshot(
    { tag: TAG, recipe: 'python-numpy', net: true, warmupEval: 'import socket, json, time' },
    stderrReporter(),
  );
  const internet = await startTestInternet();
  const d = new Daemon({
    stateFile: path.join(base, 'state.json'),
    branchConcurrency: 4,
    poolSize: 0,
    poolMaxTotal: 0,
    dnsUpstream: [internet.dns],
    log: () => {},
  });
  await d.start();
  const app = await buildServer(d, { logger: false });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const c = new Controller({ baseUrl: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}` });
  const configs: Record<string, { net?: boolean; network?: NetworkPolicy; host: string }> = {
    'no network': { host: '' },
    'open policy': { net: true, host: 'a.test' },
    'deny all, allow A by address': {
      network: { allowOut: [internet.A], allowInternetAccess: false },
      host: '',
    },
    'deny all, allow a.test': {
      network: { allowOut: ['a.test'], allowInternetAccess: false },
      host: 'a.test',
    },
  };
  const spawnMs: Record<string, number[]> = {};
  const probes: Record<string, Probe[]> = {};
  try {
    for (let rep = 0; rep < reps; rep++) {
      const names = Object.keys(configs);
      if (rep % 2) names.reverse(); // drift on a shared host hits every config alike
      for (const name of names) {
        const cfg = configs[name]!;
        const [s] = await c.spawnSandboxes({
          snapshotTag: TAG,
          ...(cfg.net ? { perChildNetns: true } : {}),
          ...(cfg.network ? { network: cfg.network } : {}),
        });
        if (!s?.ok) throw new Error(`spawn (${name}) failed: ${s?.error}`);
        (spawnMs[name] ??= []).push(s.timings!.ready_ms);
        if (name !== 'no network') {
          const r = await c.execCommand(s.id!, ['python3', '-c', PROBE(cfg.host, internet.A, 10)]);
          if (r.exit_code !== 0) throw new Error(`probe (${name}) failed: ${r.stderr}`);
          (probes[name] ??= []).push(JSON.parse(r.stdout) as Probe);
        }
        await c.killSandbox(s.id!);
        process.stderr.write(`rep ${rep + 1}/${reps} ${name}: ready ${s.timings!.ready_ms} ms\n`);
      }
    }
  } finally {
    for (const s of await c.listSandboxes().catch(() => [])) await c.killSandbox(s.id).catch(() => {});
    await app.close();
    await d.stop();
    internet.close();
  }
  const m = (xs: number[]) => (xs.length ? r1(median(xs)) : null);
  const rows = Object.keys(configs).map((name) => {
    const ps = probes[name] ?? [];
    return {
      config: name,
      spawn_ready_ms: m(spawnMs[name]!),
      first_lookup_ms: m(ps.map((p) => p.first_lookup).filter((x): x is number => x !== null)),
      lookup_ms: m(ps.flatMap((p) => p.lookup)),
      connect_ms: m(ps.flatMap((p) => p.connect)),
      lookup_connect_ms: m(ps.flatMap((p) => p.lookup_connect)),
    };
  });
  const noNet = rows[0]!.spawn_ready_ms!;
  console.log(`\negress policy costs [${accel}], medians of ${reps} sandboxes per config (guest-timed ms)`);
  console.log(
    table(
      ['CONFIG', 'SPAWN READY', 'VS NO NET', 'FIRST LOOKUP', 'LOOKUP', 'CONNECT', 'LOOKUP+CONNECT'],
      rows.map((r) => [
        r.config,
        String(r.spawn_ready_ms),
        `${Math.round((r.spawn_ready_ms! / noNet) * 100) / 100}×`,
        String(r.first_lookup_ms ?? '—'),
        String(r.lookup_ms ?? '—'),
        String(r.connect_ms ?? '—'),
        String(r.lookup_connect_ms ?? '—'),
      ]),
    ),
  );
  const file = writeBenchResults('egress', { accel, reps, rows, spawn_ms: spawnMs, probes });
  console.log(`\n${file}`);
}, cleanup);
