/**
 * Fork latency with and without the VMM jail (vmm/jail.ts), side by side in one run: `forkd fork -n 1`
 * and `-n 10` from the same snapshot, FORKD_JAIL=off and =on alternating (which goes first flips every
 * rep, so drift on a shared host hits both). Medians of wall time, ready p50 and spawn (exec of the VMM
 * to its QMP answering: where the jail's namespaces and mounts are paid).
 *
 *   npm run bench:jail [-- --reps 5]
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { createSnapshot } from '../src/snapshot/create.js';
import { stderrReporter } from '../src/util/report.js';
import { projectRoot } from '../src/util/project.js';
import { currentAccel } from '../src/host/accel.js';
import { isolatedBenchDirs, runBench, writeBenchResults } from './results.js';

const TAG = 'jail-bench';
const SIZES = [1, 10];
type Mode = 'off' | 'on';

interface ForkRun {
  wall_ms: number;
  ready_p50_ms: number;
  children: Array<{ ok: boolean; timings?: { spawn_ms: number } }>;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function forkOnce(mode: Mode, n: number): ForkRun {
  const r = spawnSync(
    process.execPath,
    [path.join(projectRoot(), 'bin', 'forkd'), 'fork', '--tag', TAG, '-n', String(n), '--json'],
    { env: { ...process.env, FORKD_JAIL: mode }, encoding: 'utf8', maxBuffer: 64 << 20 },
  );
  if (r.status !== 0) throw new Error(`forkd fork (FORKD_JAIL=${mode}) failed: ${r.stderr}`);
  const out = JSON.parse(r.stdout) as ForkRun;
  if (out.children.some((c) => !c.ok)) throw new Error(`a child failed with FORKD_JAIL=${mode}`);
  return out;
}

const dirs = isolatedBenchDirs('jail-bench');

runBench(async () => {
  const argReps = process.argv.indexOf('--reps');
  const reps = argReps > 0 ? Number(process.argv[argReps + 1]) : 5;
  const accel = (await currentAccel()).accel;
  await createSnapshot(
    { tag: TAG, recipe: 'python-numpy', warmupEval: 'import numpy as np' },
    stderrReporter(),
  );
  const samples: Record<string, { wall: number[]; ready: number[]; spawn: number[] }> = {};
  for (let rep = 0; rep < reps; rep++) {
    const order: Mode[] = rep % 2 ? ['on', 'off'] : ['off', 'on'];
    for (const n of SIZES)
      for (const mode of order) {
        const r = forkOnce(mode, n);
        const k = `${mode}:${n}`;
        samples[k] ??= { wall: [], ready: [], spawn: [] };
        samples[k].wall.push(r.wall_ms);
        samples[k].ready.push(r.ready_p50_ms);
        samples[k].spawn.push(median(r.children.map((c) => c.timings!.spawn_ms)));
        process.stderr.write(`rep ${rep + 1}/${reps} n=${n} jail ${mode}: wall ${r.wall_ms} ms\n`);
      }
  }
  const rows = SIZES.map((n) => {
    const off = samples[`off:${n}`]!;
    const on = samples[`on:${n}`]!;
    const m = (xs: number[]) => Math.round(median(xs) * 10) / 10;
    return {
      n,
      wall_off_ms: m(off.wall),
      wall_on_ms: m(on.wall),
      wall_ratio: Math.round((median(on.wall) / median(off.wall)) * 100) / 100,
      ready_p50_off_ms: m(off.ready),
      ready_p50_on_ms: m(on.ready),
      spawn_off_ms: m(off.spawn),
      spawn_on_ms: m(on.spawn),
    };
  });
  console.log(`\nfork latency, jail off vs on [${accel}], medians of ${reps} reps`);
  console.log('| n | wall off | wall on | on/off | ready p50 off | ready p50 on | spawn off | spawn on |');
  console.log('|---|---|---|---|---|---|---|---|');
  for (const r of rows)
    console.log(
      `| ${r.n} | ${r.wall_off_ms} | ${r.wall_on_ms} | ${r.wall_ratio}× | ${r.ready_p50_off_ms} | ${r.ready_p50_on_ms} | ${r.spawn_off_ms} | ${r.spawn_on_ms} |`,
    );
  const file = writeBenchResults('jail', { accel, reps, rows, samples });
  console.log(`\n${file}`);
}, dirs.cleanup);
