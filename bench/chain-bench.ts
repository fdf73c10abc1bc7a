/**
 * npm run bench:chain — diff chains and packs on this host, side by side in one run:
 *   - a 3-link chain built with snapshot-diff (each link: a file written + numpy arrays in the warm
 *     interpreter): build time and disk bytes per link (memory delta, disk layer, total own bytes)
 *   - spawn to "child answered eval" from the depth-3 head vs its compacted flat copy, alternating,
 *     medians and the ratio; plus the one-off first spawn that assembles the chain's memory image
 *   - pack / unpack time and compression ratio of the python snapshot and of the whole chain
 * Prints a table and writes bench-results/chain-<time>.json. Every row names the accelerator.
 */
import fs from 'node:fs';
import { writeBenchResults } from './results.js';
import os from 'node:os';
import path from 'node:path';
import { createSnapshot } from '../src/snapshot/create.js';
import { deriveSnapshot } from '../src/fork/derive.js';
import { compactSnapshot } from '../src/snapshot/compact.js';
import { snapshotDetail } from '../src/snapshot/lineage.js';
import { dropAssembled } from '../src/snapshot/assemble.js';
import { fork } from '../src/fork/fork.js';
import { packSnapshot } from '../src/hub/pack.js';
import { unpackSnapshot } from '../src/hub/unpack.js';
import { median, table } from '../src/util/format.js';
import { silentReporter, type Reporter } from '../src/util/report.js';

const base = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-chainbench-'));
const dataA = path.join(base, 'data');
process.env.XDG_DATA_HOME = dataA;
process.env.FORKD_RUN_DIR = path.join(base, 'run');
fs.mkdirSync(process.env.FORKD_RUN_DIR, { recursive: true });
const REPS = Number(process.env.FORKD_BENCH_REPS) || 7;
const log = (m: string) => process.stderr.write(`bench: ${m}\n`);
const r1 = (v: number) => Math.round(v * 10) / 10;
const mib = (b: number) => r1(b / 1048576);

interface Row {
  metric: string;
  accel: string;
  value: number;
  unit: string;
  reps: number;
  note?: string;
}

/** fork n=1 and time until the child has answered an eval (what a user waits for). */
async function spawnOnce(tag: string): Promise<number> {
  const t0 = performance.now();
  let answered = NaN;
  const r = await fork(
    { tag, n: 1, eval: 'A.shape[0] + 1', onChild: () => (answered = performance.now() - t0) },
    silentReporter,
  );
  if (r.ok !== 1) throw new Error(`spawn from ${tag} failed: ${r.children[0]?.error}`);
  return answered;
}

async function main(): Promise<void> {
  const rows: Row[] = [];
  log('creating the base python snapshot');
  const root = await createSnapshot(
    { tag: 'l0', recipe: 'python-numpy', warmupEval: 'import numpy as np\nA = np.zeros(10)' },
    silentReporter,
  );
  const accel = root.meta.accelerator;
  const row = (metric: string, value: number, unit: string, reps = 1, note?: string) =>
    rows.push({ metric, accel, value, unit, reps, ...(note ? { note } : {}) });

  const links = [1, 2, 3].map((i) => ({
    tag: `l${i}`,
    from: `l${i - 1}`,
    exec: `dd if=/dev/urandom of=/root/blob${i} bs=1M count=8 status=none && sync`,
    eval: `A = np.random.rand(${i} * 250_000)`,
  }));
  for (const l of links) {
    const t0 = performance.now();
    const r = await deriveSnapshot(l, silentReporter);
    const d = snapshotDetail(l.tag);
    row(`build ${l.tag} (snapshot-diff)`, r1(performance.now() - t0), 'ms');
    row(`${l.tag} memory delta on disk`, mib(d.memory_physical_bytes), 'MiB', 1, `${r.diffPages} pages`);
    row(`${l.tag} disk layer on disk`, mib(d.disk_bytes), 'MiB');
    row(`${l.tag} own bytes (whole link)`, mib(d.own_bytes), 'MiB');
  }
  const d0 = snapshotDetail('l0');
  row(
    'l0 own bytes (flat base, for scale)',
    mib(d0.own_bytes),
    'MiB',
    1,
    `memory ${mib(d0.memory_physical_bytes)} MiB`,
  );

  const tc = performance.now();
  await compactSnapshot('l3', 'flat3');
  row('compact l3 → flat3', r1(performance.now() - tc), 'ms');

  for (const t of ['l1', 'l2', 'l3']) dropAssembled(t);
  row('first spawn from l3 (assembles 3 links once)', r1(await spawnOnce('l3')), 'ms');
  await spawnOnce('flat3'); // warm the page cache the same way for both
  const chain: number[] = [];
  const flat: number[] = [];
  for (let i = 0; i < REPS; i++) {
    flat.push(await spawnOnce('flat3'));
    chain.push(await spawnOnce('l3'));
  }
  row('spawn → eval answered, flat (compacted)', r1(median(flat)), 'ms median', REPS);
  row('spawn → eval answered, depth-3 chain head', r1(median(chain)), 'ms median', REPS);
  const ratio = median(chain) / median(flat);
  row('depth-3 / flat spawn', Math.round(ratio * 1000) / 1000, '×', REPS, 'target ≤ 1.1');

  for (const [tag, label] of [
    ['l0', 'python snapshot'],
    ['l3', 'chain l0→l3'],
  ] as const) {
    const out = path.join(base, `${tag}.forkd-snapshot.tar.zst`);
    // Streaming check: the process's resident memory while packing GiBs stays where it started.
    const rss0 = process.memoryUsage().rss;
    let rssPeak = rss0;
    const sampler: Reporter = {
      ...silentReporter,
      progress: () => void (rssPeak = Math.max(rssPeak, process.memoryUsage().rss)),
    };
    const p = await packSnapshot({ tag, out }, sampler);
    row(
      `pack ${label}: RSS growth while packing`,
      mib(rssPeak - rss0),
      'MiB',
      1,
      `of ${mib(p.uncompressedBytes)} MiB streamed`,
    );
    row(
      `pack ${label}`,
      r1(p.ms),
      'ms',
      1,
      `${mib(p.uncompressedBytes)} MiB → ${mib(p.compressedBytes)} MiB`,
    );
    row(`pack ${label} compression`, r1(p.ratio), '×');
    process.env.XDG_DATA_HOME = path.join(base, `fresh-${tag}`);
    const u = await unpackSnapshot({ file: out }, silentReporter);
    row(`unpack ${label} (fresh data dir)`, r1(u.ms), 'ms', 1, `${u.links.length} link(s)`);
    process.env.XDG_DATA_HOME = dataA;
    fs.rmSync(out);
  }

  process.stdout.write(
    table(
      ['METRIC', 'ACCEL', 'VALUE', 'UNIT', 'REPS', 'NOTE'],
      rows.map((r) => [r.metric, r.accel, String(r.value), r.unit, String(r.reps), r.note ?? '']),
    ) + '\n',
  );
  process.stdout.write(`depth-3 chain spawn vs flat: ${ratio.toFixed(3)}× (target ≤ 1.1) [${accel}]\n`);
  const file = writeBenchResults('chain', {
    accel,
    rows,
    spawn_ms: { flat, chain },
    chain_vs_flat_ratio: ratio,
  });
  log(`wrote ${file}`);
}

main()
  .catch((e: unknown) => {
    process.stderr.write(`bench failed: ${(e as Error).stack}\n`);
    process.exitCode = 1;
  })
  .finally(() => fs.rmSync(base, { recursive: true, force: true }));
