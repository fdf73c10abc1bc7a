/**
 * `npm run test:kvm`: forkd's VM suites under the real KVM accelerator.
 * - On a host whose KVM runs a stock guest kernel, they run here directly.
 * - Otherwise (PVM, no KVM) they run inside an outer VM with emulated SVM, where the Debian kernel has a
 *   working /dev/kvm (outer-vm.ts). Inside, nothing forces the accelerator: the probe must pick kvm.
 * Prints the test runner's own output (and summary) and exits with its status.
 */
import os from 'node:os';
import { spawn } from 'node:child_process';
import { currentAccel, hostKind } from '../../src/host/accel.js';
import { stderrReporter } from '../../src/util/report.js';
import { memAvailableMib } from '../../src/util/proc.js';
import { FORKD, ROOT } from '../helpers/env.js';
import { OuterVmFailure, ensureOuterKit, runInOuterVm } from './outer-vm.js';

/**
 * The suites, in the order they run; the KVM checks first. Each file runs in the runner's own process
 * (`node --test-reporter=spec FILE`), so its progress lines (a parent boot takes minutes inside an
 * emulated machine) show as they happen rather than when the file ends.
 */
const SUITES = ['dist/test/kvm/kvm.test.js', 'dist/test/vm/firmware.test.js'];
const RUNNER = `rc=0; for f in ${SUITES.join(' ')}; do node --test-reporter=spec "$f" || rc=1; done; exit $rc`;
const OUTER_LIMIT_MS = 80 * 60_000;
/**
 * Attempts of the outer VM when the emulated machine itself fails (OuterVmFailure: its kernel panics or
 * wedges under TCG's SVM emulation; seen 3 times in a row on a loaded host); suites are never retried.
 * A new attempt starts only within RETRY_WINDOW_MS of the first, so that CI stays within its hour.
 */
const OUTER_ATTEMPTS = 6;
const RETRY_WINDOW_MS = 30 * 60_000;

function sh(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { cwd: ROOT, env, stdio: 'inherit' });
    p.on('error', reject);
    p.on('close', (code) => resolve(code ?? 1));
  });
}

async function main(): Promise<number> {
  const rep = stderrReporter();
  if (process.env.FORKD_ACCEL) {
    rep.warn(
      `FORKD_ACCEL=${process.env.FORKD_ACCEL} is ignored: the KVM suite checks that the probe picks kvm`,
    );
    delete process.env.FORKD_ACCEL;
  }
  // The guest image, built (or found in the cache) here, where it is fast; inside it is only read.
  if ((await sh(process.execPath, [FORKD, 'parent', 'build', '--recipe', 'python-numpy'])) !== 0) return 1;
  const probe = await currentAccel();
  const kind = hostKind(probe);
  const env = { ...process.env, FORKD_KVM_SUITE: '1' };
  if (kind.kind === 'kvm') {
    rep.step(`KVM runs stock guests here (${kind.detail}): running the suites directly`);
    return sh('sh', ['-c', RUNNER], env);
  }
  rep.step(`this host: ${kind.detail}`);
  rep.info('running the suites in an outer VM with emulated SVM (TCG -cpu max,+svm), where KVM is real');
  const kit = await ensureOuterKit(rep);
  const memMib = Math.max(4096, Math.min(16384, Math.floor((memAvailableMib() ?? 8192) * 0.6)));
  const cpus = Math.min(2, os.cpus().length);
  rep.info(`outer VM: ${memMib} MiB, ${cpus} vCPUs, host root read-only over 9p`);
  const passEnv: Record<string, string> = { FORKD_KVM_SUITE: '1', NO_COLOR: '1' };
  for (const k of ['CI', 'FORKD_DEBUG', 'FORKD_TIME_SCALE'])
    if (process.env[k] !== undefined) passEnv[k] = process.env[k]!;
  const run = () =>
    runInOuterVm(kit, {
      job: RUNNER,
      env: passEnv,
      memMib,
      cpus,
      scratchGib: 64,
      timeoutMs: OUTER_LIMIT_MS,
      onLine: (l) => process.stdout.write(l + '\n'),
    });
  let r: Awaited<ReturnType<typeof run>> | undefined;
  const t0 = Date.now();
  for (let attempt = 1; !r; attempt++) {
    try {
      r = await run();
    } catch (e) {
      // Only the emulated outer machine failing is tried again, never a failing suite.
      if (!(e instanceof OuterVmFailure) || attempt >= OUTER_ATTEMPTS || Date.now() - t0 > RETRY_WINDOW_MS)
        throw e;
      rep.warn(`outer VM attempt ${attempt} failed: ${(e as Error).message.split('\n')[0]}; trying again`);
    }
  }
  rep.step(`outer VM finished in ${(r.ms / 60000).toFixed(1)} min; suites exited ${r.code}`);
  if (r.code !== 0)
    process.stdout.write(
      `outer VM console (last lines):\n${r.console.trimEnd().split('\n').slice(-15).join('\n')}\n`,
    );
  return r.code;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    process.stderr.write(`test:kvm: ${(e as Error).message}\n`);
    process.exit(1);
  },
);
