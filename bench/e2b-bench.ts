/**
 * npm run bench:e2b — one workload through E2B's official SDK (`e2b` + `@e2b/code-interpreter`) and
 * through forkd's own SDK, against one daemon, alternating rep by rep: create, commands.run('echo hi'),
 * files.write + read of 1 MiB, runCode('1+1'), fork ×5, kill. Medians per step and the ratio
 * official/own: what the E2B wire (Connect over HTTP/1.1, the sandbox plane's routing) costs on top.
 */
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { Sandbox as E2bSandbox } from '@e2b/code-interpreter';
import { isolatedBenchDirs, runBench, writeBenchResults } from './results.js';
import { createSnapshot } from '../src/snapshot/create.js';
import { currentAccel } from '../src/host/accel.js';
import { median, table } from '../src/util/format.js';
import { stderrReporter } from '../src/util/report.js';
import { Controller as Daemon } from '../src/controller/controller.js';
import { buildServer } from '../src/controller/server.js';
import { Sandbox as OwnSandbox } from '../src/sdk/index.js';

const { base, cleanup } = isolatedBenchDirs('e2bbench');
const REPS = Number(process.env.FORKD_BENCH_REPS) || 5;
const FORKS = 5;
const TAG = 'e2bbench';
const log = (m: string) => process.stderr.write(`bench: ${m}\n`);
const r1 = (v: number) => Math.round(v * 10) / 10;

const STEPS = [
  'create',
  "commands.run('echo hi')",
  'files.write 1 MiB',
  'files.read 1 MiB',
  "runCode('1+1')",
  `fork ×${FORKS}`,
  'kill',
] as const;
type Step = (typeof STEPS)[number];
type Timings = Record<Step, number>;

async function timed<T>(out: Partial<Timings>, step: Step, fn: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  const v = await fn();
  out[step] = performance.now() - t0;
  return v;
}

const payload = randomBytes(1 << 20);

async function official(): Promise<Timings> {
  const t: Partial<Timings> = {};
  const sbx = await timed(t, 'create', () => E2bSandbox.create('base', { timeoutMs: 600_000 }));
  const r = await timed(t, "commands.run('echo hi')", () => sbx.commands.run('echo hi'));
  if (r.stdout !== 'hi\n') throw new Error(`official: echo gave ${JSON.stringify(r.stdout)}`);
  await timed(t, 'files.write 1 MiB', () => sbx.files.write('/tmp/payload.bin', new Blob([payload])));
  const back = await timed(t, 'files.read 1 MiB', () =>
    sbx.files.read('/tmp/payload.bin', { format: 'bytes' }),
  );
  if (!Buffer.from(back).equals(payload)) throw new Error('official: the file came back different');
  const x = await timed(t, "runCode('1+1')", () => sbx.runCode('1+1'));
  if (x.text !== '2') throw new Error(`official: runCode gave ${x.text}`);
  const forks = await timed(t, `fork ×${FORKS}`, () => sbx.fork({ count: FORKS, timeoutMs: 600_000 }));
  const ok = forks.filter((f): f is E2bSandbox => !(f instanceof Error));
  if (ok.length !== FORKS)
    throw new Error(`official: ${FORKS - ok.length} forks failed: ${forks.find((f) => f instanceof Error)}`);
  await timed(t, 'kill', () => Promise.all([sbx, ...ok].map((s) => s.kill())));
  return t as Timings;
}

async function own(baseUrl: string, token: string): Promise<Timings> {
  const t: Partial<Timings> = {};
  const opts = { baseUrl, token };
  const sbx = await timed(t, 'create', () =>
    OwnSandbox.create({ ...opts, template: TAG, timeoutMs: 600_000 }),
  );
  const r = await timed(t, "commands.run('echo hi')", () => sbx.commands.run('echo hi'));
  if (!('stdout' in r) || r.stdout !== 'hi\n') throw new Error('own: echo gave something else');
  await timed(t, 'files.write 1 MiB', () => sbx.files.write('/tmp/payload.bin', payload));
  const back = await timed(t, 'files.read 1 MiB', () =>
    sbx.files.read('/tmp/payload.bin', { format: 'bytes' }),
  );
  if (!Buffer.from(back).equals(payload)) throw new Error('own: the file came back different');
  const x = await timed(t, "runCode('1+1')", () => sbx.runCode('1+1'));
  if (x.text !== '2') throw new Error(`own: runCode gave ${x.text}`);
  // forkd's fork of a running sandbox: branch it, then start the children from the branch.
  const forks = await timed(t, `fork ×${FORKS}`, async () => {
    const snap = await sbx.branch({ mode: 'full' });
    return { snap, kids: await OwnSandbox.fork(FORKS, { ...opts, template: snap.tag, timeoutMs: 600_000 }) };
  });
  const ok = forks.kids.filter((f): f is OwnSandbox => !(f instanceof Error));
  if (ok.length !== FORKS) throw new Error(`own: ${FORKS - ok.length} forks failed`);
  await timed(t, 'kill', () => Promise.all([sbx, ...ok].map((s) => s.kill())));
  await fetch(`${baseUrl}/v1/snapshots/${forks.snap.tag}`, {
    method: 'DELETE',
    headers: { authorization: `Bearer ${token}` },
  });
  return t as Timings;
}

async function main(): Promise<void> {
  const accel = (await currentAccel()).accel;
  log(`accelerator: ${accel}; creating the snapshot`);
  await createSnapshot({ tag: TAG, recipe: 'python-numpy', warmupEval: 'import numpy' }, stderrReporter());
  const token = `e2b_${randomBytes(20).toString('hex')}`;
  const d = new Daemon({
    stateFile: path.join(base, 'state.json'),
    branchConcurrency: 4,
    poolSize: 0,
    poolMaxTotal: 4,
    log: () => {},
  });
  await d.start();
  const app = await buildServer(d, {
    logger: false,
    token,
    e2bTemplates: new Map([
      ['base', TAG],
      ['code-interpreter-v1', TAG],
    ]),
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  process.env.E2B_API_URL = url;
  process.env.E2B_SANDBOX_URL = url;
  process.env.E2B_API_KEY = token;
  const runs: { official: Timings[]; own: Timings[] } = { official: [], own: [] };
  try {
    // One warm-up of each (first-use costs: module loading, connection pools), then alternating reps.
    await official();
    await own(url, token);
    for (let i = 0; i < REPS; i++) {
      log(`rep ${i + 1}/${REPS}`);
      runs.official.push(await official());
      runs.own.push(await own(url, token));
    }
  } finally {
    await app.close();
    await d.stop();
  }
  const rows = STEPS.map((step) => {
    const off = median(runs.official.map((r) => r[step]));
    const mine = median(runs.own.map((r) => r[step]));
    return {
      step,
      accel,
      official_ms: r1(off),
      own_ms: r1(mine),
      ratio: Math.round((off / mine) * 100) / 100,
    };
  });
  const total = (rs: Timings[]) => median(rs.map((r) => STEPS.reduce((a, s) => a + r[s], 0)));
  rows.push({
    step: 'whole workload' as Step,
    accel,
    official_ms: r1(total(runs.official)),
    own_ms: r1(total(runs.own)),
    ratio: Math.round((total(runs.official) / total(runs.own)) * 100) / 100,
  });
  process.stdout.write(
    table(
      ['step', 'accel', 'official SDK ms', "forkd's SDK ms", 'official/own'],
      rows.map((r) => [r.step, r.accel, String(r.official_ms), String(r.own_ms), `${r.ratio}×`]),
    ) + `\nmedians of ${REPS} alternating reps (after one warm-up of each)\n`,
  );
  const file = writeBenchResults('e2b', { accel, reps: REPS, forks: FORKS, rows, runs });
  log(`wrote ${file}`);
}

runBench(main, cleanup);
