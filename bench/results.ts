import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** Write one bench run as bench-results/<name>-<time>.json, with the host it ran on; returns the path. */
export function writeBenchResults(name: string, data: Record<string, unknown>): string {
  const dir = path.resolve('bench-results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${name}-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  const host = {
    cpus: os.cpus().length,
    cpu: os.cpus()[0]?.model,
    mem_gib: Math.round(os.totalmem() / 1024 ** 3),
    kernel: os.release(),
  };
  fs.writeFileSync(file, JSON.stringify({ host, ...data }, null, 2) + '\n');
  return file;
}

/** Run a bench's main: a failure is printed with its stack and sets exit code 1; `cleanup` runs always. */
export function runBench(main: () => Promise<void>, cleanup: () => void): void {
  main()
    .catch((e: unknown) => {
      process.stderr.write(`bench failed: ${(e as Error).stack}\n`);
      process.exitCode = 1;
    })
    .finally(cleanup);
}

/**
 * A bench's own data, run and tmpfs dirs (set in the environment forkd reads), so it never touches a
 * user's snapshots or sandboxes; `cleanup` removes them.
 */
export function isolatedBenchDirs(name: string): { base: string; cleanup: () => void } {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), `forkd-${name}-`));
  process.env.XDG_DATA_HOME = path.join(base, 'data');
  process.env.FORKD_RUN_DIR = path.join(base, 'run');
  const shm = fs.mkdtempSync(`/dev/shm/forkd-${name}-`);
  process.env.FORKD_SHM_DIR = shm;
  fs.mkdirSync(process.env.FORKD_RUN_DIR, { recursive: true });
  return {
    base,
    cleanup: () => {
      fs.rmSync(base, { recursive: true, force: true });
      fs.rmSync(shm, { recursive: true, force: true });
    },
  };
}
