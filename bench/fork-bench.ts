/**
 * npm run bench — fork latency and memory on this host, side by side in one run:
 *   - fork N = 1, 10 (100 with FORKD_BENCH_N100=1) to "every child answered eval": wall, per-child p50/max
 *   - snapshot pause (stop → device state saved)
 *   - private memory per idle child (VMM Private_Dirty + guest copy-on-write, from smaps), and under TCG
 *     the guest code each child translated (QEMU's `info jit`): the part of a child's cost that is the
 *     parent's work done again
 *   - under TCG, the translated-code cache size (16, 32, 64 MiB) against speed and memory per child
 *   - cold boot of the same image to the same eval answer, and the ratio fork/boot
 * Prints a table and writes bench-results/fork-<time>.json. Every row names the accelerator.
 */
import fs from 'node:fs';
import { writeBenchResults } from './results.js';
import { coldBootGuest } from './cold-boot.js';
import { childMemory } from './child-memory.js';
import os from 'node:os';
import path from 'node:path';
import { createSnapshot } from '../src/snapshot/create.js';
import { fork } from '../src/fork/fork.js';
import { buildImage } from '../src/image/build.js';
import { currentAccel } from '../src/host/accel.js';
import { DEFAULT_TCG_CACHE_MIB } from '../src/vmm/qemu-argv.js';
import { sleep } from '../src/util/proc.js';
import { median, percentile, table } from '../src/util/format.js';
import { silentReporter, stderrReporter } from '../src/util/report.js';

const EVAL = 'numpy.zeros(5).tolist()';
const base = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-bench-'));
process.env.XDG_DATA_HOME = path.join(base, 'data');
process.env.FORKD_RUN_DIR = path.join(base, 'run');
fs.mkdirSync(process.env.FORKD_RUN_DIR, { recursive: true });
const log = (m: string) => process.stderr.write(`bench: ${m}\n`);
const r1 = (v: number) => Math.round(v * 10) / 10;

interface Row {
  metric: string;
  n?: number;
  accel: string;
  median_ms?: number;
  p50_child_ms?: number;
  max_child_ms?: number;
  value?: number;
  unit: string;
  reps: number;
  note?: string;
}

async function coldBoot(
  image: Awaited<ReturnType<typeof buildImage>>,
  accel: 'kvm' | 'tcg',
): Promise<number> {
  const dir = fs.mkdtempSync(path.join(base, 'cold-'));
  const booted = await coldBootGuest(image, accel, dir, (m) =>
    log(`cold boot: ${m} (the hung attempt is not timed)`),
  );
  const { vm, agent } = booted;
  const t0 = booted.startedAt;
  try {
    for (;;) {
      const r = await agent.eval({ code: EVAL });
      if (r.ok) break; // the interpreter answers once it has imported numpy
      await sleep(20);
    }
    const ms = performance.now() - t0;
    agent.close();
    return ms;
  } finally {
    await vm.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const rows: Row[] = [];
  const rep = process.env.FORKD_BENCH_VERBOSE ? stderrReporter() : silentReporter;
  log('building / reusing the python-numpy guest image');
  const image = await buildImage({ recipe: 'python-numpy' }, stderrReporter());
  const accel = (await currentAccel()).accel;
  log(`accelerator: ${accel}`);

  // Snapshot pause: 3 parents.
  const pauses: number[] = [];
  for (let i = 0; i < 3; i++) {
    const s = await createSnapshot({ tag: `bench${i}` }, rep);
    pauses.push(s.meta.timings.pause_ms!);
    log(
      `snapshot ${i}: pause ${r1(s.meta.timings.pause_ms!)} ms, boot→warm ${r1(s.meta.timings.warm_ms!)} ms`,
    );
  }
  rows.push({
    metric: 'snapshot pause (stop → vmstate saved)',
    accel,
    median_ms: r1(median(pauses)),
    unit: 'ms',
    reps: 3,
  });

  // Cold boot to the same answer.
  const colds: number[] = [];
  for (let i = 0; i < 3; i++) {
    colds.push(await coldBoot(image, accel));
    log(`cold boot ${i}: ${r1(colds[i]!)} ms`);
  }
  const cold = median(colds);
  rows.push({ metric: 'cold boot → eval answered', n: 1, accel, median_ms: r1(cold), unit: 'ms', reps: 3 });

  // Fork N to every child answered eval.
  const plan: Array<[number, number]> = [
    [1, 5],
    [10, 3],
  ];
  if (process.env.FORKD_BENCH_N100) plan.push([100, 1]);
  let fork1 = NaN;
  for (const [n, reps] of plan) {
    const walls: number[] = [];
    const answered: number[] = [];
    for (let i = 0; i < reps; i++) {
      const r = await fork({ tag: 'bench0', n, eval: EVAL }, rep);
      if (r.failed)
        throw new Error(`fork n=${n}: ${r.failed} failed: ${r.children.find((c) => !c.ok)?.error}`);
      const per = r.children.map((c) => c.answeredMs!);
      walls.push(Math.max(...per));
      answered.push(...per);
      log(`fork n=${n} rep ${i}: all answered in ${r1(Math.max(...per))} ms`);
    }
    if (n === 1) fork1 = median(walls);
    rows.push({
      metric: 'fork → every child answered eval',
      n,
      accel,
      median_ms: r1(median(walls)),
      p50_child_ms: r1(median(answered)),
      max_child_ms: r1(percentile(answered, 100)),
      unit: 'ms',
      reps,
    });
  }
  rows.push({
    metric: 'ratio fork(n=1) / cold boot',
    accel,
    value: Math.round((fork1 / cold) * 1000) / 1000,
    unit: 'x',
    reps: 1,
    note: `${r1(cold / fork1)}x faster`,
  });

  // What priming the parent saves: the same image snapshotted without it, forks alternating.
  {
    await createSnapshot({ tag: 'bench-unprimed', prime: false }, rep);
    const times: Record<string, number[]> = { bench0: [], 'bench-unprimed': [] };
    const tbs: Record<string, number[]> = { bench0: [], 'bench-unprimed': [] };
    for (let i = 0; i < 5; i++) {
      for (const tag of ['bench-unprimed', 'bench0']) {
        const r = await fork({ tag, n: 1, eval: EVAL, keepRunning: true }, rep);
        times[tag]!.push(r.children[0]!.answeredMs!);
        const jit = await r.running![0]!.vm.tcgStats();
        if (jit) tbs[tag]!.push(jit.tbCount);
        await r.release!();
        fs.rmSync(r.work_dir, { recursive: true, force: true });
      }
    }
    const [u, p] = [median(times['bench-unprimed']!), median(times.bench0!)];
    log(`unprimed ${r1(u)} ms vs primed ${r1(p)} ms`);
    rows.push({
      metric: 'parent not primed: fork → eval answered',
      n: 1,
      accel,
      median_ms: r1(u),
      unit: 'ms',
      reps: 5,
    });
    rows.push({
      metric: 'parent primed: fork → eval answered',
      n: 1,
      accel,
      median_ms: r1(p),
      unit: 'ms',
      reps: 5,
    });
    rows.push({
      metric: 'ratio primed / not primed (alternating)',
      accel,
      value: Math.round((p / u) * 1000) / 1000,
      unit: 'x',
      reps: 5,
      ...(tbs.bench0!.length && tbs['bench-unprimed']!.length
        ? { note: `guest code translated: ${median(tbs.bench0!)} vs ${median(tbs['bench-unprimed']!)} TBs` }
        : {}),
    });
  }

  // Memory of idle children, and the guest code each one translated on its way to the answer.
  const memFile = path.join(process.env.XDG_DATA_HOME!, 'forkd', 'snapshots', 'bench0', 'memory.bin');
  const idleChildren = async (n: number) => {
    const idle = await fork({ tag: 'bench0', n, eval: EVAL, keepRunning: true }, rep);
    if (idle.failed) throw new Error(`idle fork: ${idle.failed} failed`);
    await sleep(3000);
    const mems = idle.running!.map((c) => childMemory(c.vm.pid, memFile));
    const jit = await Promise.all(idle.running!.map((c) => c.vm.tcgStats()));
    await idle.release!();
    fs.rmSync(idle.work_dir, { recursive: true, force: true });
    const mib = (kib: number[]) => r1(median(kib) / 1024);
    return {
      vmm: mib(mems.map((m) => m.vmmPrivateKiB)),
      cow: mib(mems.map((m) => m.guestCowKiB)),
      pss: mib(mems.map((m) => m.pssKiB)),
      tbs: jit.every(Boolean) ? median(jit.map((j) => j!.tbCount)) : undefined,
      codeMib: jit.every(Boolean) ? r1(median(jit.map((j) => j!.codeBytes)) / 1048576) : undefined,
    };
  };
  const idle = await idleChildren(10);
  rows.push({
    metric: 'idle child: VMM private dirty',
    n: 10,
    accel,
    value: idle.vmm,
    unit: 'MiB',
    reps: 10,
  });
  rows.push({
    metric: 'idle child: guest copy-on-write',
    n: 10,
    accel,
    value: idle.cow,
    unit: 'MiB',
    reps: 10,
  });
  rows.push({
    metric: 'idle child: private total (VMM + CoW)',
    n: 10,
    accel,
    value: r1(idle.vmm + idle.cow),
    unit: 'MiB',
    reps: 10,
  });
  rows.push({
    metric: 'idle child: PSS (all mappings)',
    n: 10,
    accel,
    value: idle.pss,
    unit: 'MiB',
    reps: 10,
  });
  if (idle.tbs !== undefined) {
    rows.push({
      metric: 'guest code translated per child (restore → eval answered)',
      n: 10,
      accel,
      value: idle.tbs,
      unit: 'TBs',
      reps: 10,
      note: `${idle.codeMib} MiB of host code`,
    });
  }

  // TCG's code cache size against memory per child and speed, side by side (FORKD_TCG_TB_MIB).
  if (accel === 'tcg') {
    const saved = process.env.FORKD_TCG_TB_MIB;
    for (const mib of [16, 32, DEFAULT_TCG_CACHE_MIB]) {
      process.env.FORKD_TCG_TB_MIB = String(mib);
      const one: number[] = [];
      for (let i = 0; i < 3; i++) {
        const r = await fork({ tag: 'bench0', n: 1, eval: EVAL }, rep);
        one.push(r.children[0]!.answeredMs!);
      }
      const ten = await fork({ tag: 'bench0', n: 10, eval: EVAL }, rep);
      const wall10 = Math.max(...ten.children.map((c) => c.answeredMs ?? Infinity));
      const m = await idleChildren(4);
      log(`tb-size ${mib}: n=1 ${r1(median(one))} ms, n=10 ${r1(wall10)} ms, idle ${r1(m.vmm + m.cow)} MiB`);
      const label = `tb-size ${mib} MiB`;
      rows.push({
        metric: `${label}: fork → eval answered`,
        n: 1,
        accel,
        median_ms: r1(median(one)),
        unit: 'ms',
        reps: 3,
      });
      rows.push({
        metric: `${label}: fork → all answered`,
        n: 10,
        accel,
        median_ms: r1(wall10),
        unit: 'ms',
        reps: 1,
      });
      rows.push({
        metric: `${label}: idle child private (VMM + CoW)`,
        n: 4,
        accel,
        value: r1(m.vmm + m.cow),
        unit: 'MiB',
        reps: 4,
      });
    }
    if (saved === undefined) delete process.env.FORKD_TCG_TB_MIB;
    else process.env.FORKD_TCG_TB_MIB = saved;
  }

  const text = table(
    ['METRIC', 'N', 'ACCEL', 'MEDIAN', 'CHILD P50', 'CHILD MAX', 'REPS'],
    rows.map((r) => [
      r.metric,
      r.n === undefined ? '' : String(r.n),
      r.accel,
      r.median_ms !== undefined ? `${r.median_ms} ms` : `${r.value} ${r.unit}${r.note ? ` (${r.note})` : ''}`,
      r.p50_child_ms !== undefined ? `${r.p50_child_ms} ms` : '',
      r.max_child_ms !== undefined ? `${r.max_child_ms} ms` : '',
      String(r.reps),
    ]),
  );
  process.stdout.write(text + '\n');
  const file = writeBenchResults('fork', { accelerator: accel, rows });
  process.stdout.write(`wrote ${file}\n`);
}

main()
  .catch((e) => {
    process.stderr.write(`bench failed: ${(e as Error).stack}\n`);
    process.exitCode = 1;
  })
  .finally(() => fs.rmSync(base, { recursive: true, force: true }));
