/**
 * npm run bench:kvm — the runtime's own overhead under KVM, where a Linux guest cannot run but a
 * minimal firmware guest can (a PVM host's /dev/kvm): snapshot the firmware guest (image/firmware.ts),
 * then start N = 1, 10, 100 children through the engine the daemon uses (engine/child.ts, WarmPool),
 * cold and from the warm pool, timing from the request until every child has signalled it runs.
 * Per child: p50/max, where the time goes (spawn, device-state load, cont, cont → running signal) and
 * private memory. Cold and pool runs alternate within one run. Prints a table and writes
 * bench-results/kvm-<time>.json. FORKD_BENCH_ACCEL=tcg runs the same bench under TCG, for comparison.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { writeBenchResults } from './results.js';
import { childMemory } from './child-memory.js';
import { createFirmwareSnapshot } from '../src/snapshot/firmware.js';
import {
  resolveSource,
  startChild,
  SPAWN_CONCURRENCY,
  type Child,
  type ChildSource,
  type ChildTimings,
} from '../src/engine/child.js';
import { WarmPool, newSandboxId, prepareSandbox } from '../src/engine/pool.js';
import { median, percentile, table } from '../src/util/format.js';
import { sleep } from '../src/util/proc.js';
import { QemuVmm } from '../src/vmm/qemu.js';
import { kvmOpenError } from '../src/host/accel.js';

const base = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-bench-kvm-'));
process.env.XDG_DATA_HOME = path.join(base, 'data');
process.env.FORKD_RUN_DIR = path.join(base, 'run');
fs.mkdirSync(process.env.FORKD_RUN_DIR, { recursive: true });
const log = (m: string) => process.stderr.write(`bench:kvm: ${m}\n`);
const r2 = (v: number) => Math.round(v * 100) / 100;
const MEM_MIB = 128;
const TAG = 'fw';
const PLAN: Array<[number, number]> = process.env.FORKD_BENCH_QUICK
  ? [
      [1, 3],
      [10, 1],
    ]
  : [
      [1, 15],
      [10, 5],
      [100, 3],
    ];

interface Run {
  wall_ms: number;
  children: ChildTimings[];
  vmm_private_kib: number[];
}

/** Start n children at most SPAWN_CONCURRENCY at a time, as every engine caller does. */
async function startMany(n: number, start: (i: number) => Promise<Child>): Promise<Child[]> {
  const out: Child[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, SPAWN_CONCURRENCY) }, async () => {
      while (next < n) out.push(await start(next++));
    }),
  );
  return out;
}

async function measure(children: Child[], wall: number, memFile: string): Promise<Run> {
  const mem = children.map((c) => childMemory(c.vm.pid, memFile).vmmPrivateKiB);
  await Promise.all(children.map((c) => c.destroy()));
  return { wall_ms: wall, children: children.map((c) => c.timings!), vmm_private_kib: mem };
}

async function cold(src: ChildSource, n: number): Promise<Run> {
  const t0 = performance.now();
  const children = await startMany(n, async () => {
    const id = newSandboxId();
    const p = await prepareSandbox(src, id);
    return startChild(p, { t0 });
  });
  return measure(children, performance.now() - t0, src.memoryFile);
}

async function pooled(src: ChildSource, n: number): Promise<Run> {
  // The daemon's pool, filled before the clock starts; taking from it starts a background refill, as
  // in the daemon (at most one child being prepared at a time).
  const pool = new WarmPool({ perTag: n, maxTotal: n, log }, async () => src);
  pool.refill(TAG);
  while ((pool.sizes()[TAG] ?? 0) < n) await sleep(5);
  const t0 = performance.now();
  const prepared = Array.from({ length: n }, () => pool.take(src)!);
  const children = await startMany(n, (i) => startChild(prepared[i]!, { t0, fromPool: true }));
  const wall = performance.now() - t0;
  await pool.close();
  return measure(children, wall, src.memoryFile);
}

function summarize(mode: string, n: number, runs: Run[]) {
  const all = runs.flatMap((r) => r.children);
  const pick = (k: keyof ChildTimings) => all.map((c) => Number(c[k]));
  return {
    mode,
    n,
    reps: runs.length,
    wall_ms_median: r2(median(runs.map((r) => r.wall_ms))),
    child_ready_p50_ms: r2(median(pick('ready_ms'))),
    child_ready_max_ms: r2(Math.max(...pick('ready_ms'))),
    spawn_p50_ms: r2(median(pick('spawn_ms'))),
    load_p50_ms: r2(median(pick('load_ms'))),
    cont_p50_ms: r2(median(pick('cont_ms'))),
    signal_p50_ms: r2(median(pick('agent_ms'))),
    vmm_private_mib_p50: r2(median(runs.flatMap((r) => r.vmm_private_kib)) / 1024),
    wall_ms_all: runs.map((r) => r2(r.wall_ms)),
    ready_p90_ms: r2(percentile(pick('ready_ms'), 90)),
  };
}

async function main(): Promise<void> {
  const accel = (process.env.FORKD_BENCH_ACCEL ?? 'kvm') as 'kvm' | 'tcg';
  if (accel !== 'kvm' && accel !== 'tcg') throw new Error('FORKD_BENCH_ACCEL must be kvm or tcg');
  const openError = accel === 'kvm' ? kvmOpenError() : undefined;
  if (openError)
    throw new Error(`bench:kvm needs /dev/kvm (${openError}); FORKD_BENCH_ACCEL=tcg runs it under TCG`);
  const qemu = await new QemuVmm().version();
  log(`accelerator ${accel}, QEMU ${qemu}, firmware guest with ${MEM_MIB} MiB`);
  const meta = await createFirmwareSnapshot({ tag: TAG, accel, memMib: MEM_MIB });
  log(`snapshot: boot ${meta.timings.boot_ms} ms, pause ${meta.timings.pause_ms} ms`);
  const src = await resolveSource(TAG, 'file');
  // Warm-up: the first QEMU start pays for page cache and dynamic linking.
  await cold(src, 1);
  const rows: ReturnType<typeof summarize>[] = [];
  for (const [n, reps] of PLAN) {
    const c: Run[] = [];
    const p: Run[] = [];
    for (let i = 0; i < reps; i++) {
      c.push(await cold(src, n));
      p.push(await pooled(src, n));
      log(`n=${n} rep ${i + 1}/${reps}: cold ${r2(c.at(-1)!.wall_ms)} ms, pool ${r2(p.at(-1)!.wall_ms)} ms`);
    }
    rows.push(summarize('cold', n, c), summarize('pool', n, p));
  }
  const wall = (mode: string, n: number) => rows.find((r) => r.mode === mode && r.n === n)?.wall_ms_median;
  const targets = [
    { target: '100 children all running from the pool', limit_ms: 200, got_ms: wall('pool', 100) },
    { target: '1 child from the pool', limit_ms: 5, got_ms: wall('pool', 1) },
    { target: '1 child cold', limit_ms: 30, got_ms: wall('cold', 1) },
  ]
    .filter((t) => t.got_ms !== undefined)
    .map((t) => ({ ...t, met: t.got_ms! <= t.limit_ms }));
  const host = `${os.cpus().length} CPUs, ${os.release()}, ${fs.existsSync('/sys/module/kvm_pvm') ? 'KVM: PVM' : `accel ${accel}`}`;
  process.stdout.write(
    `\nforkd engine overhead, firmware guest [${accel}] on ${host}, QEMU ${qemu}\n` +
      table(
        [
          'mode',
          'N',
          'reps',
          'all running (median)',
          'child p50',
          'child max',
          'spawn',
          'load',
          'cont',
          'cont→signal',
          'VMM private',
        ],
        rows.map((r) => [
          r.mode,
          String(r.n),
          String(r.reps),
          `${r.wall_ms_median} ms`,
          `${r.child_ready_p50_ms} ms`,
          `${r.child_ready_max_ms} ms`,
          `${r.spawn_p50_ms} ms`,
          `${r.load_p50_ms} ms`,
          `${r.cont_p50_ms} ms`,
          `${r.signal_p50_ms} ms`,
          `${r.vmm_private_mib_p50} MiB`,
        ]),
      ) +
      '\n' +
      targets
        .map((t) => `${t.met ? '✓' : '✗'} ${t.target}: ${t.got_ms} ms (target ≤ ${t.limit_ms} ms)`)
        .join('\n') +
      '\n',
  );
  const file = writeBenchResults('kvm', {
    accel,
    qemu,
    guest: 'firmware',
    mem_mib: MEM_MIB,
    spawn_concurrency: SPAWN_CONCURRENCY,
    rows,
    targets,
  });
  log(`wrote ${file}`);
}

main()
  .catch((e) => {
    process.stderr.write(`bench:kvm failed: ${(e as Error).stack}\n`);
    process.exitCode = 1;
  })
  .finally(() => fs.rmSync(base, { recursive: true, force: true }));
