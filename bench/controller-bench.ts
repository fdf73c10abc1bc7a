/**
 * npm run bench (second part) — the daemon's latencies on this host, side by side in one run:
 *   - spawn → sandbox answered identity: from the warm pool vs cold (pool off)
 *   - exec and eval round trips through the REST API
 *   - branch source pause per mode (full, live, diff) and time to ready
 * Prints a table and writes bench-results/controller-<time>.json. Every row names the accelerator.
 */
import { isolatedBenchDirs, runBench, writeBenchResults } from './results.js';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { createSnapshot } from '../src/snapshot/create.js';
import { currentAccel } from '../src/host/accel.js';
import { median, table } from '../src/util/format.js';
import { stderrReporter } from '../src/util/report.js';
import { Controller as Daemon } from '../src/controller/controller.js';
import { buildServer } from '../src/controller/server.js';
import { Controller } from '../src/sdk/controller.js';

const { base, cleanup } = isolatedBenchDirs('cbench');
const REPS = Number(process.env.FORKD_BENCH_REPS) || 5;
const log = (m: string) => process.stderr.write(`bench: ${m}\n`);
const r1 = (v: number) => Math.round(v * 10) / 10;

interface Row {
  metric: string;
  accel: string;
  median_ms: number;
  min_ms: number;
  max_ms: number;
  reps: number;
  note?: string;
}

async function withDaemon<T>(poolSize: number, fn: (c: Controller) => Promise<T>): Promise<T> {
  const d = new Daemon({
    stateFile: path.join(base, `state-${poolSize}.json`),
    branchConcurrency: 4,
    poolSize,
    poolMaxTotal: 4,
    log: () => {},
  });
  await d.start();
  const app = await buildServer(d, { logger: false });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const c = new Controller({ baseUrl: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}` });
  try {
    return await fn(c);
  } finally {
    for (const s of await c.listSandboxes()) await c.killSandbox(s.id).catch(() => {});
    await app.close();
    await d.stop();
  }
}

function row(metric: string, accel: string, xs: number[], note?: string): Row {
  return {
    metric,
    accel,
    median_ms: r1(median(xs)),
    min_ms: r1(Math.min(...xs)),
    max_ms: r1(Math.max(...xs)),
    reps: xs.length,
    ...(note ? { note } : {}),
  };
}

async function main(): Promise<void> {
  const accel = (await currentAccel()).accel;
  log(`accelerator: ${accel}; creating the snapshot`);
  await createSnapshot(
    { tag: 'cbench', recipe: 'python-numpy', warmupEval: 'import numpy' },
    stderrReporter(),
  );
  const rows: Row[] = [];
  const ready = async (c: Controller) => {
    const [r] = await c.spawnSandboxes({ snapshotTag: 'cbench' });
    if (!r?.ok) throw new Error(r?.error);
    return r;
  };

  // Cold: pool off. Warm: pool of 1, waiting for the refill between spawns.
  const cold: number[] = [];
  const warmClient: number[] = [];
  const coldClient: number[] = [];
  await withDaemon(0, async (c) => {
    for (let i = 0; i < REPS; i++) {
      const t0 = performance.now();
      const r = await ready(c);
      coldClient.push(performance.now() - t0);
      cold.push(r.timings!.spawn_ms + r.timings!.load_ms + r.timings!.cont_ms);
      await c.killSandbox(r.id!);
    }
  });
  const warm: number[] = [];
  await withDaemon(1, async (c) => {
    await c.killSandbox((await ready(c)).id!); // the tag joins the pool
    for (let i = 0; i < REPS; i++) {
      while (!(await c.metrics()).includes('forkd_pool_ready{tag="cbench"} 1'))
        await new Promise((r) => setTimeout(r, 50));
      const t0 = performance.now();
      const r = await ready(c);
      warmClient.push(performance.now() - t0);
      if (!r.timings!.from_pool) log('warning: a spawn missed the pool');
      warm.push(r.timings!.spawn_ms + r.timings!.load_ms + r.timings!.cont_ms);
      await c.killSandbox(r.id!);
    }
  });
  rows.push(row('spawn → guest running (cold: start QEMU + load + cont)', accel, cold));
  rows.push(row('spawn → guest running (warm pool: load + cont)', accel, warm));
  rows.push(
    row('POST /v1/sandboxes → answered (cold)', accel, coldClient, 'includes agent resync + identity'),
  );
  rows.push(
    row('POST /v1/sandboxes → answered (warm pool)', accel, warmClient, 'includes agent resync + identity'),
  );

  await withDaemon(0, async (c) => {
    const sb = await ready(c);
    const id = sb.id!;
    const ex: number[] = [];
    const ev: number[] = [];
    await c.execCommand(id, ['true']);
    await c.evalCode(id, '1');
    for (let i = 0; i < REPS * 4; i++) {
      let t0 = performance.now();
      await c.execCommand(id, ['true']);
      ex.push(performance.now() - t0);
      t0 = performance.now();
      await c.evalCode(id, '1+1');
      ev.push(performance.now() - t0);
    }
    rows.push(row('exec round trip (REST → agent → `true`)', accel, ex));
    rows.push(row('eval round trip (REST → warm Python `1+1`)', accel, ev));
    for (const mode of ['full', 'live', 'diff'] as const) {
      const pause: number[] = [];
      const total: number[] = [];
      for (let i = 0; i < Math.min(REPS, 3); i++) {
        await c.execCommand(id, `head -c 8M /dev/urandom > /dev/shm/churn-${i}`);
        const t0 = performance.now();
        const s = await c.branchSandbox(id, { tag: `cb-${mode}-${i}`, mode });
        total.push(performance.now() - t0);
        pause.push(s.pause_ms!);
        await c.deleteSnapshot(`cb-${mode}-${i}`);
      }
      rows.push(row(`branch ${mode}: source pause`, accel, pause));
      rows.push(row(`branch ${mode}: request → snapshot ready`, accel, total));
    }
  });

  const warmMed = median(warm);
  const coldMed = median(cold);
  process.stdout.write(
    table(
      ['metric', 'accel', 'median ms', 'min', 'max', 'reps'],
      rows.map((r) => [
        r.metric,
        r.accel,
        String(r.median_ms),
        String(r.min_ms),
        String(r.max_ms),
        String(r.reps),
      ]),
    ) + '\n',
  );
  process.stdout.write(`warm pool vs cold (guest running): ${r1(coldMed / warmMed)}× faster\n`);
  const file = writeBenchResults('controller', { accel, rows, warm_vs_cold_ratio: r1(coldMed / warmMed) });
  log(`wrote ${file}`);
}

runBench(main, cleanup);
