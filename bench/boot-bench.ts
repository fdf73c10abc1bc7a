/**
 * npm run bench:boot — parent boot reliability: N (default 20, FORKD_BENCH_BOOTS) parent boots of the
 * python-numpy guest in a row, each to an answering agent, exactly as `forkd snapshot` boots them.
 * Counts boots that needed a retry or failed, and times boot → agent answered. Prints a table and writes
 * bench-results/boot-<time>.json naming the accelerator and the TSC figure guests were given.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { writeBenchResults } from './results.js';
import { coldBootGuest } from './cold-boot.js';
import { buildImage } from '../src/image/build.js';
import { currentAccel } from '../src/host/accel.js';
import { hostTsc } from '../src/host/tsc.js';
import { median, percentile, table } from '../src/util/format.js';
import { stderrReporter } from '../src/util/report.js';

const N = Number(process.env.FORKD_BENCH_BOOTS ?? 20);
const base = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-bootbench-'));
const log = (m: string) => process.stderr.write(`bench: ${m}\n`);

async function main(): Promise<void> {
  const image = await buildImage({ recipe: 'python-numpy', extras: [] }, stderrReporter());
  const accel = (await currentAccel()).accel;
  const tsc = accel === 'tcg' ? await hostTsc() : undefined;
  const times: number[] = [];
  let retried = 0;
  let failed = 0;
  const errors: string[] = [];
  for (let i = 0; i < N; i++) {
    const dir = fs.mkdtempSync(path.join(base, 'b-'));
    let vm: Awaited<ReturnType<typeof coldBootGuest>>['vm'] | undefined;
    try {
      const t0 = performance.now();
      const booted = await coldBootGuest(image, accel, dir, (m) => log(`boot ${i + 1}: ${m}`));
      vm = booted.vm;
      await booted.agent.ping();
      const ms = performance.now() - t0;
      times.push(ms);
      if (booted.attempts > 1) retried++;
      booted.agent.close();
      log(
        `boot ${i + 1}/${N}: agent answered in ${(ms / 1000).toFixed(1)} s [${accel}]${booted.attempts > 1 ? ` after ${booted.attempts} attempts` : ''}`,
      );
    } catch (e) {
      failed++;
      errors.push((e as Error).message.split('\n')[0]!);
      log(`boot ${i + 1}/${N}: FAILED: ${(e as Error).message.split('\n')[0]}`);
    } finally {
      await vm?.destroy();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
  const ok = N - failed;
  const s = (v: number) => `${(v / 1000).toFixed(1)} s`;
  process.stdout.write(
    table(
      ['metric', 'accel', 'value'],
      [
        ['parent boots', accel, `${ok}/${N} ok, ${retried} retried, ${failed} failed`],
        ['boot → agent answered, median', accel, times.length ? s(median(times)) : '-'],
        ['boot → agent answered, max', accel, times.length ? s(percentile(times, 100)) : '-'],
        ['TSC given to guests', accel, tsc ? `${tsc.khz} kHz (${tsc.source})` : 'none'],
      ],
    ) + '\n',
  );
  const file = writeBenchResults('boot', {
    accelerator: accel,
    boots: N,
    ok,
    retried,
    failed,
    errors,
    boot_to_agent_ms: { median: median(times), max: percentile(times, 100), all: times.map(Math.round) },
    tsc: tsc ?? null,
    load_avg_at_end: os.loadavg(),
  });
  log(`wrote ${file}`);
  if (failed) process.exitCode = 1;
}

main()
  .catch((e) => {
    process.stderr.write(`bench failed: ${(e as Error).stack}\n`);
    process.exitCode = 1;
  })
  .finally(() => fs.rmSync(base, { recursive: true, force: true }));
